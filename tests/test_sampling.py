"""Pair sampling (docs/method.md section 2): frequencies against n^(-q), determinism, edges."""

import pickle

import numpy as np
import pytest

from input_pipeline import sampling

# Long-tailed counts like the synthetic default (head NV, about 50:1).
COUNTS = np.array([353, 678, 96, 50, 184, 13, 26])


def _labels(counts=COUNTS, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


def _draw(sampler: sampling.PairSampler, num: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.array([sampler.pair(g) for g in range(num)])
    return pairs[:, 0], pairs[:, 1]


def test_weights_and_class_distribution_match_formula():
    counts = np.array([100, 25, 4, 0])
    np.testing.assert_allclose(
        sampling.class_sampling_weights(counts, 1.0), [1 / 100, 1 / 25, 1 / 4, 0]
    )
    np.testing.assert_allclose(sampling.class_sampling_weights(counts, 0.5), [0.1, 0.2, 0.5, 0])
    np.testing.assert_allclose(
        sampling.balanced_class_distribution(counts, 1.0), [1 / 3, 1 / 3, 1 / 3, 0]
    )
    np.testing.assert_allclose(
        sampling.balanced_class_distribution(counts, 0.5), np.array([10, 5, 2, 0]) / 17
    )
    np.testing.assert_allclose(
        sampling.balanced_class_distribution(counts, 0.0), counts / counts.sum()
    )
    with pytest.raises(ValueError, match="q"):
        sampling.class_sampling_weights(counts, -1.0)
    with pytest.raises(ValueError, match="without examples"):
        sampling.balanced_class_distribution(np.zeros(3), 1.0)


@pytest.mark.parametrize("q", [1.0, 0.5])
def test_balanced_side_follows_n_pow_one_minus_q(q):
    labels = _labels()
    sampler = sampling.PairSampler(labels, seed=0, balanced_q=q, num_classes=7)
    instance, balanced = _draw(sampler, 20_000)
    freq = np.bincount(labels[balanced], minlength=7) / balanced.size
    # Reference: example j has weight n_{y_j}^(-q), so class k has mass n_k * n_k^(-q).
    expected = COUNTS ** (1.0 - q) / np.sum(COUNTS ** (1.0 - q))
    np.testing.assert_allclose(freq, expected, atol=0.03)
    if q == 1.0:
        np.testing.assert_allclose(freq, 1 / 7, atol=0.03)
    # Instance side follows the data: exact over whole epochs (14 * 1400 = 19600).
    epochs = 19_600 // labels.size
    np.testing.assert_array_equal(
        np.bincount(labels[instance[:19_600]], minlength=7), epochs * COUNTS
    )
    np.testing.assert_allclose(
        np.bincount(labels[instance], minlength=7) / instance.size, COUNTS / COUNTS.sum(), atol=0.01
    )


def test_balanced_draw_is_uniform_within_a_class():
    labels = _labels()
    sampler = sampling.PairSampler(labels, seed=1, balanced_q=1.0)
    _, balanced = _draw(sampler, 7_000)
    tail = np.flatnonzero(labels == 5)  # 13 members, ~1000 draws of the class
    hits = np.array([(balanced == j).sum() for j in tail])
    assert hits.min() > 0.6 * hits.mean() and hits.max() < 1.4 * hits.mean()
    assert np.isin(balanced, np.flatnonzero(labels >= 0)).all()


def test_instance_side_is_a_fresh_permutation_each_epoch():
    labels = _labels(np.array([5, 3, 2]))
    sampler = sampling.PairSampler(labels, seed=7, balanced_q=1.0)
    instance, _ = _draw(sampler, 3 * labels.size)
    epochs = instance.reshape(3, labels.size)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(labels.size))
    assert not np.array_equal(epochs[0], epochs[1])


def test_pairs_are_a_pure_function_of_seed_and_position():
    labels = _labels()
    a = sampling.PairSampler(labels, seed=3, balanced_q=1.0)
    positions = [0, 5, 1399, 1400, 1401, 40_000, 5]
    forward = [a.pair(g) for g in positions]
    # A separate instance (as in another worker or host), pickled, read in reverse order.
    b = pickle.loads(pickle.dumps(sampling.PairSampler(labels, seed=3, balanced_q=1.0)))
    backward = [b.pair(g) for g in reversed(positions)][::-1]
    assert forward == backward
    c = sampling.PairSampler(labels, seed=4, balanced_q=1.0)
    assert [c.pair(g) for g in positions] != forward
    # Balanced partners of consecutive epochs differ at the same position.
    assert [a.balanced_index(g) for g in range(50)] != [
        a.balanced_index(g + labels.size) for g in range(50)
    ]


def test_primary_choice_and_bad_input():
    assert sampling.primary_secondary(3, 9, "balanced") == (9, 3)
    assert sampling.primary_secondary(3, 9, "instance") == (3, 9)
    with pytest.raises(ValueError, match="primary"):
        sampling.primary_secondary(3, 9, "tail")
    with pytest.raises(ValueError, match="integers"):
        sampling.PairSampler(np.array([0.0, 1.0]), seed=0, balanced_q=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        sampling.PairSampler(np.array([0, -1]), seed=0, balanced_q=1.0)
    with pytest.raises(ValueError, match="out of range"):
        sampling.PairSampler(np.array([0, 7]), seed=0, balanced_q=1.0, num_classes=7)
    with pytest.raises(ValueError, match="seed"):
        sampling.PairSampler(np.array([0, 1]), seed=-1, balanced_q=1.0)


def test_empty_classes_are_never_drawn():
    labels = np.array([0, 0, 0, 2, 2, 4])  # classes 1 and 3 absent
    sampler = sampling.PairSampler(labels, seed=0, balanced_q=1.0, num_classes=5)
    _, balanced = _draw(sampler, 3_000)
    freq = np.bincount(labels[balanced], minlength=5) / balanced.size
    np.testing.assert_allclose(freq, [1 / 3, 0, 1 / 3, 0, 1 / 3], atol=0.04)
