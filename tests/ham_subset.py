"""A small real HAM10000 source folder for tests: a few images per class with their CSV rows.

Imported by the test modules that build a dataset from real images (the tests folder is on the
import path under pytest); the images are copied by path, never stored in the repository.
"""

from __future__ import annotations

import csv
import pathlib
import shutil


def make_source(ham_dir: pathlib.Path, dest: pathlib.Path, per_class: int = 6):
    """The first `per_class` images of each class (by id) with their CSV rows; the labels come
    from the one-hot CSV read with the csv module (independent of the code under test)."""
    with open(ham_dir / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    chosen, taken = [], [0] * 7
    for row in rows[1:]:
        k = [float(v) for v in row[1:]].index(1.0)
        if taken[k] < per_class:
            chosen.append(row)
            taken[k] += 1
    (dest / "images").mkdir(parents=True)
    for row in chosen:
        shutil.copy(ham_dir / "images" / f"{row[0]}.jpg", dest / "images")
    with open(dest / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *chosen])
    ids = {r[0] for r in chosen}
    with open(ham_dir / "metadata.csv", newline="") as f:
        meta = list(csv.reader(f))
    with open(dest / "metadata.csv", "w", newline="") as f:
        csv.writer(f).writerows([meta[0], *[r for r in meta[1:] if r[1] in ids]])
    return {r[0]: [float(v) for v in r[1:]].index(1.0) for r in chosen}
