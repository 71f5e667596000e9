"""A trained model as a Python object: `Classifier.from_workdir(W).predict(images)`.

Restores only what inference needs (the query encoder's parameters and batch statistics, the
recorded config and class names) through the evaluation's own restore, and classifies with the
evaluation's own preprocessing: on the host `host_images.prepare_image` (decode, short side to
`data.image_size`, centre square; what the evaluation pipeline does to every stored image), on
the device `step.eval_logits` (the evaluation view: resize, centre crop, normalise; then the
model). Its probabilities are therefore those `--mode=eval` computes for the same pixels.

    from spmix_jax.inference import Classifier
    clf = Classifier.from_workdir("workdir/demo")
    probs = clf.predict(["a.jpg", "b.png"])  # (2, num_classes), rows sum to 1
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from input_pipeline import host_images
from spmix_jax import augment, checkpointing, evaluate, run_config, saliency, sharding
from spmix_jax import step as step_lib
from spmix_jax.errors import UserError
from spmix_jax.models import make_model

DEFAULT_BATCH = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

ImageInput = str | os.PathLike | np.ndarray


def read_image(image: ImageInput, image_size: int) -> np.ndarray:
    """One image (a file path or a uint8 array) as the evaluation's uint8 (S, S, 3) square.

    Files are decoded by the dataset builders' decoder (any PIL mode, as 8-bit RGB). Raises
    ValueError naming the file when it cannot be read.
    """
    if isinstance(image, np.ndarray):
        return host_images.prepare_image(image, image_size)
    name = os.fspath(image)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ValueError(f"cannot read {name}: {error.strerror or error}") from error
    return host_images.prepare_image(data, image_size, name)


def as_image_list(images: Sequence[ImageInput] | np.ndarray) -> list[ImageInput]:
    """A uint8 (N, H, W, C) batch or a sequence of paths/arrays as a list of single images."""
    if isinstance(images, np.ndarray):
        if images.ndim == 3 and images.shape[-1] not in (1, 3, 4):  # (N, H, W) grayscale
            return list(images)
        if images.ndim != 4:
            raise ValueError(f"expected a (N, H, W, C) uint8 batch, got shape {images.shape}")
        return list(images)
    if isinstance(images, str | os.PathLike):
        return [images]
    return list(images)


def batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """`x` padded with zero images to `size` rows (one compiled shape for every batch)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])


def top_classes(probs: np.ndarray, names: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The `k` most probable (class name, probability) pairs of one row, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [(str(names[i]), float(probs[i])) for i in order]


def recorded_config(workdir: str, checkpoint: str | int) -> tuple[ml_collections.ConfigDict, Any]:
    """(config of the run in `workdir`, its checkpoint's run record or None).

    The model, data, view, saliency and mix settings are the recorded ones; everything else
    keeps the schema's defaults (inference reads no dataset and trains nothing).
    """
    manager, step = checkpointing.resolve_step(workdir, checkpoint)
    run = evaluate._recorded_run(manager, step)
    recorded = run.get("config") if run else None
    if recorded is None:
        recorded = run_config.read_config_file(workdir)
    if recorded is None:
        raise UserError(
            f"The checkpoint at step {step} in {workdir} records no config and the workdir has "
            f"no {run_config.CONFIG_FILE}; evaluate it with --mode=eval and the config it was "
            "trained with."
        )
    config, _ = run_config.apply_recorded(common.base_config(), recorded)
    config.eval.checkpoint = str(step)
    return config, run


@dataclasses.dataclass
class Classifier:
    """A restored model and its evaluation preprocessing."""

    config: ml_collections.ConfigDict
    variables: Any
    class_names: tuple[str, ...]
    step: int
    batch_size: int = DEFAULT_BATCH

    @classmethod
    def from_workdir(
        cls, workdir: str | os.PathLike, checkpoint: str | int = "best", batch_size: int = 0
    ) -> Classifier:
        """The model of `workdir` at `checkpoint` ('best', 'latest' or a step number)."""
        workdir = os.fspath(workdir)
        config, run = recorded_config(workdir, checkpoint)
        mesh = sharding.make_mesh(jax.devices()[:1])  # any batch size; no divisibility rule
        variables, step = evaluate.restore_variables(config, workdir, mesh)
        names = tuple((run or {}).get("class_names") or config.data.class_names)
        return cls(config, variables, names, step, batch_size or DEFAULT_BATCH)

    @property
    def image_size(self) -> int:
        """Side of the uint8 squares the forward takes (`data.image_size`)."""
        return int(self.config.data.image_size)

    @functools.cached_property
    def model(self) -> Any:
        return make_model(self.config)

    @functools.cached_property
    def _forward(self) -> Callable[[Any, Any], jax.Array]:
        return jax.jit(probabilities_fn(self.config, self.model))

    @functools.cached_property
    def _explain(self) -> Callable[..., Any]:
        return jax.jit(explain_fn(self.config, self.model))

    def preprocess(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3): the evaluation's host preprocessing of each image."""
        return np.stack([read_image(im, self.image_size) for im in as_image_list(images)])

    def probabilities(self, squares: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of preprocessed uint8 squares, in batches."""
        out = []
        for part in batches(len(squares), self.batch_size):
            x = pad_batch(squares[part], self.batch_size)
            out.append(np.asarray(self._forward(self.variables, x))[: part.stop - part.start])
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def predict(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes) of image files or uint8 images, in order."""
        return self.probabilities(self.preprocess(images))

    def explain(self, squares: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(saliency (N, M, M) in [0, 1], evaluation views (N, M, M, 3) in [0, 1]).

        The input-gradient saliency training uses (`saliency.gradient`), of the logit of
        `classes` over the evaluation view of each preprocessed square.
        """
        maps, views = [], []
        for part in batches(len(squares), self.batch_size):
            n = part.stop - part.start
            x = pad_batch(squares[part], self.batch_size)
            c = pad_batch(np.asarray(classes[part], np.int32), self.batch_size)
            m, v = self._explain(self.variables, x, c)
            maps.append(np.asarray(m)[:n])
            views.append(np.asarray(v)[:n])
        return np.concatenate(maps), np.concatenate(views)


def probabilities_fn(config: ml_collections.ConfigDict, model: Any) -> Callable[..., jax.Array]:
    """(variables, uint8 (B, S, S, 3)) -> float32 probabilities: the evaluation forward."""

    def forward(variables: Any, images: jax.Array) -> jax.Array:
        logits = step_lib.eval_logits(variables, {"image": images}, config=config, model=model)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return forward


def explain_fn(config: ml_collections.ConfigDict, model: Any) -> Callable[..., Any]:
    """(variables, uint8 squares, classes) -> (gradient saliency, un-normalised view)."""
    settings = augment.ViewSettings.from_config(config.augment)
    mean = jnp.asarray(settings.mean, jnp.float32)
    std = jnp.asarray(settings.std, jnp.float32)

    def explain(variables: Any, images: jax.Array, classes: jax.Array) -> Any:
        normed = augment.eval_view(images, out_size=config.model.image_size, settings=settings)
        view01 = normed * std + mean  # the view the model sees, before normalising

        def score(x01: jax.Array) -> jax.Array:
            x = augment.normalize(x01, settings)
            return model.apply(variables, x, method=model.logits)

        maps = saliency.compute("gradient", view01, score_fn=score, labels=classes)
        return maps, jnp.clip(view01, 0.0, 1.0)

    return explain


def find_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Image files named by `paths`: files as given, folders searched recursively (sorted).

    Folder members are the files ending in .jpg, .jpeg or .png (any case); a path that does not
    exist is a UserError naming it.
    """
    found: list[str] = []
    for path in (os.fspath(p) for p in paths):
        if os.path.isdir(path):
            inside = []
            for root, dirs, files in os.walk(path):
                dirs.sort()
                inside += [
                    os.path.join(root, f)
                    for f in files
                    if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
                ]
            found += sorted(inside)
        elif os.path.exists(path):
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder; give image files or folders")
    return found
