"""Training losses (docs/method.md section 8): GPaCo, its class prior, and the baseline losses.

Every loss casts its inputs to float32 and returns a float32 scalar mean, so that a bfloat16
forward pass still gets a float32 loss. Logits and log-priors may contain -inf (a class with no
training example has prior 0); the losses select entries with `where`/`take_along_axis` rather
than multiplying by masks, so such entries never turn into NaN values or NaN gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_nonnegative(**values: object) -> None:
    """Rejects negative (or NaN) hyper-parameters given as Python numbers; traced values pass."""
    for name, value in values.items():
        if isinstance(value, numbers.Real) and not float(value) >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_temperature(temperature: object) -> None:
    if isinstance(temperature, numbers.Real) and not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")


def _check_rank(name: str, x: jax.Array, rank: int) -> None:
    if x.ndim != rank:
        raise ValueError(f"{name} must have rank {rank}, got shape {tuple(x.shape)}")


def _contrast_set(
    anchors: jax.Array,
    anchor_labels: jax.Array,
    queue_features: jax.Array | None,
    queue_labels: jax.Array | None,
    queue_mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Returns (features, labels, valid) of the contrast set [anchors; queue]."""
    n, d = anchors.shape
    if queue_features is None:
        if queue_labels is not None or queue_mask is not None:
            raise ValueError("queue_labels/queue_mask given without queue_features")
        return anchors, anchor_labels, jnp.ones((n,), bool)
    if queue_labels is None:
        raise ValueError("queue_features given without queue_labels")
    queue_features = jnp.asarray(queue_features, jnp.float32)
    queue_labels = jnp.asarray(queue_labels, jnp.int32)
    _check_rank("queue_features", queue_features, 2)
    k = queue_features.shape[0]
    if queue_features.shape[1] != d:
        raise ValueError(
            f"queue_features width {queue_features.shape[1]} != anchor feature width {d}"
        )
    if queue_labels.shape != (k,):
        raise ValueError(f"queue_labels must have shape ({k},), got {tuple(queue_labels.shape)}")
    if queue_mask is None:
        queue_valid = jnp.ones((k,), bool)
    else:
        queue_valid = jnp.asarray(queue_mask)
        if queue_valid.shape != (k,):
            raise ValueError(f"queue_mask must have shape ({k},), got {tuple(queue_valid.shape)}")
        queue_valid = queue_valid.astype(bool)
    features = jnp.concatenate([anchors, queue_features], axis=0)
    labels = jnp.concatenate([anchor_labels, queue_labels], axis=0)
    valid = jnp.concatenate([jnp.ones((n,), bool), queue_valid], axis=0)
    return features, labels, valid


def gpaco_loss(
    anchor_features: jax.Array,
    anchor_labels: jax.Array,
    logits: jax.Array,
    queue_features: jax.Array,
    queue_labels: jax.Array,
    log_prior: jax.Array,
    *,
    alpha: float = 0.05,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 0.2,
    queue_mask: jax.Array | None = None,
) -> jax.Array:
    """GPaCo loss: supervised contrast with logit-adjusted class centres in one softmax.

    Args:
      anchor_features: (2B, d) L2-normalised anchors [q; k].
      anchor_labels: (2B,) integer labels of the anchors (the primaries' labels, twice).
      logits: (2B, C) classifier logits of the anchors.
      queue_features: (K, d) queued keys; queue_labels: (K,) their labels.
      log_prior: (C,) log of the class prior of the labels the loss sees (`class_log_prior`).
      alpha: weight of each sample positive; beta: weight of the class-centre positive.
      gamma: denominator weight of the sample slots (class slots weigh 1).
      temperature: divides the feature similarities.
      queue_mask: optional (K,) bool; False entries (e.g. of an initially empty queue) take part
        neither in the denominator nor as positives.

    Returns:
      The float32 mean over the 2B anchors of
      L_i = -(beta log p_{i,y_i} + alpha sum_{j in P_i} log p_ij) / (beta + alpha |P_i|).
      An anchor with beta + alpha |P_i| == 0 contributes 0.
    """
    _check_nonnegative(alpha=alpha, beta=beta, gamma=gamma)
    _check_temperature(temperature)
    anchors = jnp.asarray(anchor_features, jnp.float32)
    labels = jnp.asarray(anchor_labels, jnp.int32)
    logits = jnp.asarray(logits, jnp.float32)
    log_prior = jnp.asarray(log_prior, jnp.float32)
    _check_rank("anchor_features", anchors, 2)
    _check_rank("logits", logits, 2)
    n = anchors.shape[0]
    num_classes = logits.shape[1]
    if labels.shape != (n,):
        raise ValueError(f"anchor_labels must have shape ({n},), got {tuple(labels.shape)}")
    if logits.shape[0] != n:
        raise ValueError(f"logits has {logits.shape[0]} rows but there are {n} anchors")
    if log_prior.shape != (num_classes,):
        raise ValueError(
            f"log_prior must have shape ({num_classes},), got {tuple(log_prior.shape)}"
        )
    if queue_features is None:
        raise ValueError("gpaco_loss needs queue_features (use a (0, d) array for no queue)")
    contrast, contrast_labels, contrast_valid = _contrast_set(
        anchors, labels, queue_features, queue_labels, queue_mask
    )

    # One row of C + 2B + K logits per anchor.
    class_u = logits + log_prior[None, :]
    sample_u = jnp.matmul(anchors, contrast.T, precision=_HIGHEST) / temperature
    u = jnp.concatenate([class_u, sample_u], axis=1)

    # Denominator weights: 1 on class slots, gamma on valid sample slots j != i, 0 elsewhere.
    sample_ok = ~jnp.eye(n, contrast.shape[0], dtype=bool) & contrast_valid[None, :]
    sample_w = jnp.where(sample_ok, jnp.asarray(gamma, jnp.float32), 0.0)
    w = jnp.concatenate([jnp.ones_like(class_u), sample_w], axis=1)
    in_denom = w > 0

    # Stable weighted log-sum-exp: shift by the max over the slots that enter the denominator
    # (the C class slots always do, so the shift is finite). Slots outside it never reach exp().
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(in_denom, u, -jnp.inf), axis=1, keepdims=True))
    e = jnp.exp(jnp.where(in_denom, u - shift, -jnp.inf))
    log_z = jnp.log(jnp.sum(w * e, axis=1, keepdims=True))
    log_p = u - shift - log_z

    class_logp = jnp.take_along_axis(log_p[:, :num_classes], labels[:, None], axis=1)[:, 0]
    positives = sample_ok & (labels[:, None] == contrast_labels[None, :])
    sample_logp_sum = jnp.sum(jnp.where(positives, log_p[:, num_classes:], 0.0), axis=1)
    num_pos = jnp.sum(positives, axis=1).astype(jnp.float32)

    numer = beta * class_logp + alpha * sample_logp_sum
    denom = beta + alpha * num_pos
    per_anchor = jnp.where(denom > 0, -numer / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.mean(per_anchor)


def class_log_prior(
    class_counts: Sequence[int] | np.ndarray, *, primary: str, balanced_q: float
) -> np.ndarray:
    """Log of the prior of the labels the loss sees, as a (C,) float32 numpy array.

    The mixed sample keeps the primary's label, so the prior follows the primary's sampler
    (docs/method.md sections 2 and 8): `primary='instance'` -> n_c / N; `primary='balanced'` with
    sampling weights n_c^-q -> proportional to n_c^(1-q) (uniform for q = 1). Using n_c / N with
    balanced labels
    would adjust twice and push predictions toward rare classes. A class with no training example
    is never drawn and gets prior 0 (log-prior -inf), which the losses handle.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"class_counts must be a non-empty 1-D sequence, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"class_counts must be finite and >= 0, got {counts.tolist()}")
    if not np.any(counts > 0):
        raise ValueError("class_counts are all zero: no training example to take a prior from")
    present = counts > 0
    if primary == "instance":
        weights = counts
    elif primary == "balanced":
        if not np.isfinite(balanced_q):
            raise ValueError(f"balanced_q must be finite, got {balanced_q!r}")
        weights = np.where(present, np.power(np.where(present, counts, 1.0), 1.0 - balanced_q), 0.0)
    else:
        raise ValueError(f"primary must be 'instance' or 'balanced', got {primary!r}")
    prior = weights / weights.sum()
    with np.errstate(divide="ignore"):
        log_prior = np.where(present, np.log(np.where(present, prior, 1.0)), -np.inf)
    return log_prior.astype(np.float32)


def _check_logits_labels(logits: jax.Array, labels: jax.Array) -> None:
    _check_rank("logits", logits, 2)
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with hard integer labels, in float32."""
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    _check_logits_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0])


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against soft targets (rows summing to 1), for the mixup baselines."""
    logits = jnp.asarray(logits, jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    _check_rank("logits", logits, 2)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}"
        )
    log_p = jax.nn.log_softmax(logits, axis=-1)
    # `where` keeps a zero target on a -inf log-probability from producing NaN.
    return -jnp.mean(jnp.sum(jnp.where(targets != 0, targets * log_p, 0.0), axis=-1))


def logit_adjusted_cross_entropy(
    logits: jax.Array, labels: jax.Array, log_prior: jax.Array, tau: float = 1.0
) -> jax.Array:
    """Logit-adjusted cross-entropy (Menon et al. 2021): CE of logits + tau * log(prior).

    Training against the prior-adjusted logits lets the raw logits estimate balanced posteriors;
    inference uses the raw logits.
    """
    _check_nonnegative(tau=tau)
    logits = jnp.asarray(logits, jnp.float32)
    log_prior = jnp.asarray(log_prior, jnp.float32)
    if log_prior.shape != (logits.shape[-1],):
        raise ValueError(
            f"log_prior must have shape ({logits.shape[-1]},), got {tuple(log_prior.shape)}"
        )
    if isinstance(tau, numbers.Real) and tau == 0:
        return cross_entropy(logits, labels)
    return cross_entropy(logits + tau * log_prior[None, :], labels)


def supcon_loss(
    features: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.2,
    queue_features: jax.Array | None = None,
    queue_labels: jax.Array | None = None,
    queue_mask: jax.Array | None = None,
) -> jax.Array:
    """Supervised contrastive loss (Khosla et al. 2020, L_out: mean over positives outside the log).

    Anchors are the rows of `features` (L2-normalised, e.g. [q; k]); the contrast set is
    [features; queue] without the anchor itself and without masked queue entries. Anchors with no
    positive are left out of the mean (the loss is 0 when no anchor has one).
    """
    _check_temperature(temperature)
    anchors = jnp.asarray(features, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    _check_rank("features", anchors, 2)
    n = anchors.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    contrast, contrast_labels, contrast_valid = _contrast_set(
        anchors, labels, queue_features, queue_labels, queue_mask
    )
    sim = jnp.matmul(anchors, contrast.T, precision=_HIGHEST) / temperature
    others = ~jnp.eye(n, contrast.shape[0], dtype=bool) & contrast_valid[None, :]
    has_other = jnp.any(others, axis=1, keepdims=True)
    shift = jax.lax.stop_gradient(
        jnp.where(has_other, jnp.max(jnp.where(others, sim, -jnp.inf), axis=1, keepdims=True), 0.0)
    )
    z = jnp.sum(jnp.exp(jnp.where(others, sim - shift, -jnp.inf)), axis=1, keepdims=True)
    log_p = sim - shift - jnp.log(jnp.where(has_other, z, 1.0))
    positives = others & (labels[:, None] == contrast_labels[None, :])
    num_pos = jnp.sum(positives, axis=1)
    mean_log_p = jnp.sum(jnp.where(positives, log_p, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    has_pos = num_pos > 0
    return -jnp.sum(jnp.where(has_pos, mean_log_p, 0.0)) / jnp.maximum(jnp.sum(has_pos), 1)


# --- one loss per `loss.name`, chosen by the train step through `compute` ----------------------


class LossInputs(NamedTuple):
    """Everything a training loss may read, produced by the forward pass of one step."""

    query: jax.Array  # (B, d) normalised query features q
    keys: jax.Array  # (B, d) normalised key features k
    logits: jax.Array  # (B, C) classifier logits of the query view
    key_logits: jax.Array  # (B, C) classifier logits paired with the keys
    labels: jax.Array  # (B,) the primary's labels
    targets: jax.Array | None  # (B, C) soft targets when the mix mixes labels, else None
    queue_features: jax.Array  # (K, d)
    queue_labels: jax.Array  # (K,)
    queue_valid: jax.Array  # (K,) bool


def _gpaco(x: LossInputs, log_prior: jax.Array, cfg: Any) -> jax.Array:
    return gpaco_loss(
        jnp.concatenate([x.query, x.keys], axis=0),
        jnp.concatenate([x.labels, x.labels], axis=0),
        jnp.concatenate([x.logits, x.key_logits], axis=0),
        x.queue_features,
        x.queue_labels,
        log_prior,
        alpha=cfg.alpha,
        beta=cfg.beta,
        gamma=cfg.gamma,
        temperature=cfg.temperature,
        queue_mask=x.queue_valid,
    )


def _ce(x: LossInputs, log_prior: jax.Array, cfg: Any) -> jax.Array:
    del log_prior, cfg
    if x.targets is not None:
        return soft_cross_entropy(x.logits, x.targets)
    return cross_entropy(x.logits, x.labels)


def _la_ce(x: LossInputs, log_prior: jax.Array, cfg: Any) -> jax.Array:
    del cfg
    if x.targets is not None:
        return soft_cross_entropy(x.logits + log_prior, x.targets)
    return logit_adjusted_cross_entropy(x.logits, x.labels, log_prior)


def _supcon(x: LossInputs, log_prior: jax.Array, cfg: Any) -> jax.Array:
    """The contrastive term over [q; k; queue] plus cross-entropy on the classifier."""
    del log_prior
    contrastive = supcon_loss(
        jnp.concatenate([x.query, x.keys], axis=0),
        jnp.concatenate([x.labels, x.labels], axis=0),
        temperature=cfg.temperature,
        queue_features=x.queue_features,
        queue_labels=x.queue_labels,
        queue_mask=x.queue_valid,
    )
    return contrastive + cross_entropy(x.logits, x.labels)


# name -> (loss, whether it accepts the soft targets of label-mixing baselines).
LOSSES: dict[str, tuple[Callable[[LossInputs, jax.Array, Any], jax.Array], bool]] = {
    "gpaco": (_gpaco, False),
    "ce": (_ce, True),
    "la_ce": (_la_ce, True),
    "supcon": (_supcon, False),
}


def compute(name: str, inputs: LossInputs, *, log_prior: jax.Array, cfg: Any) -> jax.Array:
    """The training loss `loss.name` (docs/method.md section 8); `cfg` is `config.loss`."""
    if name not in LOSSES:
        raise ValueError(f"loss.name={name!r} is not one of {tuple(LOSSES)}.")
    return LOSSES[name][0](inputs, log_prior, cfg)
