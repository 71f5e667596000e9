"""Impossible configs are refused before any data is read or anything is compiled."""

import pytest

from configs import common, tiny
from spmix_jax.config_checks import check_augment, check_config


def test_tiny_config_is_valid():
    check_config(tiny.get_config())


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input.batch_size", 12, "not divisible by the 8 devices"),
        ("loss.queue_size", 40, "not a multiple of the batch"),
        ("mix.method", "mixupp", "mix.method"),
        ("saliency.method", "itti", "saliency.method"),
        ("model.key_encoder", "momentum", "model.key_encoder"),
        ("model.variant", "Q/16", "Unknown ViT variant"),
        ("model.image_size", 20, "not a multiple of the patch size"),
        ("mix.alpha", 0.4, "r_min <= mix.alpha"),
    ],
)
def test_refusals_name_the_field(field, value, message):
    config = tiny.get_config()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_pixel_mix_baselines_need_a_soft_label_loss():
    config = tiny.get_config()
    config.mix.method = "cutmix"
    with pytest.raises(ValueError, match="soft targets"):
        check_config(config)
    config.loss.name = "ce"
    check_config(config)


def test_parse_arg_types_and_unknown_keys():
    a = common.parse_arg(
        "steps=3,variant=B/16,full,lr=0.5", steps=1, variant="", full=False, lr=0.1
    )
    assert (a.steps, a.variant, a.full, a.lr) == (3, "B/16", True, 0.5)
    with pytest.raises(ValueError, match="Unknown config argument"):
        common.parse_arg("nope=1", steps=1)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale", (1.0, 0.08), r"augment.scale must be \(low, high\)"),
        ("ratio", (0.0, 1.0), "augment.ratio must be positive"),
        ("blur_sigma", (0.0, 2.0), "augment.blur_sigma must be positive"),
        ("color_jitter", (0.4, -0.1, 0.4, 0.0), "4 non-negative values"),
        ("color_jitter", (0.4, 0.4, 0.4), "4 non-negative values"),
        ("color_jitter", (0.4, 0.4, 0.4, 0.1), "hue must be 0"),
        ("randaugment_n", -1, "randaugment_n must be >= 0"),
        ("std", (0.2, 0.0, 0.2), "augment.std must be positive"),
        ("std", (0.2, 0.2), r"augment.std must have 3 values \(RGB\)"),
        ("mean", (0.5, 0.5), r"augment.mean must have 3 values \(RGB\)"),
        ("grayscale_p", 1.5, "augment.grayscale_p must be a probability"),
        ("blur_p", -0.1, "augment.blur_p must be a probability"),
        ("eval_resize_ratio", 0.9, "augment.eval_resize_ratio must be >= 1"),
    ],
)
def test_augment_refusals_name_the_field(field, value, message):
    config = tiny.get_config()
    config.augment[field] = value
    with pytest.raises(ValueError, match=message):
        check_augment(config.augment)
    with pytest.raises(ValueError, match=message):
        check_config(config)


def test_default_augment_settings_are_valid():
    check_augment(common.base_config().augment)
