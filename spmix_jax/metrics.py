"""Evaluation metrics on the host (docs/method.md section 10) and the printed report.

The evaluation metrics run on the host in numpy over the whole held-out split: balanced accuracy
(the ISIC 2018 challenge metric), macro F1, macro one-vs-rest ROC AUC, per-class precision /
recall / F1, the confusion matrix and many / medium / few-shot accuracy. Every value in the
returned dict is a plain Python number, string, list or None, so it can be written as strict JSON.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from spmix_jax import result_files

# --------------------------------------------------------------------------------------------
# Host-side evaluation metrics.
# --------------------------------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row max is subtracted first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean softmax cross-entropy of the labelled rows (label >= 0); None when there are none."""
    labels = np.asarray(labels)
    keep = labels >= 0
    if not keep.any():
        return None
    x = np.asarray(logits, dtype=np.float64)[keep]
    x = x - x.max(axis=-1, keepdims=True)
    log_probs = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(x)), labels[keep].astype(np.int64)]))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array; tied values share the mean of the ranks they span."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"average_ranks expects a 1-D array, got shape {values.shape}")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    last = np.cumsum(counts).astype(np.float64)  # rank of the last member of each tie group
    mean_rank = last - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def binary_roc_auc(scores: np.ndarray, is_positive: np.ndarray) -> float:
    """ROC AUC = P(score_pos > score_neg) + 0.5 P(tie), via the Mann-Whitney rank sum.

    Raises ValueError when either the positive or the negative set is empty (AUC undefined).
    """
    scores = np.asarray(scores, dtype=np.float64)
    is_positive = np.asarray(is_positive, dtype=bool)
    if scores.shape != is_positive.shape or scores.ndim != 1:
        raise ValueError(
            f"scores and is_positive must be 1-D of equal length, got {scores.shape} and "
            f"{is_positive.shape}"
        )
    n_pos = int(is_positive.sum())
    n_neg = int(is_positive.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC AUC needs positives and negatives, got {n_pos} and {n_neg}")
    ranks = average_ranks(scores)
    u = ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(num: float, den: float) -> float:
    """num / den, or 0.0 when den is 0 (sklearn's zero_division=0 convention)."""
    return float(num) / float(den) if den else 0.0


def _mean_or_none(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def shot_groups(
    train_class_counts: Sequence[int] | np.ndarray,
    many_threshold: int = 100,
    few_threshold: int = 20,
) -> dict[str, list[int]]:
    """Class indices per group by TRAINING count: many > many_threshold, few < few_threshold."""
    counts = np.asarray(train_class_counts)
    if counts.ndim != 1:
        raise ValueError(f"train_class_counts must be 1-D, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"train_class_counts must be non-negative, got {counts.tolist()}")
    if few_threshold > many_threshold:
        raise ValueError(
            f"few_threshold ({few_threshold}) must not exceed many_threshold ({many_threshold})"
        )
    many = [c for c, n in enumerate(counts) if n > many_threshold]
    few = [c for c, n in enumerate(counts) if n < few_threshold]
    medium = [c for c in range(counts.size) if c not in many and c not in few]
    return {"many": many, "medium": medium, "few": few}


def classification_metrics(
    probs_or_logits: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    train_class_counts: Sequence[int] | np.ndarray | None,
    *,
    many_threshold: int = 100,
    few_threshold: int = 20,
    from_logits: bool = True,
) -> dict[str, Any]:
    """All docs/method.md section 10 metrics of one evaluation split as a JSON-serialisable dict.

    Args:
      probs_or_logits: (N, C) classifier logits (`from_logits=True`, softmax applied here) or
        class probabilities / scores (`from_logits=False`). Predictions are the row argmax.
      labels: (N,) integer labels in [0, C).
      class_names: C names, used as keys of `per_class` and in the report.
      train_class_counts: C training counts, which define the many / medium / few groups;
        None when they are unknown (a model evaluated on a dataset without its training split
        and without a record of it): then the groups and their accuracies are None (n/a).
      many_threshold, few_threshold: many = count > many_threshold, few = count < few_threshold,
        medium = the rest.
      from_logits: whether `probs_or_logits` are logits.

    Returns:
      accuracy; balanced_accuracy (mean recall over classes present in `labels`); macro_f1 (mean
      F1 over classes present in labels or predictions, as sklearn's default); auc_macro (mean
      one-vs-rest ROC AUC over classes with both positives and negatives; None if there is none)
      with auc_skipped_classes; per_class {name: precision, recall, f1, support, predicted, auc};
      many/medium/few_accuracy (mean recall of the group's classes present in labels; None for
      an empty group) and the group membership; confusion_matrix (rows = true class);
      num_examples.
    """
    scores = np.asarray(probs_or_logits)
    labels = np.asarray(labels)
    if scores.ndim != 2:
        raise ValueError(f"probs_or_logits must have shape (N, C), got {scores.shape}")
    n, num_classes = scores.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n == 0:
        raise ValueError("classification_metrics needs at least one example")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got min {labels.min()} max {labels.max()}"
        )
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class_names for {num_classes} classes")
    if train_class_counts is not None and len(train_class_counts) != num_classes:
        raise ValueError(f"{len(train_class_counts)} train_class_counts for {num_classes} classes")
    if not np.all(np.isfinite(scores)):
        raise ValueError("probs_or_logits contains NaN or infinite values")

    probs = softmax(scores) if from_logits else scores.astype(np.float64)
    labels = labels.astype(np.int64)
    preds = probs.argmax(axis=1)

    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)

    per_class: dict[str, dict[str, Any]] = {}
    recalls, f1s = {}, {}
    auc_values, auc_skipped = [], []
    for c, name in enumerate(class_names):
        precision = _ratio(tp[c], predicted[c])
        recall = _ratio(tp[c], support[c])
        f1 = _ratio(2 * precision * recall, precision + recall)
        recalls[c], f1s[c] = recall, f1
        if 0 < support[c] < n:
            auc = binary_roc_auc(probs[:, c], labels == c)
            auc_values.append(auc)
        else:
            auc = None
            auc_skipped.append(str(name))
        per_class[str(name)] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(support[c]),
            "predicted": int(predicted[c]),
            "auc": auc,
        }

    present = [c for c in range(num_classes) if support[c] > 0]
    seen = [c for c in range(num_classes) if support[c] > 0 or predicted[c] > 0]
    groups: dict[str, list[int]] | None = None
    if train_class_counts is not None:
        groups = shot_groups(train_class_counts, many_threshold, few_threshold)
    result: dict[str, Any] = {
        "num_examples": int(n),
        "accuracy": float(tp.sum() / n),
        "balanced_accuracy": float(np.mean([recalls[c] for c in present])),
        "macro_f1": float(np.mean([f1s[c] for c in seen])),
        "auc_macro": _mean_or_none(auc_values),
        "auc_skipped_classes": auc_skipped,
        "per_class": per_class,
    }
    for group in ("many", "medium", "few"):
        members = [] if groups is None else groups[group]
        result[f"{group}_accuracy"] = _mean_or_none([recalls[c] for c in members if support[c]])
    result["shot_groups"] = (
        None if groups is None else {g: [str(class_names[c]) for c in m] for g, m in groups.items()}
    )
    result["shot_thresholds"] = {"many": int(many_threshold), "few": int(few_threshold)}
    result["class_names"] = [str(x) for x in class_names]
    result["confusion_matrix"] = cm.tolist()
    return result


def _fmt(value: float | None, width: int) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{value:>{width}.4f}"


def classification_report(metrics: Mapping[str, Any]) -> str:
    """A text table laid out as sklearn's classification_report, plus the summary metrics.

    The macro row averages over the same classes as `macro_f1` (present in labels or
    predictions); the weighted row weights by support.
    """
    for key in ("per_class", "accuracy", "num_examples"):
        if key not in metrics:
            raise ValueError(f"metrics dict lacks {key!r}; pass classification_metrics' output")
    per_class = metrics["per_class"]
    names = list(per_class)
    width = max([len("weighted avg"), *(len(x) for x in names)])
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]
    for name in names:
        m = per_class[name]
        lines.append(
            f"{name:>{width}} {_fmt(m['precision'], 9)} {_fmt(m['recall'], 9)} "
            f"{_fmt(m['f1'], 9)} {m['support']:>9d}"
        )
    lines.append("")
    total = int(metrics["num_examples"])
    lines.append(
        f"{'accuracy':>{width}} {'':>9} {'':>9} {_fmt(metrics['accuracy'], 9)} {total:>9d}"
    )
    seen = [m for m in per_class.values() if m["support"] > 0 or m.get("predicted", 0) > 0]
    if seen:
        avg = [float(np.mean([m[k] for m in seen])) for k in ("precision", "recall", "f1")]
        lines.append(
            f"{'macro avg':>{width}} {_fmt(avg[0], 9)} {_fmt(avg[1], 9)} {_fmt(avg[2], 9)} "
            f"{total:>9d}"
        )
    weights = np.array([m["support"] for m in per_class.values()], dtype=np.float64)
    if weights.sum() > 0:
        w = [
            float(np.dot(weights, [m[k] for m in per_class.values()]) / weights.sum())
            for k in ("precision", "recall", "f1")
        ]
        lines.append(
            f"{'weighted avg':>{width}} {_fmt(w[0], 9)} {_fmt(w[1], 9)} {_fmt(w[2], 9)} {total:>9d}"
        )
    lines.append("")
    summary = [
        ("balanced accuracy", metrics.get("balanced_accuracy")),
        ("macro F1", metrics.get("macro_f1")),
        ("macro AUC (OvR)", metrics.get("auc_macro")),
        ("many-shot accuracy", metrics.get("many_accuracy")),
        ("medium-shot accuracy", metrics.get("medium_accuracy")),
        ("few-shot accuracy", metrics.get("few_accuracy")),
    ]
    label_width = max(len(k) for k, _ in summary)
    for key, value in summary:
        lines.append(f"{key:<{label_width}} {_fmt(value, 9)}")
    skipped = metrics.get("auc_skipped_classes")
    if skipped:
        lines.append(f"AUC skipped (no positives or no negatives): {', '.join(skipped)}")
    return "\n".join(lines) + "\n"


def _to_builtin(obj: Any) -> Any:
    """json.dump fallback for numpy and jax scalars / arrays."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def write_eval_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> epath.Path:
    """Writes `metrics` as strict JSON (NaN refused), creating parent folders; returns the path.

    Accepts local paths and any filesystem etils.epath knows (e.g. gs:// on TPU VMs).
    """
    return result_files.write_json(path, metrics, default=_to_builtin)  # whole or not at all
