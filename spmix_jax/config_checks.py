"""Refuses configs that cannot work, before any data is read or anything is compiled."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence

import ml_collections

from input_pipeline import sampling, sources
from spmix_jax import (
    ema,
    key_encoder,
    losses,
    mixing,
    optimizer,
    saliency,
    saliency_source,
    sharding,
)
from spmix_jax import queue as queue_lib
from spmix_jax.errors import UserError
from spmix_jax.models import decode_variant, inits
from spmix_jax.models.spmix_net import COMPUTE_DTYPES

# Valid values of each switch, taken from the module that implements it.
CHOICES = {
    "data.name": sources.DATASET_NAMES,
    "model.key_encoder": tuple(key_encoder.MODES),
    "model.ema_schedule": ema.MOMENTUM_SCHEDULES,
    "model.dtype": tuple(COMPUTE_DTYPES),
    "model.init": inits.INITS,
    "saliency.method": saliency.METHODS,
    "saliency.score": saliency.SCORES,
    "saliency.source": saliency_source.SOURCES,
    "saliency.fill": saliency_source.FILLS,
    "mix.method": tuple(mixing.MIXERS),
    "mix.primary": sampling.PRIMARY_CHOICES,
    "mix.ratio": mixing.RATIO_MODES,
    "loss.name": tuple(losses.LOSSES),
    "loss.queue_init": queue_lib.QUEUE_INIT_MODES,
    "optim.schedule": optimizer.SCHEDULES,
}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def check_config(config: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Raises UserError (a ValueError) naming the field and what to change; None when all is well.

    The checks below, and the modules they call, raise ValueError; every one of them is a
    config the user can fix, so it reaches the user as a UserError (one message, no traceback).
    """
    try:
        _check_config(config, num_devices=num_devices)
    except UserError:
        raise
    except ValueError as error:
        raise UserError(f"Invalid config: {error}") from error


def _check_config(config: ml_collections.ConfigDict, *, num_devices: int | None) -> None:
    check_ranges(config)
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
    check_no_upsampling(config.data, config.model)
    if not config.data.get("image_aspect", 1.0) >= 1.0:
        raise ValueError(
            f"data.image_aspect={config.data.image_aspect} must be >= 1 (long side / short side)."
        )
    names_and_count = config.data.class_names and config.data.num_classes  # both set: must agree
    if names_and_count and len(config.data.class_names) != config.data.num_classes:
        raise ValueError(
            f"data.class_names has {len(config.data.class_names)} names but data.num_classes="
            f"{config.data.num_classes}."
        )
    if config.optim.total_steps <= 0 and config.optim.epochs <= 0:
        raise ValueError("Set optim.epochs > 0 or optim.total_steps > 0.")
    check_augment(config.augment)


def check_no_upsampling(data_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict):
    """Refuses stored images smaller than the model's input: the views would be upsampled, a
    blurrier input than the model size promises, unless `data.allow_upsample` says it is meant."""
    if data_cfg.image_size < model_cfg.image_size and not data_cfg.get("allow_upsample", False):
        raise ValueError(
            f"data.image_size={data_cfg.image_size} is below model.image_size="
            f"{model_cfg.image_size}: every view would be upsampled. Set data.image_size >= "
            f"{model_cfg.image_size} (and rebuild the data at that size if it is stored smaller), "
            "or pass --config.data.allow_upsample=True if upsampling is meant."
        )


# Fields whose value must lie in a range; anything else cannot be meant (a zero interval would
# divide by zero in the loop, a zero learning rate trains nothing, no kept checkpoint resumes
# nothing). (field, lowest, highest, lowest allowed itself).
RANGES: tuple[tuple[str, float, float, bool], ...] = (
    ("seed", 0, 2**32 - 1, True),  # numpy and grain seeds are unsigned 32-bit
    ("optim.base_lr", 0.0, math.inf, False),
    ("optim.base_batch", 1, math.inf, True),
    ("optim.total_steps", 0, math.inf, True),
    ("optim.epochs", 0.0, math.inf, True),
    ("optim.warmup_epochs", 0.0, math.inf, True),
    ("optim.weight_decay", 0.0, math.inf, True),
    ("optim.grad_clip", 0.0, math.inf, True),
    ("train.log_every", 1, math.inf, True),
    ("train.eval_every", 1, math.inf, True),
    ("train.eval_every_epochs", 0.0, math.inf, True),
    ("train.checkpoint_every", 1, math.inf, True),
    ("train.keep_checkpoints", 1, math.inf, True),
    ("train.max_steps_per_run", 0, math.inf, True),
    ("input.batch_size", 1, math.inf, True),
    ("input.eval_batch_size", 1, math.inf, True),
    ("input.worker_count", 0, math.inf, True),
    ("input.balanced_q", 0.0, math.inf, True),
    ("model.ema_momentum", 0.0, 1.0, True),
    ("mix.noise", 0.0, math.inf, True),
    ("loss.temperature", 0.0, math.inf, False),
    ("loss.queue_size", 0, math.inf, True),
    ("eval.few_threshold", 0, math.inf, True),
)


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """Refuses numbers outside `RANGES` (and NaN), naming the field and the allowed range."""
    for field, low, high, low_ok in RANGES:
        value = _get(config, field)
        ok = (value >= low if low_ok else value > low) and value <= high
        if not ok or value != value:  # NaN compares unequal to itself
            bound = f"{'>=' if low_ok else '>'} {low}" + (
                f" and <= {high}" if high < math.inf else ""
            )
            raise ValueError(f"config.{field}={value!r} must be {bound}.")
    if config.eval.few_threshold > config.eval.many_threshold:
        raise ValueError(
            f"config.eval.few_threshold={config.eval.few_threshold} exceeds "
            f"eval.many_threshold={config.eval.many_threshold}."
        )


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


def unknown_override(argv: Sequence[str]) -> str | None:
    """The message for a `--config.a.b=...` that names no field of the config, or None.

    absl reports such an override with a long traceback from inside ml_collections; this names
    the field and the valid names at the level where it goes wrong instead.
    """
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_config_for_message", path)
        if module_spec is None or module_spec.loader is None:
            return None
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except Exception:  # the config file itself is broken: absl's own message says how
        return None
    for item in argv:
        if not item.startswith("--config."):
            continue
        dotted = item[len("--config.") :].split("=", 1)[0]
        node, seen = config, "config"
        for part in dotted.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                names = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                return (
                    f"unknown config field config.{dotted}: {seen} has no field {part!r}; "
                    f"valid names: {', '.join(names)}"
                )
            node, seen = node[part], f"{seen}.{part}"
    return None
