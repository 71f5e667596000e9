"""Tests of spmix_jax.metrics against hand-worked cases and brute-force references."""

import json

import numpy as np
import pytest

from spmix_jax import metrics

NAMES = ("A", "B", "C")

# Hand-worked 3-class case (values derived on paper in the comments below).
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # y=0 -> pred 0
        [0.5, 0.4, 0.1],  # y=0 -> pred 0
        [0.2, 0.6, 0.2],  # y=0 -> pred 1
        [0.3, 0.6, 0.1],  # y=1 -> pred 1
        [0.1, 0.2, 0.7],  # y=1 -> pred 2
        [0.2, 0.2, 0.6],  # y=2 -> pred 2
    ]
)
LABELS = np.array([0, 0, 0, 1, 1, 2])


def brute_force_auc(scores, positive):
    """(#pairs pos > neg + 0.5 #ties) / (#pos * #neg), by explicit pairwise comparison."""
    pos, neg = scores[positive], scores[~positive]
    total = 0.0
    for a in pos:
        for b in neg:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (len(pos) * len(neg))


def test_hand_worked_three_class_case():
    m = metrics.classification_metrics(PROBS, LABELS, NAMES, [500, 50, 5], from_logits=False)
    # Confusion matrix rows = true: [[2,1,0],[0,1,1],[0,0,1]].
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["num_examples"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # Recalls 2/3, 1/2, 1 -> balanced accuracy 13/18.
    assert m["balanced_accuracy"] == pytest.approx(13 / 18)
    # Precisions 2/2, 1/2, 1/2; F1 = 0.8, 0.5, 2/3 -> macro 59/90.
    expected = {
        "A": (1.0, 2 / 3, 0.8, 3, 2),
        "B": (0.5, 0.5, 0.5, 2, 2),
        "C": (0.5, 1.0, 2 / 3, 1, 2),
    }
    for name, (p, r, f1, support, predicted) in expected.items():
        pc = m["per_class"][name]
        assert pc["precision"] == pytest.approx(p)
        assert pc["recall"] == pytest.approx(r)
        assert pc["f1"] == pytest.approx(f1)
        assert pc["support"] == support
        assert pc["predicted"] == predicted
    assert m["macro_f1"] == pytest.approx(59 / 90)
    # AUC, pairs counted on paper (ties worth 0.5):
    #  A: pos {.7,.5,.2} vs neg {.3,.1,.2}: 3 + 3 + (0 + 1 + .5) = 7.5 / 9
    #  B: pos {.6,.2} vs neg {.2,.4,.6,.2}: (1+1+.5+1) + (.5+0+0+.5) = 4.5 / 8
    #  C: pos {.6} vs neg {.1,.1,.2,.1,.7}: 4 / 5
    assert m["per_class"]["A"]["auc"] == pytest.approx(7.5 / 9)
    assert m["per_class"]["B"]["auc"] == pytest.approx(4.5 / 8)
    assert m["per_class"]["C"]["auc"] == pytest.approx(4 / 5)
    assert m["auc_macro"] == pytest.approx(527 / 720)
    assert m["auc_skipped_classes"] == []
    # Train counts 500 / 50 / 5 with thresholds 100 / 20: one class per group.
    assert m["shot_groups"] == {"many": ["A"], "medium": ["B"], "few": ["C"]}
    assert m["many_accuracy"] == pytest.approx(2 / 3)
    assert m["medium_accuracy"] == pytest.approx(1 / 2)
    assert m["few_accuracy"] == pytest.approx(1.0)


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    n, c = 200, 4
    # Coarsely quantised scores so that many ties occur.
    probs = np.round(rng.dirichlet(np.ones(c), size=n), 1)
    labels = rng.integers(0, c, size=n)
    m = metrics.classification_metrics(
        probs, labels, list("abcd"), [10, 10, 10, 10], from_logits=False
    )
    refs = [brute_force_auc(probs[:, k], labels == k) for k in range(c)]
    for k, name in enumerate("abcd"):
        assert m["per_class"][name]["auc"] == pytest.approx(refs[k], abs=1e-12)
    assert m["auc_macro"] == pytest.approx(np.mean(refs), abs=1e-12)


def test_average_ranks_ties():
    np.testing.assert_allclose(
        metrics.average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0]
    )


def test_balanced_accuracy_is_mean_recall_over_present_classes():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 5))
    labels = rng.choice([0, 1, 3, 4], size=300)  # class 2 absent from the labels
    m = metrics.classification_metrics(logits, labels, list("vwxyz"), [1, 1, 1, 1, 1])
    preds = logits.argmax(1)
    recalls = [np.mean(preds[labels == k] == k) for k in (0, 1, 3, 4)]
    assert m["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    assert m["accuracy"] == pytest.approx(np.mean(preds == labels))
    # Class 2 has no positives: AUC skipped and listed.
    assert m["auc_skipped_classes"] == ["x"]
    assert m["per_class"]["x"]["auc"] is None
    assert m["per_class"]["x"]["support"] == 0


def test_from_logits_equals_explicit_softmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(50, 3)) * 3
    labels = rng.integers(0, 3, size=50)
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    a = metrics.classification_metrics(logits, labels, NAMES, [1, 1, 1], from_logits=True)
    b = metrics.classification_metrics(probs, labels, NAMES, [1, 1, 1], from_logits=False)
    assert a["auc_macro"] == pytest.approx(b["auc_macro"], abs=1e-12)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["macro_f1"] == pytest.approx(b["macro_f1"])


def test_perfect_predictions():
    labels = np.array([0, 1, 2, 2, 1, 0, 0])
    logits = np.eye(3)[labels] * 5.0
    m = metrics.classification_metrics(logits, labels, NAMES, [200, 50, 3])
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro"):
        assert m[key] == pytest.approx(1.0)
    for key in ("many_accuracy", "medium_accuracy", "few_accuracy"):
        assert m[key] == pytest.approx(1.0)


def test_constant_predictions():
    labels = np.array([0, 1, 1, 2, 2, 2])
    logits = np.zeros((6, 3))
    m = metrics.classification_metrics(logits, labels, NAMES, [5, 5, 5])
    # Every score ties: AUC 0.5 per class; argmax picks class 0 for all.
    assert m["auc_macro"] == pytest.approx(0.5)
    for name in NAMES:
        assert m["per_class"][name]["auc"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(1 / 6)
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    # F1: class 0 has precision 1/6, recall 1 -> 2/7; others 0. Macro over 3 classes.
    assert m["macro_f1"] == pytest.approx((2 / 7) / 3)
    assert m["confusion_matrix"] == [[1, 0, 0], [2, 0, 0], [3, 0, 0]]


def test_shot_groups_boundaries_and_empty_groups():
    # many > 100, few < 20: exactly 100 and exactly 20 are medium.
    groups = metrics.shot_groups([101, 100, 20, 19], 100, 20)
    assert groups == {"many": [0], "medium": [1, 2], "few": [3]}
    labels = np.array([0, 1, 2, 3])
    logits = np.eye(4)[[0, 1, 0, 0]]
    m = metrics.classification_metrics(logits, labels, list("abcd"), [500, 500, 500, 500])
    assert m["many_accuracy"] == pytest.approx(0.5)
    assert m["medium_accuracy"] is None
    assert m["few_accuracy"] is None
    with pytest.raises(ValueError, match="few_threshold"):
        metrics.shot_groups([1, 2], many_threshold=10, few_threshold=20)


def test_group_accuracy_is_mean_of_per_class_recall():
    # Classes A and B both "many": group accuracy = mean(2/3, 1/2) = 7/12, not pooled 3/5.
    m = metrics.classification_metrics(PROBS, LABELS, NAMES, [500, 200, 5], from_logits=False)
    assert m["many_accuracy"] == pytest.approx(7 / 12)
    assert m["medium_accuracy"] is None
    assert m["few_accuracy"] == pytest.approx(1.0)
    # A group whose only class is absent from the eval labels has no accuracy.
    m = metrics.classification_metrics(
        PROBS[:5], LABELS[:5], NAMES, [500, 200, 5], from_logits=False
    )
    assert m["few_accuracy"] is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.classification_metrics(PROBS, LABELS + 1, NAMES, [1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        metrics.classification_metrics(PROBS[0], LABELS, NAMES, [1, 1, 1])
    with pytest.raises(ValueError, match="class_names"):
        metrics.classification_metrics(PROBS, LABELS, NAMES[:2], [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        metrics.classification_metrics(PROBS * np.nan, LABELS, NAMES, [1, 1, 1])
    with pytest.raises(ValueError, match="integers"):
        metrics.classification_metrics(PROBS, LABELS.astype(float), NAMES, [1, 1, 1])


def test_json_serialisable_and_written(tmp_path):
    m = metrics.classification_metrics(PROBS, LABELS, NAMES, [500, 50, 5], from_logits=False)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    path = metrics.write_eval_json(tmp_path / "sub" / "eval.json", m)
    assert json.loads(path.read_text()) == m
    # numpy values are converted; NaN is refused.
    metrics.write_eval_json(tmp_path / "np.json", {"x": np.float32(0.5), "y": np.arange(2)})
    assert json.loads((tmp_path / "np.json").read_text()) == {"x": 0.5, "y": [0, 1]}
    with pytest.raises(ValueError):
        metrics.write_eval_json(tmp_path / "nan.json", {"x": float("nan")})


def test_classification_report_text():
    m = metrics.classification_metrics(PROBS, LABELS, NAMES, [500, 50, 5], from_logits=False)
    report = metrics.classification_report(m)
    lines = report.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row_a = next(line for line in lines if line.split()[:1] == ["A"])
    assert row_a.split() == ["A", "1.0000", "0.6667", "0.8000", "3"]
    assert any(line.split() == ["accuracy", "0.6667", "6"] for line in lines)
    macro = next(line for line in lines if line.strip().startswith("macro avg"))
    assert macro.split()[4] == f"{59 / 90:.4f}"
    assert f"{13 / 18:.4f}" in next(line for line in lines if line.startswith("balanced"))
    assert f"{527 / 720:.4f}" in next(line for line in lines if line.startswith("macro AUC"))
    with pytest.raises(ValueError, match="per_class"):
        metrics.classification_report({"accuracy": 1.0})


def test_cross_entropy_hand_worked_and_unlabelled_rows_skipped():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0], [5.0, 1.0]])
    labels = np.array([0, 0, -1])  # -1: no ground truth
    # -log(1/2) and -log(3/4), averaged
    assert metrics.cross_entropy(logits, labels) == pytest.approx(
        (np.log(2.0) + np.log(4.0 / 3.0)) / 2
    )
    assert metrics.cross_entropy(logits[2:], labels[2:]) is None
