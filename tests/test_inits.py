"""From-scratch init (`model.init`): the moments and bounds of timm's and PyTorch's distributions.

timm's `trunc_normal_(std=0.02)` cuts at the absolute bounds -2 and 2, i.e. 100 std out, so its
values are those of a plain normal: about 4.55% lie beyond 2 std (Flax's `truncated_normal`
would leave none). PyTorch's default Linear / Conv2d draws weights and biases from
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), whose std is that bound / sqrt(3).
"""

from __future__ import annotations

import math
import pathlib

import jax
import numpy as np
import pytest

from configs import tiny
from spmix_jax.models import inits, make_model

P_BEYOND_2SD = math.erfc(2 / math.sqrt(2))  # 0.0455 for a normal


def _params(init: str):
    config = tiny.get_config()
    config.model.variant = "nano/8"
    config.model.image_size = 32
    config.model.proj_hidden = 64
    config.model.init = init
    net = make_model(config)
    images = np.zeros((2, 32, 32, 3), np.float32)
    return jax.device_get(net.init(jax.random.PRNGKey(0), images, train=True)["params"])


@pytest.fixture(scope="module")
def timm_params():
    return _params("timm")


def _normal_0_02(x: np.ndarray) -> None:
    x = np.asarray(x, np.float64).ravel()
    assert abs(x.mean()) < 5 * 0.02 / math.sqrt(x.size)
    assert x.std() == pytest.approx(0.02, rel=0.05)
    beyond = np.mean(np.abs(x) > 0.04)  # not cut at 2 std, as a Flax truncated normal would be
    assert beyond == pytest.approx(P_BEYOND_2SD, abs=5 * math.sqrt(P_BEYOND_2SD / x.size))
    assert np.abs(x).max() <= 2.0


def _uniform(x: np.ndarray, fan_in: int) -> None:
    x = np.asarray(x, np.float64).ravel()
    bound = 1 / math.sqrt(fan_in)
    assert np.abs(x).max() <= bound
    assert np.abs(x).max() > 0.9 * bound if x.size >= 50 else np.abs(x).max() > 0.3 * bound
    assert x.std() == pytest.approx(bound / math.sqrt(3), rel=0.25 if x.size < 500 else 0.05)


def test_timm_vit_kernels_and_position_embedding_are_timm_trunc_normal(timm_params):
    vit = timm_params["backbone"]
    _normal_0_02(vit["pos_embedding"])
    kernels = [
        np.asarray(vit[f"block{i}"][part][name]["kernel"]).ravel()
        for i in range(4)
        for part, names in (("mlp", ("fc1", "fc2")), ("attn", ("query", "key", "value", "out")))
        for name in names
    ]
    _normal_0_02(np.concatenate(kernels))
    for i in range(4):
        block = vit[f"block{i}"]
        for name in ("fc1", "fc2"):
            assert not np.any(block["mlp"][name]["bias"])
        for name in ("query", "key", "value", "out"):
            assert not np.any(block["attn"][name]["bias"])


def test_timm_cls_token_is_normal_1e_6(timm_params):
    cls = np.asarray(timm_params["backbone"]["cls"], np.float64).ravel()
    assert cls.std() == pytest.approx(1e-6, rel=0.3)
    assert np.abs(cls).max() < 1e-5


def test_timm_patch_embedding_and_heads_are_pytorch_default(timm_params):
    embed = timm_params["backbone"]["embedding"]
    _uniform(embed["kernel"], 8 * 8 * 3)
    _uniform(embed["bias"], 8 * 8 * 3)
    head = timm_params["classifier"]
    _uniform(head["kernel"], 96)
    _uniform(head["bias"], 96)
    _uniform(timm_params["projector"]["fc0"]["kernel"], 96)
    _uniform(timm_params["projector"]["fc1"]["kernel"], 64)
    _uniform(timm_params["predictor"]["fc0"]["kernel"], 8)


def test_xavier_keeps_the_jax_vit_init():
    p = _params("xavier")
    vit = p["backbone"]
    assert not np.any(vit["cls"])
    assert not np.any(p["classifier"]["bias"]) and not np.any(vit["embedding"]["bias"])
    fc1 = np.asarray(vit["block0"]["mlp"]["fc1"]["kernel"])
    bound = math.sqrt(6 / (96 + 384))  # xavier-uniform
    assert np.abs(fc1).max() <= bound and fc1.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    pos = np.asarray(vit["pos_embedding"], np.float64)
    assert pos.std() == pytest.approx(0.02, rel=0.05)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="model.init"):
        inits.scheme("kaiming")


def test_a_pretrained_start_is_the_same_under_either_scheme():
    """The scheme decides only what the file does not hold: here the heads, not the backbone."""
    from spmix_jax import pretrained

    file = pathlib.Path(__file__).parent / "fixtures" / "pretrained" / "vit_mu8.safetensors"
    loaded = {}
    for name in inits.INITS:
        config = tiny.get_config()
        config.model.image_size = 32
        config.model.init_from = str(file)
        config.model.init = name
        loaded[name] = pretrained.init_variables(config, jax.random.PRNGKey(0))["params"]
    timm, xavier = loaded["timm"], loaded["xavier"]
    jax.tree.map(np.testing.assert_array_equal, timm["backbone"], xavier["backbone"])
    assert not np.array_equal(timm["classifier"]["bias"], xavier["classifier"]["bias"])
