"""One SPMix training step as a pure function, in the four phases of the paper's figure.

    (1) views and saliency -> (2) mixing -> (3) query / key encoders and the loss ->
    (4) update, EMA key encoder and enqueue.

`train.py` binds the static arguments with `functools.partial` and jits the result with donation
and shardings. Every choice the config makes (mix family, key-encoder mode, loss) is looked up once
from the module that implements it; the step itself never branches on them. Randomness comes from
`fold_in(base_key, step)`, `base_key` being `PRNGKey(config.seed)`, so no key is stored in the
state; the key is an argument of the step, not a constant in it, so runs that differ only in their
seed compile the same program. docs/method.md section 13 maps each phase
to the functions it calls.

No `from __future__ import annotations` here: the clu metric collection below is a
`flax.struct.dataclass`, which reads its field annotations as classes.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import struct

from spmix_jax import (
    augment,
    ema,
    key_encoder,
    losses,
    mixing,
    optimizer,
    saliency,
    saliency_source,
)
from spmix_jax import queue as queue_lib
from spmix_jax.models import decode_variant
from spmix_jax.state import TrainState

# Order in which the four views draw their random keys (changing it changes every run).
VIEW_NAMES = ("primary_q", "secondary_q", "primary_k", "secondary_k")


@struct.dataclass
class Int32Accuracy(clu_metrics.Accuracy):
    """clu's Accuracy, casting labels to int32 first (clu refuses any other integer dtype)."""

    @classmethod
    def from_model_output(cls, *, logits: jnp.ndarray, labels: jnp.ndarray, **kwargs):
        return super().from_model_output(
            logits=logits, labels=jnp.asarray(labels).astype(jnp.int32), **kwargs
        )


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    """Per-step training metrics; `merge` averages loss and ratio per step, accuracy per example.

    mix_ratio_mean is the mean share of the primary (SPMix: the per-patch ratios of the query
    view; pixel baselines: their lambda; no mixing: 1). The learning rate keeps its last value.
    grad_norm is the global L2 norm of the loss gradient before clipping, averaged per step.
    """

    # clu builds metric classes with calls, which type checkers do not read as types.
    loss: clu_metrics.Average.from_output("loss")  # type: ignore[valid-type]
    accuracy: Int32Accuracy
    mix_ratio_mean: clu_metrics.Average.from_output("mix_ratio_mean")  # type: ignore[valid-type]
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")  # type: ignore[valid-type]
    grad_norm: clu_metrics.Average.from_output("grad_norm")  # type: ignore[valid-type]


def metrics_to_host(collection: clu_metrics.Collection) -> dict[str, float]:
    """Computes a metric collection and returns plain floats (for writers and logs)."""
    values = jax.device_get(collection.compute())
    return {name: float(np.asarray(v)) for name, v in values.items()}


class View(NamedTuple):
    """One augmented view of a batch: what the encoder sees and what its saliency is made from."""

    normalised: jax.Array  # (B, M, M, 3) float32, normalised with the dataset's mean and std
    unit: jax.Array  # (B, M, M, 3) float32 RGB in [0, 1]: the encoder's input before normalising
    geometry: jax.Array | None  # (B, M, M, 3) the warp without colour ops (static, `view` source)
    saliency: jax.Array | None = None  # (B, M, M) the frame's map through this warp (`frame`)


def _both(batch: dict[str, jax.Array], field: str) -> jax.Array:
    """The primary's and the secondary's `field` stacked into one (2B, ...) array."""
    return jnp.concatenate([batch[f"primary_{field}"], batch[f"secondary_{field}"]])


def _both_boxes(batch: dict[str, jax.Array]) -> jax.Array | None:
    """Both images' valid regions, (2B, 4), when the host sends padded frames; else None."""
    return _both(batch, "box") if "primary_box" in batch else None


def _halves(x: jax.Array) -> dict[str, jax.Array]:
    """Splits a (2B, ...) array made by `_both` back into the primary's and the secondary's."""
    primary, secondary = jnp.split(x, 2)
    return {"primary": primary, "secondary": secondary}


def frame_saliency(
    batch: dict[str, jax.Array], config: ml_collections.ConfigDict, score_fn: Any
) -> dict[str, jax.Array]:
    """One (B, H, W) map per image of the pair from its stored frame (`saliency.source=frame`).

    Both images of every pair go through one call (one copy of the saliency program in the
    compiled step). Empty for `saliency.source=view`, whose maps `saliency_maps` computes on
    each view.
    """
    if config.saliency.source != "frame":
        return {}
    return _halves(
        saliency_source.frame_maps(
            config.saliency.method,
            _both(batch, "image"),
            _both_boxes(batch),
            input_size=config.model.image_size,
            score_fn=score_fn,
            labels=_both(batch, "label"),
            score=config.saliency.score,
        )
    )


def make_views(
    rng: jax.Array,
    batch: dict[str, jax.Array],
    settings: augment.ViewSettings,
    out_size: int,
    frame_maps: dict[str, jax.Array] | None = None,
    map_fill: float = 0.0,
) -> dict[str, View]:
    """Query and key views of both images of every pair (docs/method.md section 3).

    Crops are drawn from each image's valid region (`<who>_box` in the batch) when the host sends
    padded frames, so a view never shows padding. With `frame_maps`, each view carries its
    image's map through its own warp (`map_fill` where RandAugment brings in fill); otherwise it
    carries its geometry-only warp for `saliency_maps`.

    Each view draws its examples' keys from its own key of `split(rng, 4)` (in VIEW_NAMES order),
    and the primary and secondary images of a kind are rendered in one call on the stacked 2B
    batch: the same views as four calls, with half the program to compile.
    """
    size = batch["primary_image"].shape[0]
    # The four views' example keys in one vmapped split: the same keys as four splits, with one
    # copy of the random-bits program instead of four.
    per_view = jax.vmap(lambda k: augment.example_keys(k, size))(
        jax.random.split(rng, len(VIEW_NAMES))
    )
    keys = dict(zip(VIEW_NAMES, per_view, strict=True))
    images, boxes = _both(batch, "image"), _both_boxes(batch)
    # Each view carries its frame's map through its warp, or its geometry-only warp.
    carry: dict[str, Any] = (
        {
            "maps": jnp.concatenate([frame_maps["primary"], frame_maps["secondary"]]),
            "map_fill": map_fill,
        }
        if frame_maps
        else {"with_geometry": True}
    )
    query_keys, key_keys = (
        jnp.concatenate([keys[f"primary_{kind}"], keys[f"secondary_{kind}"]]) for kind in "qk"
    )
    rendered = augment.query_and_key_views(
        query_keys,
        key_keys,
        images,
        out_size=out_size,
        settings=settings,
        boxes=boxes,
        **carry,
    )
    views = {}
    for kind, (unit, normalised, carried) in zip("qk", rendered, strict=True):
        parts = [_halves(x) for x in (normalised, unit, carried)]
        for who in ("primary", "secondary"):
            normalised_w, unit_w, carried_w = (p[who] for p in parts)
            views[f"{who}_{kind}"] = (
                View(normalised_w, unit_w, None, carried_w)
                if frame_maps
                else View(normalised_w, unit_w, carried_w)
            )
    return views


def saliency_maps(
    views: dict[str, View],
    batch: dict[str, jax.Array],
    config: ml_collections.ConfigDict,
    score_fn: Any,
) -> dict[str, jax.Array]:
    """One (B, M, M) map per view, without gradient (docs/method.md section 4).

    A view that carries its frame's map uses it. Otherwise static maps read the view's
    geometry-only warp, so colour jitter, RandAugment's colour ops, grayscale and blur never move
    the mixing ratios, and gradient saliency reads what the encoder sees.
    """
    static = config.saliency.method in saliency.STATIC_METHODS
    maps = {}
    for name, view in views.items():
        if view.saliency is not None:
            maps[name] = jax.lax.stop_gradient(view.saliency)
            continue
        images = view.geometry if static else view.unit
        if images is None:
            raise ValueError(f"view {name} carries neither its frame's map nor its geometry")
        sal = saliency.compute(
            config.saliency.method,
            images,
            score_fn=score_fn,
            labels=batch[f"{name.split('_')[0]}_label"],
            score=config.saliency.score,
        )
        maps[name] = jax.lax.stop_gradient(sal)
    return maps


def loss_log_prior(config: ml_collections.ConfigDict, class_counts: Any) -> np.ndarray:
    """The (C,) log-prior the loss adjusts by: that of the primary's labels.

    The mixed sample keeps the primary's label, so the prior follows the primary's sampler
    (`mix.primary`, `input.balanced_q`; docs/method.md section 8). `train.py` computes it once
    with this function and binds it to the jitted step.
    """
    return losses.class_log_prior(
        class_counts, primary=config.mix.primary, balanced_q=config.input.balanced_q
    )


def sum_over_leaves(tree: Any, fn: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """The sum of elementwise `fn` over every element of every leaf, as one reduction.

    The leaves are concatenated first (the state is replicated, so this stays on each device):
    XLA compiles a reduction per leaf shape otherwise. Its simplifier turns a sum over a
    concatenation back into one sum per leaf plus a chain of scalar additions, which it then
    copies into every consumer of the result; the optimisation barrier keeps the concatenation.
    `fn` is applied after the barrier, to the concatenation: applied per leaf it would compile
    as one kernel per leaf shape. Non-finite anywhere gives non-finite.
    """
    flat = jnp.concatenate([x.astype(jnp.float32).ravel() for x in jax.tree.leaves(tree)])
    flat = jax.lax.optimization_barrier(flat)
    return jnp.sum(flat if fn is None else fn(flat))


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    base_key: jax.Array,
    *,
    config: ml_collections.ConfigDict,
    model: nn.Module,
    tx: optax.GradientTransformation,
    log_prior: np.ndarray,
    num_train: int,
) -> tuple[TrainState, TrainMetrics]:
    """One step on a batch of pairs; returns the new state and this step's metrics.

    `base_key` is the run's `PRNGKey(config.seed)`; each step draws from `fold_in(base_key, step)`.

    A non-finite loss, gradient or updated parameter leaves the state unchanged and reports a
    NaN loss (the loop stops on it before saving).
    """
    mix, uses_saliency = mixing.get(config.mix.method)
    keys = key_encoder.get(config.model.key_encoder)
    settings = augment.ViewSettings.from_config(config.augment)
    patch_size = decode_variant(config.model.variant).patch_size
    momentum = ema.momentum_schedule(
        config.model.ema_momentum,
        optimizer.total_steps(config, num_train),
        config.model.ema_schedule,
    )(state.step)
    learning_rate = optimizer.learning_rate_schedule(config, num_train)(state.step)
    rng = jax.random.fold_in(base_key, state.step)
    rng_views, rng_mix_q, rng_mix_k = jax.random.split(rng, 3)
    labels = batch["primary_label"].astype(jnp.int32)

    # (1) Views of both images, and their saliency maps when the mix reads them: made once per
    # image from its frame and carried through each view's warp, or made on each view
    # (`saliency.source`). Gradient saliency scores with the key encoder, without gradient.
    frozen_keys = keys.frozen_variables(state)
    score_fn = lambda x: model.apply(  # noqa: E731
        frozen_keys, augment.normalize(x, settings), method=model.logits
    )
    frame_maps = frame_saliency(batch, config, score_fn) if uses_saliency else {}
    fill = saliency_source.fill_value(config.saliency.fill)
    views = make_views(rng_views, batch, settings, config.model.image_size, frame_maps, fill)
    maps = saliency_maps(views, batch, config, score_fn) if uses_saliency else {}

    # (2) Mixing, per view: SPMix's per-patch ratios, a pixel baseline's mixed images, or none.
    mixed = {
        kind: mix(
            rng_mix,
            views[f"primary_{kind}"].normalised,
            views[f"secondary_{kind}"].normalised,
            maps.get(f"primary_{kind}"),
            maps.get(f"secondary_{kind}"),
            cfg=config.mix,
            patch_size=patch_size,
        )
        for kind, rng_mix in (("q", rng_mix_q), ("k", rng_mix_k))
    }
    mq, mk = mixed["q"], mixed["k"]
    targets = (
        None
        if mq.label_share is None
        else mixing.soft_targets(
            labels, batch["secondary_label"], mq.label_share, config.data.num_classes
        )
    )

    # (3) Query and key encoders on the mixed views, then the loss.
    def loss_fn(params):
        q_vars = {"params": params, "batch_stats": state.batch_stats}
        q_out, q_new = model.apply(
            q_vars,
            mq.images,
            True,
            mq.partner,
            mq.ratios,
            method=model.query,
            mutable=["batch_stats"],
        )
        k_vars = keys.variables(state, params, q_new["batch_stats"])
        k_out, k_new = model.apply(
            k_vars,
            mk.images,
            True,
            mk.partner,
            mk.ratios,
            method=model.key,
            mutable=["batch_stats"],
        )
        inputs = losses.LossInputs(
            query=q_out["features"],
            keys=keys.features(k_out["features"]),
            logits=q_out["logits"],
            key_logits=(q_out if config.loss.key_logits_from_query else k_out)["logits"],
            labels=labels,
            targets=targets,
            queue_features=state.queue.features,
            queue_labels=state.queue.labels,
            queue_valid=state.queue.valid,
        )
        loss = losses.compute(config.loss.name, inputs, log_prior=log_prior, cfg=config.loss)
        return loss, (inputs, q_new["batch_stats"], k_new["batch_stats"])

    (loss, (inputs, q_stats, k_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )

    # (4) AdamW update, key encoder update, enqueue the keys with the primary labels.
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats, key_batch_stats = keys.batch_stats(q_stats, k_stats)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        key_params=keys.updated(state, params, momentum),
        key_batch_stats=key_batch_stats,
        queue=queue_lib.enqueue(state.queue, inputs.keys, labels),
    )
    # Finite loss and gradients can still overflow the update (a huge learning rate): the new
    # parameters are checked too, so a non-finite state is never kept (or checkpointed). The
    # gradients are checked through their global norm (also a metric): one that overflows
    # float32 counts as non-finite. Each check is one reduction over all leaves, and one
    # conditional keeps or replaces the whole state: a reduction or a select per leaf would
    # each be compiled as its own kernel, hundreds of them (benchmarks/README.md).
    grad_norm = jnp.sqrt(sum_over_leaves(grads, jnp.square))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(sum_over_leaves(params))
    new_state = jax.lax.cond(finite, lambda new, old: new, lambda new, old: old, new_state, state)
    step_metrics = TrainMetrics.single_from_model_output(
        loss=jnp.where(finite, loss, jnp.nan),
        logits=inputs.logits,
        labels=labels,
        mix_ratio_mean=mq.share_mean,
        learning_rate=learning_rate,
        grad_norm=grad_norm,
    )
    return new_state, step_metrics


def eval_logits(
    variables: dict[str, Any],
    batch: dict[str, jax.Array],
    *,
    config: ml_collections.ConfigDict,
    model: nn.Module,
) -> jax.Array:
    """float32 logits of the evaluation view (no mixing, no prior; BatchNorm in inference mode)."""
    settings = augment.ViewSettings.from_config(config.augment)
    images = augment.eval_view(batch["image"], out_size=config.model.image_size, settings=settings)
    logits: jax.Array = model.apply(variables, images, method=model.logits)  # type: ignore[assignment]
    return logits
