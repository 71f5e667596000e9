"""Optimizer and learning-rate schedule (docs/method.md section 9): AdamW, warmup + cosine.

`optim.backbone_lr_mult` scales the backbone's steps (parameters under `backbone`) against the
heads', e.g. below 1 to fine-tune a pretrained backbone gently; at 1.0 nothing is added.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

# optim.schedule: 'per_step' (warmup from 0 and cosine, stepped every step) or 'released' (the
# released code's: set once per epoch, warmup starting at lr / warmup_epochs).
SCHEDULES = ("per_step", "released")


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    return max(1, num_train // config.input.batch_size)


def eval_every_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """Steps between evaluations: `train.eval_every_epochs` epochs when set, else `eval_every`."""
    if config.train.get("eval_every_epochs", 0.0) > 0:
        return max(
            1, int(round(config.train.eval_every_epochs * steps_per_epoch(config, num_train)))
        )
    return int(config.train.eval_every)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """`optim.total_steps` when set, else `optim.epochs` worth of steps."""
    if config.optim.total_steps > 0:
        return int(config.optim.total_steps)
    return max(1, int(round(config.optim.epochs * steps_per_epoch(config, num_train))))


def released_schedule(peak: float, warmup_epochs: float, epochs: float, per_epoch: int):
    """The released code's schedule, constant within an epoch e (counted from 0).

    Warmup: peak * (e + 1) / W for e < W (so it starts at peak / W); then
    peak * (1 + cos(pi * (e - W + 1) / (E - W))) / 2, which reaches 0 in the last epoch.
    """
    w, e_total = float(warmup_epochs), float(epochs)
    span = max(e_total - w, 1e-9)

    def schedule(step: Any) -> jax.Array:
        epoch = jnp.floor(jnp.asarray(step, jnp.float32) / per_epoch)
        warm = peak * (epoch + 1.0) / max(w, 1e-9)
        cosine = peak * 0.5 * (1.0 + jnp.cos(math.pi * (epoch - w + 1.0) / span))
        return jnp.where(epoch < w, warm, jnp.maximum(cosine, 0.0))

    return schedule


def peak_lr(config: ml_collections.ConfigDict) -> float:
    """base_lr * batch / base_batch: the rate set at `optim.base_batch`, scaled linearly."""
    return config.optim.base_lr * config.input.batch_size / config.optim.base_batch


def scaling_note(config: ml_collections.ConfigDict) -> str | None:
    """One line saying that the run's batch differs from the recipe's and how the rate follows."""
    batch, base = config.input.batch_size, config.optim.base_batch
    if batch == base:
        return None
    groups = config.model.bn_group_size
    bn = f"BatchNorm over groups of {groups}" if groups else "BatchNorm over the whole batch"
    return (
        f"Batch {batch}, not optim.base_batch={base}: learning rate scaled linearly to "
        f"{peak_lr(config):.3g} (optim.base_lr={config.optim.base_lr:g} x {batch} / {base}); "
        f"{bn}."
    )


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int) -> optax.Schedule:
    """Linear warmup then cosine to 0; peak lr = base_lr * batch / base_batch (linear scaling).

    `optim.schedule='per_step'` steps it every step from 0; 'released' sets it once per epoch
    as the released code does (`released_schedule`).
    """
    peak = peak_lr(config)
    total = total_steps(config, num_train)
    if config.optim.get("schedule", "per_step") == "released":
        per_epoch = steps_per_epoch(config, num_train)
        return released_schedule(peak, config.optim.warmup_epochs, total / per_epoch, per_epoch)
    warmup = int(round(config.optim.warmup_epochs * steps_per_epoch(config, num_train)))
    warmup = min(warmup, total - 1) if total > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only (not biases, norms, CLS or position tokens).

    `optim.decay_all=True` drops this mask: the released code decays every parameter.
    """

    def keep(path, leaf) -> bool:
        names = {getattr(p, "key", str(p)) for p in path}
        return leaf.ndim > 1 and not names & {"cls", "pos_embedding"}

    return jax.tree_util.tree_map_with_path(keep, params)


def backbone_mask(params: Any) -> Any:
    """True for the leaves under the top-level `backbone` (the ViT and any ResNet trunk)."""

    def under_backbone(path, leaf) -> bool:
        del leaf
        return bool(path) and getattr(path[0], "key", None) == "backbone"

    return jax.tree_util.tree_map_with_path(under_backbone, params)


def make_optimizer(
    config: ml_collections.ConfigDict, num_train: int
) -> optax.GradientTransformation:
    """Optional global-norm clipping, AdamW on the schedule above, then the backbone multiplier.

    The multiplier scales AdamW's whole backbone step (its learning rate, decoupled weight decay
    included), leaving the heads at the base rate; at 1.0 the chain is exactly AdamW's.
    """
    parts = []
    if config.optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(
        optax.adamw(
            learning_rate_schedule(config, num_train),
            weight_decay=config.optim.weight_decay,
            mask=None if config.optim.get("decay_all", False) else decay_mask,
        )
    )
    mult = float(config.optim.get("backbone_lr_mult", 1.0))
    if mult != 1.0:
        parts.append(optax.masked(optax.scale(mult), backbone_mask))
    return optax.chain(*parts)
