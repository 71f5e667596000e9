"""EMA key-encoder update and momentum schedules against numpy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spmix_jax import ema


def test_ema_update_matches_numpy_on_a_tree():
    rng = np.random.default_rng(0)
    key_params = {
        "dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)},
        "scale": rng.normal(size=()),
    }
    params = jax.tree.map(lambda x: x + rng.normal(size=np.shape(x)), key_params)
    key_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), key_params)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    for m in (0.0, 0.9, 0.999, 1.0):
        got = ema.ema_update(key_params, params, m)
        want = jax.tree.map(
            lambda k, p, m=m: m * np.asarray(k, np.float64) + (1 - m) * np.asarray(p, np.float64),
            key_params,
            params,
        )
        jax.tree.map(
            lambda g, w: np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6),
            got,
            want,
        )
    # momentum 1 keeps the key encoder, 0 copies the query encoder.
    jax.tree.map(np.testing.assert_array_equal, ema.ema_update(key_params, params, 1.0), key_params)
    jax.tree.map(np.testing.assert_array_equal, ema.ema_update(key_params, params, 0.0), params)


def test_ema_update_with_traced_momentum_and_repeated_steps():
    schedule = ema.momentum_schedule(0.9, 10, "cosine")

    @jax.jit
    def step(key_params, params, t):
        return ema.ema_update(key_params, params, schedule(t))

    k = jnp.zeros(3, jnp.float32)
    p = jnp.ones(3, jnp.float32)
    want = np.zeros(3)
    for t in range(4):
        k = step(k, p, t)
        m = 1 - 0.1 * (math.cos(math.pi * t / 10) + 1) / 2
        want = m * want + (1 - m) * 1.0
    np.testing.assert_allclose(np.asarray(k), want, rtol=1e-5)


def test_momentum_schedules():
    const = ema.momentum_schedule(0.999, 100, "constant")
    for t in (0, 50, 100, 1000):
        np.testing.assert_allclose(float(const(t)), 0.999, rtol=1e-7)
    assert const(0).dtype == jnp.float32
    cos = ema.momentum_schedule(0.99, 100, "cosine")
    np.testing.assert_allclose(float(cos(0)), 0.99, rtol=1e-7)
    np.testing.assert_allclose(float(cos(100)), 1.0, rtol=1e-7)
    np.testing.assert_allclose(float(cos(50)), 0.995, rtol=1e-6)
    np.testing.assert_allclose(
        float(cos(25)), 1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2, rtol=1e-6
    )
    np.testing.assert_allclose(float(cos(250)), 1.0, rtol=1e-7)  # clipped past the end
    values = np.asarray(jax.vmap(cos)(jnp.arange(101)))
    assert np.all(np.diff(values) >= 0)
    with pytest.raises(ValueError, match="schedule"):
        ema.momentum_schedule(0.99, 100, "linear")
    with pytest.raises(ValueError, match="total_steps"):
        ema.momentum_schedule(0.99, 0, "cosine")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ema.momentum_schedule(1.5, 100, "constant")
