"""Pairs of training indices: an instance-balanced sample and a class-balanced partner.

The sampling rule is docs/method.md section 2.

Everything is a pure function of (seed, epoch, position): the instance side is a seeded shuffle per
epoch, the balanced partner of position i is drawn with replacement from a generator seeded by
(seed, epoch, i). So the pairs do not depend on how many workers or hosts read them, nor in which
order, and a resumed run sees exactly the pairs it would have seen.
"""

from __future__ import annotations

import numpy as np

# Distinct first words of the seed sequences of the two samplers.
_INSTANCE_TAG = 0
_BALANCED_TAG = 1


def class_sampling_weights(class_counts: np.ndarray, q: float) -> np.ndarray:
    """Per-example weight of each class, c_k = n_k^(-q), 0 for empty classes (unnormalised)."""
    counts = np.asarray(class_counts, np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError(f"class_counts must be a 1-D array of non-negative counts, got {counts}")
    if not np.isfinite(q) or q < 0:
        raise ValueError(f"balanced sampling exponent q must be finite and >= 0, got {q}")
    weights = np.zeros_like(counts)
    present = counts > 0
    weights[present] = counts[present] ** (-float(q))
    return weights


def balanced_class_distribution(class_counts: np.ndarray, q: float) -> np.ndarray:
    """P(class-balanced draw has class k) = n_k * c_k, renormalised, i.e. ~ n_k^(1-q)."""
    counts = np.asarray(class_counts, np.float64)
    mass = counts * class_sampling_weights(counts, q)
    total = mass.sum()
    if total <= 0:
        raise ValueError("cannot sample from a split without examples")
    return mass / total


class PairSampler:
    """Maps a global position g in the infinite pair stream to (instance index, balanced index).

    g = epoch * N + i. Instance side: permutation_epoch[i], a fresh seeded shuffle each epoch, so
    every example appears once per epoch. Balanced side: example j drawn with probability
    c[y_j] / sum_l c[y_l], c_k = n_k^(-q), with replacement, from a generator seeded by
    (seed, epoch, i); drawn in two exact stages (class by its total mass, then uniformly within).
    """

    def __init__(
        self, labels: np.ndarray, *, seed: int, balanced_q: float, num_classes: int | None = None
    ):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        if labels.min() < 0:
            raise ValueError(f"labels must be non-negative, got minimum {labels.min()}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        num_classes = int(labels.max()) + 1 if num_classes is None else int(num_classes)
        if labels.max() >= num_classes:
            raise ValueError(f"label {labels.max()} out of range for {num_classes} classes")
        self.labels = labels.astype(np.int64)
        self.seed = int(seed)
        self.balanced_q = float(balanced_q)
        self.num_examples = int(labels.size)
        self.class_counts = np.bincount(self.labels, minlength=num_classes)
        self.class_probs = balanced_class_distribution(self.class_counts, self.balanced_q)
        self._class_cdf = np.cumsum(self.class_probs)
        self._members = [np.flatnonzero(self.labels == k) for k in range(num_classes)]
        self._perm_cache: dict[int, np.ndarray] = {}

    def epoch_permutation(self, epoch: int) -> np.ndarray:
        """The instance order of one epoch (cached: consecutive positions share it)."""
        perm = self._perm_cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, _INSTANCE_TAG, int(epoch)])
            perm = rng.permutation(self.num_examples)
            if len(self._perm_cache) >= 2:
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = perm
        return perm

    def instance_index(self, position: int) -> int:
        """Instance-balanced example at global position g."""
        epoch, i = divmod(int(position), self.num_examples)
        return int(self.epoch_permutation(epoch)[i])

    def balanced_index(self, position: int) -> int:
        """Class-balanced partner at global position g (seeded by seed, epoch, i)."""
        epoch, i = divmod(int(position), self.num_examples)
        u_class, u_member = np.random.default_rng([self.seed, _BALANCED_TAG, epoch, i]).random(2)
        k = min(
            int(np.searchsorted(self._class_cdf, u_class, side="right")), len(self._members) - 1
        )
        while self._members[k].size == 0:  # only reachable through float rounding at the cdf end
            k -= 1
        members = self._members[k]
        return int(members[min(int(u_member * members.size), members.size - 1)])

    def pair(self, position: int) -> tuple[int, int]:
        """(instance index, balanced index) of global position g."""
        if position < 0:
            raise ValueError(f"position must be non-negative, got {position}")
        return self.instance_index(position), self.balanced_index(position)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_perm_cache"] = {}  # workers rebuild what they need
        return state


PRIMARY_CHOICES = ("balanced", "instance")


def primary_secondary(instance_index: int, balanced_index: int, primary: str) -> tuple[int, int]:
    """(primary, secondary) of a pair; `mix.primary` names which sampler gives the primary."""
    if primary == "balanced":
        return balanced_index, instance_index
    if primary == "instance":
        return instance_index, balanced_index
    raise ValueError(f"mix.primary must be one of {PRIMARY_CHOICES}, got {primary!r}")
