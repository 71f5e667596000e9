"""Refuses configs that cannot work, before any data is read or anything is compiled."""

from __future__ import annotations

import ml_collections

from spmix_jax import queue as queue_lib
from spmix_jax import saliency, sharding
from spmix_jax.models import decode_variant

CHOICES = {
    "data.name": ("synthetic", "folder_csv", "isic2018", "tfds"),
    "model.key_encoder": ("ema", "shared"),
    "model.ema_schedule": ("constant", "cosine"),
    "model.dtype": ("float32", "bfloat16"),
    "saliency.method": tuple(saliency.METHODS),
    "saliency.score": ("label", "top"),
    "mix.method": ("spmix", "none", "mixup", "cutmix", "balanced_mixup", "saliencymix"),
    "mix.primary": ("balanced", "instance"),
    "mix.ratio": ("patch", "global", "random"),
    "loss.name": ("gpaco", "ce", "la_ce", "supcon"),
    "loss.queue_init": ("random", "empty"),
}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises ValueError naming the field and what to change; returns None when all is well."""
    for field, valid in CHOICES.items():
        value = _get(config, field)
        if value not in valid:
            raise ValueError(f"config.{field}={value!r} is not one of {valid}.")
    spec = decode_variant(config.model.variant)
    if config.model.image_size % spec.patch_size:
        raise ValueError(
            f"model.image_size={config.model.image_size} is not a multiple of the patch size "
            f"{spec.patch_size} of model.variant={config.model.variant!r}."
        )
    batch = config.input.batch_size
    if num_devices is None:
        sharding.check_batch_divisible(batch, "input.batch_size")
        sharding.check_batch_divisible(config.input.eval_batch_size, "input.eval_batch_size")
    else:
        for name, b in (
            ("input.batch_size", batch),
            ("input.eval_batch_size", config.input.eval_batch_size),
        ):
            if b % num_devices:
                raise ValueError(
                    f"{name}={b} is not divisible by the {num_devices} devices; use a multiple "
                    f"of {num_devices}."
                )
    queue_lib.check_queue_size(config.loss.queue_size, batch)
    if config.model.bn_group_size and batch % config.model.bn_group_size:
        raise ValueError(
            f"input.batch_size={batch} is not divisible by model.bn_group_size="
            f"{config.model.bn_group_size}."
        )
    if config.mix.method in ("mixup", "cutmix", "balanced_mixup", "saliencymix") and (
        config.loss.name not in ("ce", "la_ce")
    ):
        raise ValueError(
            f"mix.method={config.mix.method!r} mixes labels (soft targets); use loss.name='ce' or "
            f"'la_ce' with it (got {config.loss.name!r})."
        )
    if not 0.0 <= config.mix.r_min <= config.mix.alpha <= 1.0:
        raise ValueError(
            f"Need 0 <= mix.r_min <= mix.alpha <= 1, got {config.mix.r_min}, {config.mix.alpha}."
        )
    if config.data.image_size < 8:
        raise ValueError(f"data.image_size={config.data.image_size} is too small.")
    if len(config.data.class_names) != config.data.num_classes:
        raise ValueError(
            f"data.class_names has {len(config.data.class_names)} names but data.num_classes="
            f"{config.data.num_classes}."
        )
    if config.optim.total_steps <= 0 and config.optim.epochs <= 0:
        raise ValueError("Set optim.epochs > 0 or optim.total_steps > 0.")
