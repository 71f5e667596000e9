"""Load a model written by `spmix-export` and classify images with jax, numpy and PIL alone.

    from spmix_jax import exported
    model = exported.load("exported/")
    probs = model(["a.jpg", "b.png"])  # or a uint8 (N, H, W, 3) batch; (N, C) probabilities

The folder holds `model.jaxexport` (the evaluation forward serialised with `jax.export`, with a
symbolic batch dimension: preprocessed uint8 squares in, probabilities out), `params.npz` (its
weights, in argument order) and `model.json` (class names, input size, normalisation). This
module imports neither flax nor the model code nor the configs: the serialised forward carries
the whole computation. Images are decoded and resized by the same host code as the training and
evaluation data (`input_pipeline.host_images`, numpy and PIL only).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

MODEL_FILE = "model.jaxexport"
PARAMS_FILE = "params.npz"
INFO_FILE = "model.json"


class ExportedModel:
    """A callable: image paths or a uint8 batch -> float32 (N, C) class probabilities."""

    def __init__(self, directory: str | os.PathLike) -> None:
        from jax import export

        directory = os.fspath(directory)
        with open(os.path.join(directory, INFO_FILE)) as f:
            self.info: dict[str, Any] = json.load(f)
        with open(os.path.join(directory, MODEL_FILE), "rb") as f:
            self._exported = export.deserialize(bytearray(f.read()))
        with np.load(os.path.join(directory, PARAMS_FILE)) as npz:
            self._params = [npz[f"arg{i}"] for i in range(len(npz.files))]
        self.class_names: list[str] = list(self.info["class_names"])
        self.image_size: int = int(self.info["image_size"])

    def preprocess(self, images: Sequence[str | os.PathLike] | np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3): short side to the input size, centre square (as evaluation)."""
        from input_pipeline import host_images

        if isinstance(images, str | os.PathLike):
            images = [images]
        out = []
        for image in images:
            if isinstance(image, np.ndarray):
                out.append(host_images.prepare_image(image, self.image_size))
                continue
            with open(os.fspath(image), "rb") as f:
                data = f.read()
            out.append(host_images.prepare_image(data, self.image_size, os.fspath(image)))
        return np.stack(out)

    def probabilities(self, squares: np.ndarray) -> np.ndarray:
        """Probabilities of already preprocessed uint8 (N, S, S, 3) squares."""
        squares = np.ascontiguousarray(squares, dtype=np.uint8)
        return np.asarray(self._exported.call(*self._params, squares))

    def __call__(self, images: Sequence[str | os.PathLike] | np.ndarray) -> np.ndarray:
        return self.probabilities(self.preprocess(images))


def load(directory: str | os.PathLike) -> ExportedModel:
    """The exported model in `directory` (written by `spmix-export --out=DIR`)."""
    return ExportedModel(directory)
