"""Pretrained starts: every layout gives timm's features, bad files fail loudly, heads stay fresh.

The fixtures under tests/fixtures/pretrained/ were written by tools/make_reference_checkpoints.py
with timm (random weights and BatchNorm statistics); expected.npz holds timm's features.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

from configs import common, tiny
from spmix_jax import checkpointing, optimizer, pretrained, sharding, train
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.models import make_model
from spmix_jax.models.resnet import ResNetTrunk, avg_pool_ceil

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
EXPECTED = dict(np.load(FIXTURES / "expected.npz"))


def _config(variant: str = "mu/8", size: int = 32, init: str = "", heads: bool = False):
    c = common.base_config()
    c.data.num_classes = 7
    c.model.variant = variant
    c.model.image_size = size
    c.model.proj_hidden = 16
    c.model.proj_dim = 8
    c.model.init_from = init
    c.model.init_heads = heads
    c.loss.queue_size = 16
    return c


_FRESH: dict = {}


def _fresh(variant: str, size: int) -> dict:
    """Stand-in initial variables: the model's shapes filled with random numbers.

    Tracing shapes is much cheaper than compiling `init`; `load_into` only needs the tree.
    `init_variables` itself is checked once below.
    """
    if (variant, size) not in _FRESH:
        model = pretrained.make_model(_config(variant, size))
        images = jnp.zeros((2, size, size, 3))
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images, train=True))
        rng = np.random.default_rng(0)
        _FRESH[variant, size] = jax.tree.map(
            lambda s: rng.standard_normal(s.shape).astype(s.dtype),
            {"params": shapes["params"], "batch_stats": shapes["batch_stats"]},
        )
    return _FRESH[variant, size]


def _load(variant: str, size: int, init: str | pathlib.Path, heads: bool = False) -> dict:
    return pretrained.load_into(_config(variant, size, str(init), heads), _fresh(variant, size))


def _rel(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


@pytest.mark.parametrize(
    ("variant", "size", "file", "inputs", "expected"),
    [
        ("mu/8", 32, "vit_mu8.safetensors", "x32", "vit_mu8"),
        ("mu/8", 32, "vit_mu8.npz", "x32", "vit_mu8"),
        ("mu/8", 32, "vit_mu8_bv.npz", "x32", "vit_mu8_bv"),
        ("mu/8", 32, "vit_mu8_bv_scan.npz", "x32", "vit_mu8_bv"),
        # timm's .npz reader resampled the 4x4 position grid to 6x6 (bilinear, as we do).
        ("mu/8", 48, "vit_mu8.npz", "x48", "vit_mu8_at48"),
        ("Rmu+mu/16", 64, "hybrid_rmu.safetensors", "x64", "hybrid_rmu"),
    ],
)
def test_features_equal_timm(variant, size, file, inputs, expected, capsys):
    config = _config(variant, size, str(FIXTURES / file))
    variables = pretrained.load_into(config, _fresh(variant, size))
    line = capsys.readouterr().out
    assert line.startswith(f"pretrained: {FIXTURES / file} [") and "loaded" in line
    assert "left at init" in line and "ignored" in line
    got = pretrained.backbone_features(config, variables, EXPECTED[inputs])
    assert got.dtype == jnp.float32 and got.shape == EXPECTED[expected].shape
    assert _rel(got, EXPECTED[expected]) < 1e-4


def test_bare_resnet_fills_the_trunk_only(capsys):
    file = FIXTURES / "resnet_rmu.safetensors"
    fresh = _fresh("Rmu+mu/16", 64)
    variables = _load("Rmu+mu/16", 64, file)
    line = capsys.readouterr().out
    assert "[timm resnet50d]" in line and "layer4 (" in line and "fc (2)" in line
    sd = safetensors.numpy.load_file(str(file))
    trunk = variables["params"]["backbone"]["trunk"]
    np.testing.assert_array_equal(
        trunk["stem_conv1"]["kernel"], sd["conv1.0.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["backbone"]["trunk"]["layer2_0"]["down_bn"]["var"],
        sd["layer2.0.downsample.2.running_var"],
    )
    # The ViT on top stays at its initial values.
    for name in ("embedding", "cls", "pos_embedding", "block0", "encoder_norm"):
        jax.tree.map(
            np.testing.assert_array_equal,
            variables["params"]["backbone"][name],
            fresh["params"]["backbone"][name],
        )
    # The trunk's output is timm's layer3 output (BatchNorm on running statistics).
    out = ResNetTrunk("Rmu").apply(
        {
            "params": variables["params"]["backbone"]["trunk"],
            "batch_stats": variables["batch_stats"]["backbone"]["trunk"],
        },
        EXPECTED["x64"],
        False,
    )
    assert _rel(out, EXPECTED["resnet_rmu_layer3"]) < 1e-4


def test_loaded_leaves_equal_the_file_and_heads_are_fresh():
    file = FIXTURES / "vit_mu8.safetensors"
    config = _config("mu/8", 32, str(file))
    variables = pretrained.init_variables(config, jax.random.PRNGKey(0))
    fresh = pretrained.init_variables(_config("mu/8", 32), jax.random.PRNGKey(0))
    sd = safetensors.numpy.load_file(str(file))
    bb = variables["params"]["backbone"]
    np.testing.assert_array_equal(bb["cls"], sd["cls_token"])
    np.testing.assert_array_equal(bb["pos_embedding"], sd["pos_embed"])
    q = sd["blocks.1.attn.qkv.weight"][:32].T.reshape(32, 2, 16)
    np.testing.assert_array_equal(bb["block1"]["attn"]["query"]["kernel"], q)
    v = sd["blocks.1.attn.qkv.bias"][64:].reshape(2, 16)
    np.testing.assert_array_equal(bb["block1"]["attn"]["value"]["bias"], v)
    np.testing.assert_array_equal(
        bb["block0"]["mlp"]["fc2"]["kernel"], sd["blocks.0.mlp.fc2.weight"].T
    )
    for head in ("projector", "predictor", "classifier"):
        jax.tree.map(
            np.testing.assert_array_equal, variables["params"][head], fresh["params"][head]
        )
    assert not np.array_equal(bb["cls"], fresh["params"]["backbone"]["cls"])
    # BatchNorm variables of the heads are fresh too (zeros / ones).
    np.testing.assert_array_equal(variables["batch_stats"]["projector"]["bn0"]["var"], 1.0)


def test_load_into_leaves_its_input_alone():
    fresh = _fresh("mu/8", 32)
    before = np.array(fresh["params"]["backbone"]["cls"])
    loaded = _load("mu/8", 32, FIXTURES / "vit_mu8.npz")
    assert loaded["params"]["backbone"]["cls"] is not fresh["params"]["backbone"]["cls"]
    np.testing.assert_array_equal(fresh["params"]["backbone"]["cls"], before)


def test_empty_init_from_is_random_init():
    fresh = _fresh("mu/8", 32)
    assert pretrained.load_into(_config(), fresh) is fresh


def _numpy_bilinear(grid: np.ndarray, new: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize of (g, g, D), edges clamped (align_corners=False)."""
    g = grid.shape[0]
    src = np.clip((np.arange(new) + 0.5) * g / new - 0.5, 0, g - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, g - 1)
    w = (src - lo)[:, None]
    rows = grid[lo] * (1 - w[..., None]) + grid[hi] * w[..., None]
    return rows[:, lo] * (1 - w[None]) + rows[:, hi] * w[None]


@pytest.mark.parametrize(("old", "new"), [(4, 6), (4, 7), (6, 4)])
def test_position_grid_resampling(old, new):
    rng = np.random.default_rng(old * 10 + new)
    pos = rng.standard_normal((1, 1 + old * old, 5)).astype(np.float32)
    out = pretrained.resample_pos_embedding(pos, 1 + new * new)
    assert out.shape == (1, 1 + new * new, 5)
    np.testing.assert_array_equal(out[0, 0], pos[0, 0])  # CLS row kept
    want = _numpy_bilinear(pos[0, 1:].reshape(old, old, 5), new).reshape(new * new, 5)
    np.testing.assert_allclose(out[0, 1:], want, atol=1e-6)
    if new > old:  # upsampling: also jax.image's own bilinear resize
        ref = jax.image.resize(pos[0, 1:].reshape(old, old, 5), (new, new, 5), "bilinear")
        np.testing.assert_allclose(out[0, 1:], np.asarray(ref).reshape(-1, 5), atol=1e-6)


def test_shape_mismatch_names_file_parameter_and_shapes():
    file = str(FIXTURES / "vit_mu8.safetensors")
    with pytest.raises(ValueError) as e:
        _load("nano/8", 32, file)
    msg = str(e.value)
    assert file in msg and "shape mismatch" in msg and "backbone/" in msg
    assert "(96," in msg or ", 96)" in msg  # the model's shape (width 96) ...
    assert "32" in msg  # ... and the file's (width 32)
    # The file's tensors are read in sorted order (safetensors' own order changes from one
    # process to the next), so the mismatch reported is always the same one.
    assert "params/backbone/block0/attn/out/bias (from blocks.0.attn.proj.bias)" in msg


def test_truncated_files_name_the_file(tmp_path):
    for name in ("vit_mu8.safetensors", "vit_mu8.npz"):
        data = (FIXTURES / name).read_bytes()
        bad = tmp_path / name
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=str(bad)):
            _load("mu/8", 32, bad)


def test_unknown_layouts_list_the_known_ones(tmp_path):
    odd_npz = tmp_path / "weights.npz"
    np.savez(odd_npz, **{"encoder/w": np.zeros(3, np.float32)})
    odd_st = tmp_path / "weights.safetensors"
    safetensors.numpy.save_file({"foo.weight": np.zeros(3, np.float32)}, str(odd_st))
    odd_ext = tmp_path / "weights.pt"
    odd_ext.write_bytes(b"0" * 10)
    odd_dir = tmp_path / "not_a_workdir"
    odd_dir.mkdir()
    for bad in (odd_npz, odd_st, odd_ext, odd_dir):
        with pytest.raises(ValueError) as e:
            _load("mu/8", 32, bad)
        msg = str(e.value)
        assert str(bad) in msg
        for layout in pretrained.LAYOUTS.values():
            assert layout in msg


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.safetensors"):
        _load("mu/8", 32, tmp_path / "nothing_here.safetensors")


def test_trunk_into_plain_vit_and_heads_from_timm_are_refused():
    with pytest.raises(ValueError, match="hybrid variant"):
        _load("mu/8", 32, FIXTURES / "resnet_rmu.safetensors")
    with pytest.raises(ValueError, match="init_heads"):
        _load("mu/8", 32, FIXTURES / "vit_mu8.safetensors", heads=True)


def test_project_checkpoint_backbone_and_optionally_heads(tmp_path, capsys):
    donor = pretrained.init_variables(_config(), jax.random.PRNGKey(7))
    state = {"step": np.int32(3), "params": donor["params"], "batch_stats": donor["batch_stats"]}
    checkpointing.save(checkpointing.latest_manager(str(tmp_path)), 3, state)
    fresh = _fresh("mu/8", 32)
    loaded = _load("mu/8", 32, tmp_path)
    assert "[checkpoint]" in capsys.readouterr().out
    jax.tree.map(
        np.testing.assert_array_equal, loaded["params"]["backbone"], donor["params"]["backbone"]
    )
    jax.tree.map(
        np.testing.assert_array_equal, loaded["params"]["classifier"], fresh["params"]["classifier"]
    )
    with_heads = _load("mu/8", 32, tmp_path, heads=True)
    jax.tree.map(np.testing.assert_array_equal, with_heads["params"], donor["params"])
    jax.tree.map(np.testing.assert_array_equal, with_heads["batch_stats"], donor["batch_stats"])


@pytest.mark.slow  # compiles the hybrid train step (about a minute on 2 cores)
def test_one_training_step_from_a_loaded_hybrid_start():
    """The train state starts from the file (key encoder a copy); one step trains the trunk."""
    config = tiny.get_config()
    config.model.variant = "Rmu+mu/16"
    config.model.image_size = 32  # the fixture's 4x4 position grid is resampled to 2x2
    config.model.init_from = str(FIXTURES / "hybrid_rmu.safetensors")
    config.optim.warmup_epochs = 0.0
    num_train = config.data.synthetic.num_train
    mesh, model = sharding.make_mesh(), make_model(config)
    tx = optimizer.make_optimizer(config, num_train)
    state = state_lib.create(config, model, tx, mesh, jax.random.PRNGKey(0))
    sd = safetensors.numpy.load_file(str(FIXTURES / "hybrid_rmu.safetensors"))
    trunk = state.params["backbone"]["trunk"]
    np.testing.assert_array_equal(
        trunk["stem_conv1"]["kernel"],
        sd["patch_embed.backbone.conv1.0.weight"].transpose(2, 3, 1, 0),
    )
    jax.tree.map(np.testing.assert_array_equal, state.key_params, state.params)
    jax.tree.map(np.testing.assert_array_equal, state.key_batch_stats, state.batch_stats)
    before = jax.tree.map(np.array, jax.device_get(state))

    shardings = jax.tree.map(lambda x: x.sharding, state)
    log_prior = np.log(np.full(7, 1 / 7, np.float32))
    step = train.jit_train_step(config, model, tx, log_prior, num_train, shardings, mesh)
    rng = np.random.default_rng(0)
    host = {
        f"{who}_image": rng.integers(0, 256, (16, 40, 40, 3), dtype=np.uint8)
        for who in ("primary", "secondary")
    }
    host |= {
        f"{who}_label": rng.integers(0, 7, 16).astype(np.int32) for who in ("primary", "secondary")
    }
    host |= {f"{who}_index": np.arange(16, dtype=np.int32) for who in ("primary", "secondary")}
    new, metrics = step(state, sharding.global_batch(host, mesh))
    assert np.isfinite(step_lib.metrics_to_host(metrics)["loss"])
    after = jax.device_get(new)
    for path in (("stem_conv1", "kernel"), ("layer3_0", "conv3", "kernel")):
        old, cur = before.params["backbone"]["trunk"], after.params["backbone"]["trunk"]
        for key in path:
            old, cur = old[key], cur[key]
        assert not np.array_equal(old, cur), path  # gradients reach the trunk
    old_bn = before.batch_stats["backbone"]["trunk"]["stem_bn1"]["mean"]
    assert not np.array_equal(old_bn, after.batch_stats["backbone"]["trunk"]["stem_bn1"]["mean"])


def test_hybrid_trunk_batchnorm_train_and_inference():
    """train=True normalises with batch statistics and updates the running averages."""
    config = _config("Rmu+mu/16", 64, str(FIXTURES / "hybrid_rmu.safetensors"))
    variables = pretrained.load_into(config, _fresh("Rmu+mu/16", 64))
    model = pretrained.make_model(config)
    images = jnp.asarray(EXPECTED["x64"])
    tokens_train, new = model.apply(
        variables, images, True, method="embed", mutable=["batch_stats"]
    )
    tokens_eval = model.apply(variables, images, False, method="embed")
    before = variables["batch_stats"]["backbone"]["trunk"]["stem_bn1"]["mean"]
    after = new["batch_stats"]["backbone"]["trunk"]["stem_bn1"]["mean"]
    assert not np.allclose(before, after)
    assert not np.allclose(tokens_train, tokens_eval)


def test_avg_pool_ceil_matches_pytorch_semantics():
    """AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) on odd sizes, by hand."""
    x = np.random.default_rng(0).standard_normal((1, 5, 3, 2)).astype(np.float32)
    want = np.zeros((1, 3, 2, 2), np.float32)
    for i in range(3):
        for j in range(2):
            want[0, i, j] = x[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(0, 1))
    np.testing.assert_allclose(avg_pool_ceil(jnp.asarray(x), 2), want, rtol=1e-6)


def _updates(mult: float, params, grads):
    config = _config()
    config.optim.backbone_lr_mult = mult
    config.optim.total_steps = 10
    config.optim.warmup_epochs = 0.0
    tx = optimizer.make_optimizer(config, 64)
    state = tx.init(params)
    for _ in range(2):  # past the schedule's first (zero) step
        updates, state = tx.update(grads, state, params)
    return updates, config


def test_backbone_lr_mult_scales_the_backbone_only():
    params = {
        "backbone": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
        "classifier": {"kernel": jnp.ones((2, 2))},
    }
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    base, config = _updates(1.0, params, grads)
    half, _ = _updates(0.5, params, grads)
    # 1.0 adds nothing: bitwise the plain AdamW chain.
    plain = optax.chain(
        optax.adamw(
            optimizer.learning_rate_schedule(config, 64),
            weight_decay=config.optim.weight_decay,
            mask=optimizer.decay_mask,
        )
    )
    state = plain.init(params)
    for _ in range(2):
        want, state = plain.update(grads, state, params)
    jax.tree.map(np.testing.assert_array_equal, base, want)
    assert np.abs(np.asarray(base["backbone"]["w"])).max() > 0
    np.testing.assert_array_equal(half["classifier"]["kernel"], base["classifier"]["kernel"])
    np.testing.assert_allclose(half["backbone"]["w"], 0.5 * base["backbone"]["w"], rtol=1e-6)
    np.testing.assert_allclose(half["backbone"]["b"], 0.5 * base["backbone"]["b"], rtol=1e-6)
