"""Optimizer and learning-rate schedule (docs/method.md section 9): AdamW, warmup + cosine.

`optim.backbone_lr_mult` scales the backbone's steps (parameters under `backbone`) against the
heads', e.g. below 1 to fine-tune a pretrained backbone gently; at 1.0 nothing is added.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax


def steps_per_epoch(config: ml_collections.ConfigDict, num_train: int) -> int:
    return max(1, num_train // config.input.batch_size)


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
    """`optim.total_steps` when set, else `optim.epochs` worth of steps."""
    if config.optim.total_steps > 0:
        return int(config.optim.total_steps)
    return max(1, int(round(config.optim.epochs * steps_per_epoch(config, num_train))))


def learning_rate_schedule(config: ml_collections.ConfigDict, num_train: int) -> optax.Schedule:
    """Linear warmup then cosine to 0; peak lr = base_lr * batch / base_batch (linear scaling)."""
    peak = config.optim.base_lr * config.input.batch_size / config.optim.base_batch
    total = total_steps(config, num_train)
    warmup = int(round(config.optim.warmup_epochs * steps_per_epoch(config, num_train)))
    warmup = min(warmup, total - 1) if total > 1 else 0
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices and kernels only (not biases, norms, CLS or position tokens)."""

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
            mask=decay_mask,
        )
    )
    mult = float(config.optim.get("backbone_lr_mult", 1.0))
    if mult != 1.0:
        parts.append(optax.masked(optax.scale(mult), backbone_mask))
    return optax.chain(*parts)
