"""Refuses configs that cannot work, before any data is read or anything is compiled."""

from __future__ import annotations

import ml_collections

from input_pipeline import sampling, sources
from spmix_jax import ema, key_encoder, losses, mixing, saliency, sharding
from spmix_jax import queue as queue_lib
from spmix_jax.models import decode_variant
from spmix_jax.models.spmix_net import COMPUTE_DTYPES

# Valid values of each switch, taken from the module that implements it.
CHOICES = {
    "data.name": sources.DATASET_NAMES,
    "model.key_encoder": tuple(key_encoder.MODES),
    "model.ema_schedule": ema.MOMENTUM_SCHEDULES,
    "model.dtype": tuple(COMPUTE_DTYPES),
    "saliency.method": saliency.METHODS,
    "saliency.score": saliency.SCORES,
    "mix.method": tuple(mixing.MIXERS),
    "mix.primary": sampling.PRIMARY_CHOICES,
    "mix.ratio": mixing.RATIO_MODES,
    "loss.name": tuple(losses.LOSSES),
    "loss.queue_init": queue_lib.QUEUE_INIT_MODES,
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
    soft_label_losses = tuple(name for name, (_, soft) in losses.LOSSES.items() if soft)
    if config.mix.method in mixing.LABEL_MIXING and config.loss.name not in soft_label_losses:
        raise ValueError(
            f"mix.method={config.mix.method!r} mixes labels (soft targets); use loss.name in "
            f"{soft_label_losses} with it (got {config.loss.name!r})."
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
    check_augment(config.augment)


def check_augment(augment_cfg: ml_collections.ConfigDict) -> None:
    """Refuses view settings the augmentations cannot honour; the views themselves trust them."""

    def values(name: str, count: int) -> tuple[float, ...]:
        value = tuple(float(v) for v in augment_cfg[name])
        if count == 2 and (len(value) != 2 or value[0] > value[1]):
            raise ValueError(f"augment.{name} must be (low, high) with low <= high, got {value}")
        if count == 3 and len(value) != 3:
            raise ValueError(f"augment.{name} must have 3 values (RGB), got {value}")
        return value

    ranges = {name: values(name, 2) for name in ("scale", "ratio", "blur_sigma")}
    for name, (low, _) in ranges.items():
        if low <= 0:
            raise ValueError(f"augment.{name} must be positive, got {ranges[name]}")
    jitter = tuple(float(v) for v in augment_cfg.color_jitter)
    if len(jitter) != 4 or min(jitter) < 0:
        raise ValueError(
            "augment.color_jitter must be 4 non-negative values (brightness, contrast, "
            f"saturation, hue), got {jitter}"
        )
    if jitter[3] != 0:
        raise ValueError(
            f"augment.color_jitter hue must be 0 (hue jitter is not implemented), got {jitter}"
        )
    ra_n = int(augment_cfg.randaugment_n)
    if ra_n < 0:
        raise ValueError(f"augment.randaugment_n must be >= 0, got {ra_n}")
    std = values("std", 3)
    if min(std) <= 0:
        raise ValueError(f"augment.std must be positive, got {std}")
    for name in ("grayscale_p", "blur_p"):
        p = float(augment_cfg[name])
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{name} must be a probability, got {p}")
    values("mean", 3)
    if float(augment_cfg.eval_resize_ratio) < 1.0:
        raise ValueError(
            f"augment.eval_resize_ratio must be >= 1, got {float(augment_cfg.eval_resize_ratio)}"
        )
