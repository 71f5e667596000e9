"""Small inputs for the fault tests: image folders with a label CSV, built in a few seconds."""

from __future__ import annotations

import csv
import os
import pathlib
import sys

import numpy as np
from PIL import Image

from input_pipeline.builders.isic2018 import ISIC_CLASSES

REPO = pathlib.Path(__file__).resolve().parents[2]


def make_source(
    dest: pathlib.Path,
    per_class: int = 3,
    class_names: tuple[str, ...] = ISIC_CLASSES,
    seed: int = 0,
    size: int = 20,
) -> pathlib.Path:
    """`dest/images/img_<k>.png` (flat colours) and `dest/labels.csv` in the image,label layout."""
    rng = np.random.default_rng(seed)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for label, name in enumerate(class_names):
        for i in range(per_class):
            image_id = f"img_{label}_{i}"
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(dest / "images" / f"{image_id}.png")
            rows.append((image_id, name))
    with open(dest / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        writer.writerows(rows)
    return dest


def build(source: pathlib.Path, data_dir: pathlib.Path, **kwargs) -> str:
    """Builds `source` as a folder_csv dataset (train split only unless told otherwise)."""
    from input_pipeline import build as build_lib

    kwargs.setdefault("split_fractions", "1")
    return build_lib.build_dataset(
        "folder_csv", os.fspath(data_dir), source=os.fspath(source), metadata="none", **kwargs
    )


def subprocess_env(devices: int = 1, cache: pathlib.Path | None = None) -> dict[str, str]:
    """Environment of a child Python that imports this repository (CPU, `devices` devices)."""
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    if cache is not None:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def python() -> str:
    return sys.executable


def child_pids(pid: int) -> list[int]:
    """Every living descendant of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
