"""Synthetic demo data: long-tailed counts, determinism per index, and learnability."""

import types

import numpy as np
import pytest

from input_pipeline import data_split, synthetic


def _data_cfg(**overrides) -> types.SimpleNamespace:
    syn = dict(num_train=1400, num_eval=350, imbalance=50.0, seed=0)
    syn.update(overrides)
    return types.SimpleNamespace(
        synthetic=types.SimpleNamespace(**syn), image_size=64, num_classes=7
    )


def test_long_tailed_counts_are_geometric_from_nv_to_tail():
    counts = synthetic.long_tailed_counts(1400, 50.0)
    assert counts.sum() == 1400
    assert counts.argmax() == 1  # NV is the head class, as in ISIC 2018
    by_rank = counts[list(synthetic.FREQUENCY_ORDER)]
    assert np.all(np.diff(by_rank) < 0)
    # Independent reference: n_r = N * 50^(-r/6) / sum_r 50^(-r/6), rounded.
    ratios = 50.0 ** (-np.arange(7) / 6.0)
    expected = 1400 * ratios / ratios.sum()
    np.testing.assert_allclose(by_rank, expected, atol=1.0)
    assert 45 <= by_rank[0] / by_rank[-1] <= 60


def test_balanced_counts_and_bad_arguments():
    np.testing.assert_array_equal(synthetic.long_tailed_counts(350, 1.0), np.full(7, 50))
    counts = synthetic.long_tailed_counts(352, 1.0)
    assert counts.sum() == 352 and counts.max() - counts.min() == 1
    assert synthetic.long_tailed_counts(7, 1000.0).tolist() == [1] * 7
    with pytest.raises(ValueError, match="at least 7"):
        synthetic.long_tailed_counts(5, 10.0)
    with pytest.raises(ValueError, match="imbalance"):
        synthetic.long_tailed_counts(100, 0.5)
    with pytest.raises(ValueError, match="split"):
        synthetic.SyntheticSource(10, 32, 1.0, 0, "dev")


def test_source_is_deterministic_per_index_and_seed():
    a = synthetic.SyntheticSource(200, 48, 10.0, 3, "train")
    b = synthetic.SyntheticSource(200, 48, 10.0, 3, "train")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.bincount(a.labels, minlength=7), a.class_counts)
    order = [17, 3, 199, 0, 17]
    first = [a[i] for i in order]
    second = [b[i] for i in reversed(order)][::-1]  # other instance, other access order
    for x, y, i in zip(first, second, order, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["label"] == y["label"] == a.labels[i]
        assert x["image_id"] == f"SYN_train_{i:07d}"
        assert isinstance(x["lesion_id"], str) and x["lesion_id"]
        assert x["image"].dtype == np.uint8 and x["image"].shape == (48, 48, 3)
    other_seed = synthetic.SyntheticSource(200, 48, 10.0, 4, "train")
    other_split = synthetic.SyntheticSource(200, 48, 10.0, 3, "validation")
    assert not np.array_equal(other_seed[17]["image"], a[17]["image"])
    assert not np.array_equal(other_split[17]["image"], a[17]["image"])
    with pytest.raises(IndexError):
        a[200]


def test_images_vary_within_a_class():
    source = synthetic.SyntheticSource(140, 64, 1.0, 0, "validation")
    nv = [source[i]["image"].astype(np.float32) for i in np.flatnonzero(source.labels == 1)[:8]]
    # Background tone, lighting and blob placement differ: no two images are near-identical.
    diffs = [np.abs(x - y).mean() for i, x in enumerate(nv) for y in nv[i + 1 :]]
    assert min(diffs) > 5.0
    # Skin tones span a real range (mean brightness of the corners).
    corners = [img[:6, :6].mean() for img in nv]
    assert max(corners) - min(corners) > 20.0


def test_get_split_train_long_tailed_eval_balanced():
    cfg = _data_cfg()
    train = synthetic.get_split(cfg, "train")
    val = synthetic.get_split(cfg, "validation")
    test = synthetic.get_split(cfg, "test")
    assert isinstance(train, data_split.DataSplit)
    np.testing.assert_array_equal(train.class_counts, synthetic.long_tailed_counts(1400, 50.0))
    np.testing.assert_array_equal(val.class_counts, train.class_counts)  # always TRAIN counts
    np.testing.assert_array_equal(np.bincount(train.labels, minlength=7), train.class_counts)
    assert len(train.source) == 1400 and len(val.source) == len(test.source) == 350
    assert np.bincount(val.labels, minlength=7).min() >= 20
    assert np.bincount(test.labels, minlength=7).min() >= 20
    assert train.class_names == synthetic.CLASS_NAMES and val.split == "validation"
    assert not np.array_equal(val.source[0]["image"], test.source[0]["image"])
    with pytest.raises(ValueError, match="split"):
        synthetic.get_split(cfg, "dev")


def _colour_histograms(source, bins: int = 4) -> np.ndarray:
    feats = []
    for i in range(len(source)):
        img = source[i]["image"].reshape(-1, 3) // (256 // bins)
        codes = (img[:, 0] * bins + img[:, 1]) * bins + img[:, 2]
        feats.append(np.bincount(codes, minlength=bins**3) / len(codes))
    return np.asarray(feats, np.float64)


def _balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    return float(np.mean([np.mean(predictions[labels == k] == k) for k in range(num_classes)]))


def test_learnable_from_colour_histograms():
    """A softmax regression on colour histograms (numpy) beats chance by a wide margin."""
    train = synthetic.SyntheticSource(1400, 32, 50.0, 0, "train")
    val = synthetic.SyntheticSource(350, 32, 1.0, 0, "validation")
    x_train, x_val = _colour_histograms(train), _colour_histograms(val)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    y = train.labels
    # Class-balanced weights so the long tail is not ignored.
    weights = (1.0 / np.bincount(y, minlength=7))[y]
    weights /= weights.sum()
    w = np.zeros((x_train.shape[1], 7))
    b = np.zeros(7)
    onehot = np.eye(7)[y]
    for _ in range(300):
        logits = x_train @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = weights[:, None] * (p - onehot)
        w -= 0.5 * (x_train.T @ grad + 1e-3 * w)
        b -= 0.5 * grad.sum(0)
    bacc = _balanced_accuracy(val.labels, np.argmax(x_val @ w + b, 1), 7)
    assert bacc > 0.6, bacc  # chance is 1/7

    # Nearest class mean on the same features, a second independent learner.
    means = np.stack([x_train[y == k].mean(0) for k in range(7)])
    dist = ((x_val[:, None, :] - means[None]) ** 2).sum(-1)
    assert _balanced_accuracy(val.labels, dist.argmin(1), 7) > 0.4
