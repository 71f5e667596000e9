"""The jitted, donated SPMix train step and the eval step (DESIGN "Data flow of one training step").

views -> saliency -> per-patch ratios -> patch-embed -> mix tokens -> query / key encoders ->
heads -> loss -> AdamW -> EMA key update -> enqueue. Randomness: fold_in(seed, step), no stored key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from spmix_jax import augment, ema, losses, metrics, mixing, saliency, sharding
from spmix_jax import queue as queue_lib
from spmix_jax import state as state_lib
from spmix_jax.models import SPMixNet
from spmix_jax.state import TrainState

PIXEL_MIXES = ("mixup", "cutmix", "balanced_mixup", "saliencymix")
MIX_METHODS = ("spmix", "none", *PIXEL_MIXES)
LOSSES = ("gpaco", "ce", "la_ce", "supcon")


def _normalise(view01: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    mean = jnp.asarray(cfg.mean, jnp.float32)
    std = jnp.asarray(cfg.std, jnp.float32)
    return (view01 - mean) / std


def views_and_saliency(
    rng: jax.Array,
    batch: dict[str, jax.Array],
    config: ml_collections.ConfigDict,
    score_fn: Callable[[jax.Array], jax.Array] | None,
) -> dict[str, jax.Array]:
    """Query and key views of both images, and the saliency map of each view (SPEC 3-4)."""
    size = config.model.image_size
    out = {}
    keys = jax.random.split(rng, 4)
    for i, (who, view) in enumerate(
        [("primary", "q"), ("secondary", "q"), ("primary", "k"), ("secondary", "k")]
    ):
        make = augment.query_view if view == "q" else augment.key_view
        view01, normed = make(keys[i], batch[f"{who}_image"], out_size=size, cfg=config.augment)
        out[f"{who}_{view}"] = normed
        out[f"{who}_{view}_01"] = view01
        if config.mix.method in ("spmix", "saliencymix"):
            sal = saliency.compute(
                config.saliency.method,
                view01,
                score_fn=score_fn,
                labels=batch[f"{who}_label"],
                score=config.saliency.score,
            )
            out[f"{who}_{view}_sal"] = jax.lax.stop_gradient(sal)
    return out


def _ratios(rng, views, view, config) -> jax.Array:
    patch = config.model_patch_size
    return mixing.patch_ratios(
        views[f"primary_{view}_sal"],
        views[f"secondary_{view}_sal"],
        patch_size=patch,
        alpha=config.mix.alpha,
        r_min=config.mix.r_min,
        noise=config.mix.noise,
        rng=rng,
        mode=config.mix.ratio,
    )


def _pixel_mix(rng, views, view, batch, config):
    """Pixel-level baselines: returns (mixed normalised images, lam = share of the primary)."""
    x1, x2 = views[f"primary_{view}"], views[f"secondary_{view}"]
    method, a = config.mix.method, config.mix.beta_a
    if method == "mixup":
        return mixing.mixup(rng, x1, x2, a)
    if method == "cutmix":
        return mixing.cutmix(rng, x1, x2, a)
    if method == "saliencymix":
        return mixing.saliencymix(rng, x1, x2, views[f"secondary_{view}_sal"], a)
    # balanced_mixup: lam weights the instance-sampled image.
    if config.mix.primary == "instance":
        return mixing.balanced_mixup(rng, x1, x2, a)
    mixed, lam_instance = mixing.balanced_mixup(rng, x2, x1, a)
    return mixed, 1.0 - lam_instance


def make_train_step(
    config: ml_collections.ConfigDict,
    model: SPMixNet,
    tx: optax.GradientTransformation,
    log_prior: np.ndarray,
    num_steps: int,
    lr_schedule: optax.Schedule,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Any]]:
    """Builds the (unjitted) train step for `jax.jit`; the config is closed over (static)."""
    config = ml_collections.ConfigDict(config)
    with config.unlocked():
        config.model_patch_size = int(config.model.variant.split("/")[1])
    log_prior = jnp.asarray(log_prior, jnp.float32)
    momentum_fn = ema.momentum_schedule(
        config.model.ema_momentum, num_steps, config.model.ema_schedule
    )
    shared = config.model.key_encoder == "shared"
    num_classes = config.data.num_classes
    pixel_mix = config.mix.method in PIXEL_MIXES

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
        rng_views, rng_rq, rng_rk = jax.random.split(rng, 3)
        labels = batch["primary_label"].astype(jnp.int32)
        key_vars = (
            {"params": state.params, "batch_stats": state.batch_stats}
            if shared
            else {"params": state.key_params, "batch_stats": state.key_batch_stats}
        )
        key_vars = jax.lax.stop_gradient(key_vars)

        def score_fn(view01):
            return model.apply(key_vars, _normalise(view01, config.augment), method=model.logits)

        views = views_and_saliency(rng_views, batch, config, score_fn)

        # Ratios (or pixel-mixing weights) do not depend on parameters.
        if config.mix.method == "spmix":
            r_q, r_k = _ratios(rng_rq, views, "q", config), _ratios(rng_rk, views, "k", config)
            lam_q = lam_k = None
        elif pixel_mix:
            mixed_q, lam_q = _pixel_mix(rng_rq, views, "q", batch, config)
            mixed_k, lam_k = _pixel_mix(rng_rk, views, "k", batch, config)

        def tokens_for(variables, view):
            if config.mix.method == "spmix":
                tp = model.apply(variables, views[f"primary_{view}"], method=model.embed)
                ts = model.apply(variables, views[f"secondary_{view}"], method=model.embed)
                return mixing.mix_tokens(tp, ts, r_q if view == "q" else r_k)
            image = (
                views[f"primary_{view}"] if not pixel_mix else (mixed_q if view == "q" else mixed_k)
            )
            return model.apply(variables, image, method=model.embed)

        def loss_fn(params):
            q_vars = {"params": params, "batch_stats": state.batch_stats}
            q_out, q_upd = model.apply(
                q_vars, tokens_for(q_vars, "q"), True, method=model.query, mutable=["batch_stats"]
            )
            if shared:
                k_vars = {"params": params, "batch_stats": q_upd["batch_stats"]}
            else:
                k_vars = key_vars
            k_out, k_upd = model.apply(
                k_vars, tokens_for(k_vars, "k"), True, method=model.key, mutable=["batch_stats"]
            )
            q, k = q_out["features"], k_out["features"]
            if not shared:
                k = jax.lax.stop_gradient(k)
            key_logits = q_out["logits"] if config.loss.key_logits_from_query else k_out["logits"]
            anchors = jnp.concatenate([q, k], axis=0)
            anchor_labels = jnp.concatenate([labels, labels], axis=0)
            logits = jnp.concatenate([q_out["logits"], key_logits], axis=0)
            name = config.loss.name
            if pixel_mix:
                t_q = mixing.soft_targets(labels, batch["secondary_label"], lam_q, num_classes)
                adjust = log_prior if name == "la_ce" else 0.0
                loss = losses.soft_cross_entropy(q_out["logits"] + adjust, t_q)
            elif name == "gpaco":
                loss = losses.gpaco_loss(
                    anchors,
                    anchor_labels,
                    logits,
                    state.queue.features,
                    state.queue.labels,
                    log_prior,
                    alpha=config.loss.alpha,
                    beta=config.loss.beta,
                    gamma=config.loss.gamma,
                    temperature=config.loss.temperature,
                    queue_mask=state.queue.valid,
                )
            elif name == "ce":
                loss = losses.cross_entropy(q_out["logits"], labels)
            elif name == "la_ce":
                loss = losses.logit_adjusted_cross_entropy(q_out["logits"], labels, log_prior)
            else:  # supcon: contrastive term plus cross-entropy on the classifier
                loss = losses.supcon_loss(
                    anchors,
                    anchor_labels,
                    temperature=config.loss.temperature,
                    queue_features=state.queue.features,
                    queue_labels=state.queue.labels,
                    queue_mask=state.queue.valid,
                ) + losses.cross_entropy(q_out["logits"], labels)
            new_bs = k_upd["batch_stats"] if shared else q_upd["batch_stats"]
            aux = {
                "logits": q_out["logits"],
                "keys": k,
                "batch_stats": new_bs,
                "key_batch_stats": None if shared else k_upd["batch_stats"],
            }
            return loss, aux

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if shared:
            key_params, key_batch_stats = None, None
        else:
            key_params = ema.ema_update(state.key_params, params, momentum_fn(state.step))
            key_batch_stats = aux["key_batch_stats"]
        new_queue = queue_lib.enqueue(state.queue, aux["keys"], labels)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            batch_stats=aux["batch_stats"],
            opt_state=opt_state,
            key_params=key_params,
            key_batch_stats=key_batch_stats,
            queue=new_queue,
        )
        # A non-finite loss never reaches the state: the last good state is kept and the loop
        # stops when it sees the NaN in the metrics.
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])
        )
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
        if config.mix.method == "spmix":
            ratio_mean = r_q.mean()
        elif pixel_mix:
            ratio_mean = lam_q.mean()
        else:
            ratio_mean = jnp.ones((), jnp.float32)
        step_metrics = metrics.TrainMetrics.single_from_model_output(
            loss=jnp.where(finite, loss, jnp.nan),
            logits=aux["logits"],
            labels=labels,
            mix_ratio_mean=ratio_mean,
            learning_rate=lr_schedule(state.step),
        )
        return new_state, step_metrics

    return step_fn


def make_eval_step(
    config: ml_collections.ConfigDict, model: SPMixNet
) -> Callable[[Any, dict[str, jax.Array]], jax.Array]:
    """(params, batch) -> float32 logits of the evaluation view (no mixing, no prior)."""
    size = config.model.image_size

    def eval_fn(params, batch):
        images = augment.eval_view(batch["image"], out_size=size, cfg=config.augment)
        return model.apply({"params": params}, images, method=model.logits)

    return eval_fn


def jit_train_step(step_fn, state_shardings, batch_sharding):
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


@dataclasses.dataclass
class TrainSetup:
    """What the loop needs around the step, built one way for training, tests and benchmarks."""

    mesh: Mesh
    model: SPMixNet
    tx: optax.GradientTransformation
    num_steps: int
    abstract_state: TrainState  # ShapeDtypeStructs carrying the target shardings
    shardings: Any
    log_prior: np.ndarray
    lr_schedule: optax.Schedule
    train_step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Any]]
    eval_step: Callable[[Any, dict[str, jax.Array]], jax.Array]

    def init_state(self, config: ml_collections.ConfigDict) -> TrainState:
        return state_lib.create_train_state(
            config, self.model, self.tx, self.mesh, jax.random.PRNGKey(config.seed)
        )


def build(
    config: ml_collections.ConfigDict,
    class_counts: np.ndarray,
    num_train: int,
    *,
    mesh: Mesh | None = None,
    log_prior: np.ndarray | None = None,
) -> TrainSetup:
    """Model, optimizer, state layout and the jitted, donated train step and eval step.

    The loss prior follows the labels the loss sees (SPEC 8) unless `log_prior` is given.
    """
    mesh = sharding.make_mesh() if mesh is None else mesh
    model = state_lib.make_model(config)
    tx = state_lib.make_optimizer(config, num_train)
    num_steps = state_lib.total_steps(config, num_train)
    abstract = state_lib.abstract_train_state(config, model, tx, mesh)
    shardings = jax.tree.map(lambda s: s.sharding, abstract)
    if log_prior is None:
        log_prior = losses.class_log_prior(
            class_counts, primary=config.mix.primary, balanced_q=config.input.balanced_q
        )
    lr_schedule = state_lib.learning_rate_schedule(config, num_train)
    train_step = jit_train_step(
        make_train_step(config, model, tx, log_prior, num_steps, lr_schedule),
        shardings,
        sharding.data_sharding(mesh),
    )
    eval_step = jax.jit(make_eval_step(config, model))
    return TrainSetup(
        mesh,
        model,
        tx,
        num_steps,
        abstract,
        shardings,
        log_prior,
        lr_schedule,
        train_step,
        eval_step,
    )
