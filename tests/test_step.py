"""The jitted, donated SPMix train step on configs/tiny.py over 8 fake CPU devices.

Each distinct config compiles the step once (module-scoped fixtures); the tests check values: the
EMA and queue updates against numpy, the reported loss against an independent recomputation from
the public view / saliency / mixing / model / loss functions, and that non-finite updates are
refused.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import tiny
from spmix_jax import augment, losses, mixing, optimizer, saliency, saliency_source, sharding, train
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.models import decode_variant, make_model

BATCH = 16
HOST_SIZE = 24
# A long-tailed prior, so the logit adjustment inside GPaCo is not a constant shift.
CLASS_COUNTS = (50, 20, 10, 6, 4, 2, 1)


@dataclasses.dataclass
class Harness:
    """One compiled step and everything needed to feed it and to recompute what it does."""

    config: ml_collections.ConfigDict
    mesh: Any
    model: Any
    tx: Any
    shardings: Any
    train_step: Any
    log_prior: np.ndarray
    lr_schedule: Any

    def new_state(self) -> state_lib.TrainState:
        rng = jax.random.PRNGKey(self.config.seed)
        return state_lib.create(self.config, self.model, self.tx, self.mesh, rng)

    def put_state(self, host_state: state_lib.TrainState) -> state_lib.TrainState:
        """A host copy of a state back onto the devices in the step's layout."""
        return jax.tree.map(
            lambda x, s: jax.device_put(np.asarray(x), s), host_state, self.shardings
        )

    def run(self, state, host_batch) -> tuple[state_lib.TrainState, dict[str, float]]:
        new_state, step_metrics = self.train_step(
            state, sharding.global_batch(host_batch, self.mesh)
        )
        return new_state, step_lib.metrics_to_host(step_metrics)


def build(config: ml_collections.ConfigDict) -> Harness:
    """Model, optimizer, shardings and jitted step, wired exactly as `train.train_and_evaluate`."""
    num_train = config.data.synthetic.num_train
    log_prior = step_lib.loss_log_prior(config, CLASS_COUNTS)  # as train.py computes it
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = optimizer.make_optimizer(config, num_train)
    shardings = jax.tree.map(lambda s: s.sharding, state_lib.create(config, model, tx, mesh))
    train_step = train.jit_train_step(config, model, tx, log_prior, num_train, shardings, mesh)
    lr_schedule = optimizer.learning_rate_schedule(config, num_train)
    return Harness(config, mesh, model, tx, shardings, train_step, log_prior, lr_schedule)


def numpy_log_prior(config: ml_collections.ConfigDict) -> np.ndarray:
    """docs/method.md section 8 in numpy: n_c / N for an instance primary, else ~ n_c^(1-q)."""
    counts = np.asarray(CLASS_COUNTS, np.float64)
    if config.mix.primary == "instance":
        weights = counts
    else:
        weights = counts ** (1.0 - config.input.balanced_q)
    return np.log(weights / weights.sum())


def make_batch(seed: int) -> dict[str, np.ndarray]:
    """A pair batch as the input pipeline delivers it: smooth uint8 blobs plus noise, int32 labels.

    Half of the secondary images are constant, so the saliency maps include flat ones.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HOST_SIZE, 0:HOST_SIZE].astype(np.float32)

    def images() -> np.ndarray:
        cy, cx = rng.uniform(4, HOST_SIZE - 4, (2, BATCH, 1, 1))
        r = rng.uniform(3, 8, (BATCH, 1, 1))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
        colour = rng.uniform(0.2, 1.0, (BATCH, 1, 1, 3))
        img = (
            40
            + 180 * blob[..., None] * colour
            + rng.normal(0, 12, (BATCH, HOST_SIZE, HOST_SIZE, 3))
        )
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    secondary = images()
    secondary[::2] = 128
    return {
        "primary_image": images(),
        "secondary_image": secondary,
        "primary_label": rng.integers(0, 7, BATCH).astype(np.int32),
        "secondary_label": rng.integers(0, 7, BATCH).astype(np.int32),
        "primary_index": np.arange(BATCH, dtype=np.int32),
        "secondary_index": np.arange(BATCH, 2 * BATCH, dtype=np.int32),
    }


def tiny_config(**overrides: Any) -> ml_collections.ConfigDict:
    """configs/tiny.py with dotted overrides, e.g. tiny_config(**{'mix.method': 'cutmix'})."""
    config = tiny.get_config()
    for dotted, value in overrides.items():
        *path, leaf = dotted.split(".")
        node = config
        for part in path:
            node = node[part]
        node[leaf] = value
    return config


def host(tree: Any) -> Any:
    """An independent numpy copy (a zero-copy view could alias a buffer the step donates)."""
    return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def assert_trees_equal(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# Default config: spmix, gpaco, EMA key encoder, fine-grained saliency.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default() -> dict[str, Any]:
    """Two steps of the default tiny config, with host copies of every state and batch."""
    h = build(tiny_config())
    batches = [make_batch(1), make_batch(2)]
    states = [h.new_state()]
    hosts = [host(states[0])]  # copied BEFORE the step donates the buffers
    reported = []
    for b in batches:
        new_state, values = h.run(states[-1], b)
        states.append(new_state)
        hosts.append(host(new_state))
        reported.append(values)
    return {
        "h": h,
        "batches": batches,
        "hosts": hosts,
        "metrics": reported,
        "state": states[-1],
        "recompute": jax.jit(functools.partial(_recompute, h, numpy_log_prior(h.config))),
    }


def test_default_prior_is_that_of_the_balanced_primary(default):
    """Balanced primary with q = 1: the loss sees uniform labels, so the prior is uniform."""
    h = default["h"]
    assert h.config.mix.primary == "balanced" and h.config.input.balanced_q == 1.0
    np.testing.assert_allclose(h.log_prior, np.full(7, -np.log(7.0)), rtol=1e-6)
    np.testing.assert_allclose(h.log_prior, numpy_log_prior(h.config), rtol=1e-6)


def test_default_step_counts_and_loss(default):
    h, hosts, reported = default["h"], default["hosts"], default["metrics"]
    assert [int(s.step) for s in hosts] == [0, 1, 2]
    for values in reported:
        assert np.isfinite(values["loss"]) and values["loss"] > 0
        assert h.config.mix.r_min <= values["mix_ratio_mean"] <= h.config.mix.alpha
        assert 0.0 <= values["accuracy"] <= 1.0
    # Warmup starts at lr 0: the first update leaves the parameters exactly as they were.
    assert [v["learning_rate"] for v in reported] == pytest.approx(
        [float(h.lr_schedule(0)), float(h.lr_schedule(1))]
    )
    assert reported[0]["learning_rate"] == 0.0 and reported[1]["learning_rate"] > 0.0
    assert_trees_equal(hosts[1].params, hosts[0].params)


def test_default_params_change_and_stay_float32(default):
    before, after = default["hosts"][1].params, default["hosts"][2].params
    leaves_b, leaves_a = jax.tree.leaves(before), jax.tree.leaves(after)
    assert all(x.dtype == np.float32 for x in leaves_a)
    changed = [not np.array_equal(a, b) for a, b in zip(leaves_a, leaves_b, strict=True)]
    assert all(changed), "every parameter leaf gets a nonzero AdamW update"
    # A single Adam step moves each weight by at most about lr (plus weight decay).
    lr = default["metrics"][1]["learning_rate"]
    for a, b in zip(leaves_a, leaves_b, strict=True):
        assert np.max(np.abs(a - b)) <= 1.5 * lr * (1 + np.max(np.abs(b)))


@pytest.mark.parametrize("index", [0, 1])
def test_default_ema_key_update(default, index):
    """key' = m key + (1 - m) params', leaf by leaf, with the step's updated params."""
    m = default["h"].config.model.ema_momentum
    before, after = default["hosts"][index], default["hosts"][index + 1]
    expected = jax.tree.map(
        lambda k, p: m * k.astype(np.float64) + (1 - m) * p.astype(np.float64),
        before.key_params,
        after.params,
    )
    assert jax.tree.structure(expected) == jax.tree.structure(after.key_params)
    for got, want in zip(jax.tree.leaves(after.key_params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    if index == 1:  # the params moved, so the key encoder lags behind them
        diffs = [
            np.max(np.abs(k - p))
            for k, p in zip(
                jax.tree.leaves(after.key_params), jax.tree.leaves(after.params), strict=True
            )
        ]
        assert max(diffs) > 0


def test_default_queue_enqueue(default):
    hosts, batches = default["hosts"], default["batches"]
    size = default["h"].config.loss.queue_size
    q0, q1, q2 = hosts[0].queue, hosts[1].queue, hosts[2].queue
    assert int(q0.ptr) == 0 and int(q1.ptr) == BATCH % size and int(q2.ptr) == (2 * BATCH) % size
    for q, q_prev, rows, batch in [
        (q1, q0, slice(0, BATCH), batches[0]),
        (q2, q1, slice(BATCH, 2 * BATCH), batches[1]),
    ]:
        np.testing.assert_allclose(np.linalg.norm(q.features[rows], axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(q.labels[rows], batch["primary_label"])
        assert not np.allclose(q.features[rows], q_prev.features[rows])
        assert q.valid.all()
    # Rows not written keep their previous contents.
    np.testing.assert_array_equal(q1.features[BATCH:], q0.features[BATCH:])
    np.testing.assert_array_equal(q1.labels[BATCH:], q0.labels[BATCH:])
    np.testing.assert_array_equal(q2.features[:BATCH], q1.features[:BATCH])


def _pair_views(make, key_a, key_b, images_a, images_b, config, maps_a=None, maps_b=None):
    """`make(key_a, images_a)` and `make(key_b, images_b)` in one call (one compile of the view).

    Each returns (view01, normed, geometry-only warp), or (view01, normed, carried map) when the
    frames' saliency maps are given.

    A single key is split into one key per example inside the view function, so passing those
    per-example keys for both halves of a concatenated batch gives the same two results.
    """
    n = images_a.shape[0]
    keys = jnp.concatenate([jax.random.split(key_a, n), jax.random.split(key_b, n)])
    images = jnp.concatenate([jnp.asarray(images_a), jnp.asarray(images_b)])
    settings = augment.ViewSettings.from_config(config.augment)
    if maps_a is None:
        out = make(
            keys, images, out_size=config.model.image_size, settings=settings, with_geometry=True
        )
    else:
        out = make(
            keys,
            images,
            out_size=config.model.image_size,
            settings=settings,
            maps=jnp.concatenate([maps_a, maps_b]),
            map_fill=saliency_source.fill_value(config.saliency.fill),
        )
    return tuple(x[:n] for x in out), tuple(x[n:] for x in out)


def _recompute(
    h: Harness, log_prior: np.ndarray, state: state_lib.TrainState, batch: dict[str, np.ndarray]
):
    """The step's forward pass rebuilt from the public functions, for an EMA-key SPMix config.

    Returns (loss, query logits, keys, query batch_stats, key batch_stats, query ratios).
    """
    config, model = h.config, h.model
    patch = decode_variant(config.model.variant).patch_size
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), state.step)
    rng_views, rng_rq, rng_rk = jax.random.split(rng, 3)
    k_pq, k_sq, k_pk, k_sk = jax.random.split(rng_views, 4)
    p_img, s_img = batch["primary_image"], batch["secondary_image"]
    # Static saliency of each whole frame, carried through every view's warp (docs/method.md
    # section 4, `saliency.source=frame`).
    p_map, s_map = (
        saliency.compute("fine_grained", jnp.asarray(x) / 255.0) for x in (p_img, s_img)
    )
    (_, pq, pq_sal), (_, sq, sq_sal) = _pair_views(
        augment.query_view, k_pq, k_sq, p_img, s_img, config, p_map, s_map
    )
    (_, pk, pk_sal), (_, sk, sk_sal) = _pair_views(
        augment.key_view, k_pk, k_sk, p_img, s_img, config, p_map, s_map
    )
    sal = [pq_sal, sq_sal, pk_sal, sk_sal]

    def ratios(sal_a, sal_b, rng_r):
        return mixing.patch_ratios(
            sal_a,
            sal_b,
            patch_size=patch,
            alpha=config.mix.alpha,
            r_min=config.mix.r_min,
            noise=config.mix.noise,
            rng=rng_r,
            mode=config.mix.ratio,
        )

    r_q, r_k = ratios(sal[0], sal[1], rng_rq), ratios(sal[2], sal[3], rng_rk)
    q_vars = {"params": state.params, "batch_stats": state.batch_stats}
    k_vars = {"params": state.key_params, "batch_stats": state.key_batch_stats}

    q_out, q_upd = model.apply(
        q_vars, pq, True, sq, r_q, method=model.query, mutable=["batch_stats"]
    )
    k_out, k_upd = model.apply(k_vars, pk, True, sk, r_k, method=model.key, mutable=["batch_stats"])
    labels = jnp.asarray(batch["primary_label"])
    loss = losses.gpaco_loss(
        jnp.concatenate([q_out["features"], k_out["features"]]),
        jnp.concatenate([labels, labels]),
        jnp.concatenate([q_out["logits"], k_out["logits"]]),
        state.queue.features,
        state.queue.labels,
        log_prior,
        alpha=config.loss.alpha,
        beta=config.loss.beta,
        gamma=config.loss.gamma,
        temperature=config.loss.temperature,
        queue_mask=state.queue.valid,
    )
    return loss, q_out["logits"], k_out["features"], q_upd["batch_stats"], k_upd["batch_stats"], r_q


@pytest.mark.parametrize("index", [0, 1])
def test_default_loss_matches_recomputation(default, index):
    before, after = default["hosts"][index], default["hosts"][index + 1]
    batch = default["batches"][index]
    loss, logits, keys, q_stats, k_stats, r_q = default["recompute"](before, batch)
    values = default["metrics"][index]
    assert values["loss"] == pytest.approx(float(loss), rel=1e-5, abs=1e-5)
    assert values["mix_ratio_mean"] == pytest.approx(float(jnp.mean(r_q)), abs=1e-5)
    accuracy = np.mean(np.argmax(np.asarray(logits), axis=1) == batch["primary_label"])
    assert values["accuracy"] == pytest.approx(accuracy)
    rows = slice(index * BATCH, (index + 1) * BATCH)
    # Keys pass through BatchNorm over the sharded batch: reduction order differs by ~1e-5.
    np.testing.assert_allclose(after.queue.features[rows], keys, atol=5e-5)
    for got, want in zip(jax.tree.leaves(after.batch_stats), jax.tree.leaves(q_stats), strict=True):
        np.testing.assert_allclose(got, want, rtol=5e-5, atol=1e-6)
    for got, want in zip(
        jax.tree.leaves(after.key_batch_stats), jax.tree.leaves(k_stats), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=5e-5, atol=1e-6)


def test_non_finite_update_is_refused(default):
    """A state whose parameters hold a NaN comes back unchanged, with a NaN loss reported."""
    h = default["h"]
    bad = host(default["state"])
    leaves, treedef = jax.tree.flatten(bad.params)
    leaves = [x.copy() for x in leaves]
    kernel = next(i for i, x in enumerate(leaves) if x.ndim == 2)
    leaves[kernel].flat[0] = np.nan
    bad = bad.replace(params=jax.tree.unflatten(treedef, leaves))
    new_state, values = h.run(h.put_state(bad), make_batch(3))
    assert np.isnan(values["loss"])
    got = host(new_state)
    assert jax.tree.structure(got) == jax.tree.structure(bad)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(bad), strict=True):
        np.testing.assert_array_equal(x, y)  # NaN == NaN here; step and queue ptr unchanged too


# --------------------------------------------------------------------------------------------
# Switches: few compiles, each covering several of them.
# --------------------------------------------------------------------------------------------


def _step_rngs(config: ml_collections.ConfigDict, step: int) -> tuple[jax.Array, ...]:
    """(rng_views, rng_ratio_q, rng_ratio_k) as the step derives them: fold_in(seed, step)."""
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
    return tuple(jax.random.split(rng, 3))


def _one_step(config: ml_collections.ConfigDict, batch_seed: int = 4):
    h = build(config)
    state = h.new_state()
    before = host(state)
    batch = make_batch(batch_seed)
    new_state, values = h.run(state, batch)
    return h, before, batch, host(new_state), values


@pytest.fixture(scope="module")
def shared_bf16_gradient_random():
    return _one_step(
        tiny_config(
            **{
                "model.key_encoder": "shared",
                "model.dtype": "bfloat16",
                "saliency.method": "gradient",
                "mix.ratio": "random",
                "optim.warmup_epochs": 0.0,
            }
        )
    )


def test_shared_bf16_gradient_random(shared_bf16_gradient_random):
    h, before, batch, after, values = shared_bf16_gradient_random
    assert np.isfinite(values["loss"]) and values["loss"] > 0
    assert after.key_params is None and after.key_batch_stats is None
    assert int(after.step) == 1
    # Compute in bfloat16, parameters (and optimizer moments) kept in float32.
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(after.params))
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(after.batch_stats))
    moments = [x for x in jax.tree.leaves(after.opt_state) if x.ndim > 0]
    assert moments and all(x.dtype == np.float32 for x in moments)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params), strict=True)
    )
    # Random ratios: U(r_min, alpha) per patch from the step's ratio key, independent of saliency.
    c = h.config
    patches = (c.model.image_size // decode_variant(c.model.variant).patch_size) ** 2
    _, rng_rq, _ = _step_rngs(c, 0)
    expected = jax.random.uniform(rng_rq, (BATCH, patches), minval=c.mix.r_min, maxval=c.mix.alpha)
    assert c.mix.r_min <= values["mix_ratio_mean"] <= c.mix.alpha
    assert values["mix_ratio_mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    # The shared encoder's keys (computed in bfloat16) are enqueued as float32 unit vectors.
    assert after.queue.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(after.queue.features[:BATCH], axis=1), 1.0, atol=1e-2)
    np.testing.assert_array_equal(after.queue.labels[:BATCH], batch["primary_label"])


@pytest.fixture(scope="module")
def cutmix_ce():
    return _one_step(tiny_config(**{"mix.method": "cutmix", "loss.name": "ce"}))


def test_cutmix_ce(cutmix_ce):
    """The reported loss is the soft cross-entropy of the classifier on the CutMix query view."""
    h, before, batch, after, values = cutmix_ce
    c, model = h.config, h.model
    assert np.isfinite(values["loss"])
    assert 0.0 < values["mix_ratio_mean"] <= 1.0

    @jax.jit
    def mixed_logits(params, primary, secondary):
        # The query views and the CutMix draw, with the keys `make_views` and the step use.
        rng_views, rng_rq, _ = _step_rngs(c, 0)
        keys = jax.random.split(rng_views, 4)
        (_, pq, _), (_, sq, _) = _pair_views(
            augment.query_view, keys[0], keys[1], primary, secondary, c
        )
        mixed, lam = mixing.cutmix(rng_rq, pq, sq, c.mix.beta_a)
        return model.apply({"params": params}, mixed, method=model.logits), lam

    logits, lam = mixed_logits(before.params, batch["primary_image"], batch["secondary_image"])
    assert values["mix_ratio_mean"] == pytest.approx(float(lam.mean()), abs=1e-6)
    logits = np.asarray(logits, np.float64)
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    rows = np.arange(BATCH)
    lam = np.asarray(lam, np.float64)
    want = -np.mean(
        lam * log_p[rows, batch["primary_label"]]
        + (1 - lam) * log_p[rows, batch["secondary_label"]]
    )
    assert values["loss"] == pytest.approx(want, rel=1e-5, abs=1e-5)
    # CE trains no contrastive head, but keys still go through the EMA encoder into the queue.
    np.testing.assert_array_equal(after.queue.labels[:BATCH], batch["primary_label"])
    assert int(after.queue.ptr) == BATCH % c.loss.queue_size


@pytest.fixture(scope="module")
def global_ratio_empty_queue():
    return _one_step(
        tiny_config(
            **{
                "mix.ratio": "global",
                "loss.queue_init": "empty",
                "saliency.method": "spectral_residual",
                "model.ema_schedule": "cosine",
            }
        )
    )


def test_global_ratio_empty_queue(global_ratio_empty_queue):
    h, before, batch, after, values = global_ratio_empty_queue
    c = h.config
    assert np.isfinite(values["loss"]) and values["loss"] > 0
    assert c.mix.r_min <= values["mix_ratio_mean"] <= c.mix.alpha
    # An empty queue turns valid exactly where the first batch of keys was written.
    assert not before.queue.valid.any()
    np.testing.assert_array_equal(after.queue.valid, np.arange(c.loss.queue_size) < BATCH)
    np.testing.assert_allclose(np.linalg.norm(after.queue.features[:BATCH], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(after.queue.features[BATCH:], 0.0)


@pytest.fixture(scope="module")
def instance_primary():
    return _one_step(
        tiny_config(**{"mix.primary": "instance", "mix.noise": 0.5, "input.balanced_q": 0.5})
    )


def test_instance_primary_step_uses_the_training_frequency(instance_primary):
    """mix.primary=instance: the step's loss is GPaCo with log(n_c / N) on the class slots."""
    h, before, batch, after, values = instance_primary
    prior = numpy_log_prior(h.config)
    np.testing.assert_allclose(prior, np.log(np.asarray(CLASS_COUNTS) / sum(CLASS_COUNTS)))
    np.testing.assert_allclose(h.log_prior, prior, rtol=1e-6)
    loss, logits, keys, _, _, r_q = jax.jit(functools.partial(_recompute, h, prior))(before, batch)
    assert values["loss"] == pytest.approx(float(loss), rel=1e-5, abs=1e-5)
    assert values["mix_ratio_mean"] == pytest.approx(float(jnp.mean(r_q)), abs=1e-5)
    np.testing.assert_allclose(after.queue.features[:BATCH], keys, atol=5e-5)
    # The prior matters: with the balanced primary's (uniform) prior the loss is another number.
    uniform = np.full(7, -np.log(7.0))
    other, *_ = jax.jit(functools.partial(_recompute, h, uniform))(before, batch)
    assert abs(float(other) - values["loss"]) > 1e-3


def _shared_loss(h, log_prior, params, state, batch, *, key_logits_from_query, stop_key):
    """GPaCo loss of the shared-key step at step 0 (random ratios), rebuilt from public functions.

    `stop_key` stops the gradient through the key branch (what the EMA mode does); the key rows'
    class logits come from the query branch when `key_logits_from_query`.
    """
    config, model = h.config, h.model
    rng_views, rng_rq, rng_rk = _step_rngs(config, 0)
    k_pq, k_sq, k_pk, k_sk = jax.random.split(rng_views, 4)
    p_img, s_img = batch["primary_image"], batch["secondary_image"]
    (_, pq, _), (_, sq, _) = _pair_views(augment.query_view, k_pq, k_sq, p_img, s_img, config)
    (_, pk, _), (_, sk, _) = _pair_views(augment.key_view, k_pk, k_sk, p_img, s_img, config)
    flat = jnp.zeros(pq.shape[:3])
    patch = decode_variant(config.model.variant).patch_size
    cfg = dict(patch_size=patch, alpha=config.mix.alpha, r_min=config.mix.r_min, mode="random")
    r_q = mixing.patch_ratios(flat, flat, rng=rng_rq, **cfg)
    r_k = mixing.patch_ratios(flat, flat, rng=rng_rk, **cfg)
    q_vars = {"params": params, "batch_stats": state.batch_stats}
    q_out, q_upd = model.apply(
        q_vars, pq, True, sq, r_q, method=model.query, mutable=["batch_stats"]
    )
    k_params = jax.lax.stop_gradient(params) if stop_key else params
    k_vars = {"params": k_params, "batch_stats": q_upd["batch_stats"]}
    k_out, _ = model.apply(k_vars, pk, True, sk, r_k, method=model.key, mutable=["batch_stats"])
    key_logits = q_out["logits"] if key_logits_from_query else k_out["logits"]
    labels = jnp.asarray(batch["primary_label"])
    return losses.gpaco_loss(
        jnp.concatenate([q_out["features"], k_out["features"]]),
        jnp.concatenate([labels, labels]),
        jnp.concatenate([q_out["logits"], key_logits]),
        state.queue.features,
        state.queue.labels,
        log_prior,
        alpha=config.loss.alpha,
        beta=config.loss.beta,
        gamma=config.loss.gamma,
        temperature=config.loss.temperature,
        queue_mask=state.queue.valid,
    )


@pytest.fixture(scope="module")
def shared_key_logits_from_query():
    h, before, batch, after, values = _one_step(
        tiny_config(
            **{
                "model.key_encoder": "shared",
                "loss.key_logits_from_query": True,
                "mix.ratio": "random",
                "optim.warmup_epochs": 0.0,
            }
        )
    )
    prior = numpy_log_prior(h.config)

    @functools.partial(jax.jit, static_argnames=("from_query", "stop_key"))
    def recompute(from_query: bool, stop_key: bool):
        """(loss, the parameters after one optimizer step on its gradient)."""
        loss_fn = functools.partial(
            _shared_loss,
            h,
            prior,
            state=before,
            batch=batch,
            key_logits_from_query=from_query,
            stop_key=stop_key,
        )
        loss, grads = jax.value_and_grad(loss_fn)(before.params)
        updates, _ = h.tx.update(grads, before.opt_state, before.params)
        return loss, optax.apply_updates(before.params, updates)

    return h, before, after, values, recompute


def _share_moved_differently(a: Any, b: Any, lr: float) -> float:
    """Share of parameter entries whose one-step values differ by more than lr / 2."""
    diffs = [
        np.abs(np.asarray(x) - np.asarray(y)) > lr / 2
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return float(np.concatenate([d.ravel() for d in diffs]).mean())


def test_shared_key_logits_from_query_changes_the_loss_as_specified(shared_key_logits_from_query):
    """The key rows of GPaCo carry the QUERY branch's class logits, and that changes the loss."""
    h, before, after, values, recompute = shared_key_logits_from_query
    loss, _ = recompute(True, False)
    assert values["loss"] == pytest.approx(float(loss), rel=1e-5, abs=1e-5)
    own, _ = recompute(False, False)
    assert abs(float(own) - values["loss"]) > 1e-4


def test_shared_key_encoder_trains_through_both_branches(shared_key_logits_from_query):
    """The step's update is that of the full gradient, not of one stopped at the key branch."""
    h, before, after, values, recompute = shared_key_logits_from_query
    lr = values["learning_rate"]
    assert lr > 0
    _, full = recompute(True, False)
    _, stopped = recompute(True, True)
    # Adam's first step moves each entry by about lr * sign(gradient): entries agree with the
    # full-gradient update up to a few with gradients near zero, and many disagree with the other.
    assert _share_moved_differently(after.params, full, lr) < 0.01
    assert _share_moved_differently(after.params, stopped, lr) > 0.05
    assert _share_moved_differently(full, stopped, lr) > 0.05


def test_train_metrics_merge_under_jit():
    rng = np.random.default_rng(4)
    steps = []
    for _ in range(3):
        steps.append(
            dict(
                loss=np.float32(rng.uniform(0, 3)),
                logits=rng.normal(size=(8, 4)).astype(np.float32),
                labels=rng.integers(0, 4, size=8),  # int64 on the host; cast to int32 inside
                mix_ratio_mean=np.float32(rng.uniform(0.5, 0.8)),
                learning_rate=np.float32(rng.uniform(1e-6, 1e-4)),
                grad_norm=np.float32(rng.uniform(0.1, 5.0)),
            )
        )

    @jax.jit
    def update(collection, batch):
        return collection.merge(step_lib.TrainMetrics.single_from_model_output(**batch))

    collection = step_lib.TrainMetrics.empty()
    for batch in steps:
        collection = update(collection, batch)
    values = step_lib.metrics_to_host(collection)
    correct = np.concatenate([s["logits"].argmax(1) == s["labels"] for s in steps])
    assert values["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-6)
    assert values["accuracy"] == pytest.approx(correct.mean(), rel=1e-6)
    assert values["mix_ratio_mean"] == pytest.approx(
        np.mean([s["mix_ratio_mean"] for s in steps]), rel=1e-6
    )
    assert values["learning_rate"] == pytest.approx(float(steps[-1]["learning_rate"]), rel=1e-6)
    assert values["grad_norm"] == pytest.approx(np.mean([s["grad_norm"] for s in steps]), rel=1e-6)
    assert set(values) == {"loss", "accuracy", "mix_ratio_mean", "learning_rate", "grad_norm"}


def test_seed_is_an_input_of_the_compiled_step_not_a_constant(default):
    """Runs that differ only in seed lower to one program, and the key still decides the step."""
    h = default["h"]
    seed = h.config.seed + 1
    other = train.jit_train_step(
        tiny_config(seed=seed),
        h.model,
        h.tx,
        h.log_prior,
        h.config.data.synthetic.num_train,
        h.shardings,
        h.mesh,
    )
    state = h.put_state(default["hosts"][0])
    batch = sharding.global_batch(default["batches"][0], h.mesh)
    assert other.lower(state, batch).as_text() == h.train_step.lower(state, batch).as_text()
    np.testing.assert_array_equal(np.asarray(other.base_key), np.asarray(jax.random.PRNGKey(seed)))
    # The first step again through the same executable: with the run's own key it repeats the
    # fixture's step exactly; with the other seed's key it is another step.
    _, same = h.train_step(state, batch)
    _, moved = h.train_step.jitted(h.put_state(default["hosts"][0]), batch, other.base_key)
    assert step_lib.metrics_to_host(same)["loss"] == default["metrics"][0]["loss"]
    assert step_lib.metrics_to_host(moved)["loss"] != default["metrics"][0]["loss"]
