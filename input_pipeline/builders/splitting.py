"""Assigning examples to splits: lesion-grouped stratified splits and per-class hold-outs.

Pure functions of labels, ids and a seed: the result never depends on the order of the inputs, so
a rebuild from the same files gives the same splits.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from input_pipeline.builders.csv_layout import DataError
from input_pipeline.builders.image_files import Item

SPLIT_NAMES = ("train", "validation", "test")


def grouped_split(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
) -> np.ndarray:
    """Assigns every example to a split index so that no group crosses splits.

    Stratified by class: each group takes the most common label of its members (ties: lowest
    index); per class, the groups (sorted by name, then shuffled with `seed`) are dealt one by
    one to the split furthest below its share of that class's images. The first group of every
    class goes to the first split with a share (train, unless its fraction is 0, as for a folder
    kept whole for evaluation), so that split holds every class that has data. The result does
    not depend on the order of the inputs.
    """
    labels = np.asarray(labels, np.int64)
    shares = np.asarray(fractions, np.float64)
    if len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
    if shares.ndim != 1 or len(shares) == 0 or np.any(shares < 0) or shares.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all 0, got {shares}")
    shares = shares / shares.sum()
    first = int(np.flatnonzero(shares > 0)[0])
    members: dict[str, list[int]] = collections.defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    by_class: dict[int, list[str]] = collections.defaultdict(list)
    for g in sorted(members):
        counts = np.bincount(labels[members[g]] + 1)  # +1 keeps an unknown label (-1) countable
        by_class[int(np.argmax(counts)) - 1].append(g)
    rng = np.random.default_rng(seed)
    assignment = np.zeros(len(labels), np.int64)
    for label in sorted(by_class):
        names = by_class[label]
        order = rng.permutation(len(names))
        target = shares * sum(len(members[g]) for g in names)
        filled = np.zeros(len(shares))
        for rank, j in enumerate(order):
            g = names[j]
            split = first if rank == 0 else int(np.argmax(target - filled))
            filled[split] += len(members[g])
            assignment[members[g]] = split
    return assignment


def holdout_per_class(
    labels: Sequence[int] | np.ndarray,
    ids: Sequence[str],
    per_class: int,
    seed: int,
    class_names: Sequence[str],
) -> np.ndarray:
    """Boolean mask of `per_class` examples of every class held out, chosen with `seed`.

    Within a class the candidates are ordered by id before the seeded draw, so the choice does
    not depend on the input order. At least one example per class must stay in training.
    """
    labels = np.asarray(labels, np.int64)
    id_array = np.asarray(ids, dtype=object)
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), bool)
    for k, name in enumerate(class_names):
        candidates = np.flatnonzero(labels == k)
        candidates = candidates[np.argsort(id_array[candidates], kind="stable")]
        if len(candidates) <= per_class:
            raise DataError(
                f"class {name} has {len(candidates)} pooled images; holding out {per_class} "
                "per class needs at least one more to train on"
            )
        mask[candidates[rng.choice(len(candidates), per_class, replace=False)]] = True
    return mask


def split_items(
    items: Sequence[Item],
    groups: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    warnings: list[str],
) -> dict[str, list[Item]]:
    """`items` dealt to train / validation / test (as many as `fractions`) by `grouped_split`.

    A split with fraction 0 is left out; one that gets no items is left out with a warning
    appended to `warnings`.
    """
    labels = np.asarray([it.label for it in items], np.int64)
    assignment = grouped_split(labels, groups, fractions, seed)
    splits: dict[str, list[Item]] = {}
    for index, (name, fraction) in enumerate(zip(SPLIT_NAMES, fractions, strict=False)):
        if fraction <= 0:
            continue
        chosen = [it for it, a in zip(items, assignment, strict=True) if a == index]
        if not chosen:
            warnings.append(f"split {name} got no examples and is left out")
            continue
        splits[name] = chosen
    return splits


def groups_on_two_sides(splits: dict[str, list[Item]], group_of: dict[str, str]) -> list[str]:
    """Groups (lesions, patients) whose images fall in more than one split; [] when none."""
    seen: dict[str, str] = {}
    crossing: set[str] = set()
    for name, items in splits.items():
        for it in items:
            group = group_of[it.image_id]
            if seen.setdefault(group, name) != name:
                crossing.add(group)
    return sorted(crossing)
