"""Key queue: FIFO contents against a numpy deque, size checks, and enqueue on a sharded batch."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from spmix_jax import queue as kq


def deque_reference(initial_rows, batches):
    """Oldest-to-newest contents of a bounded FIFO after pushing `batches` one row at a time."""
    ref = collections.deque(initial_rows, maxlen=len(initial_rows))
    for batch in batches:
        ref.extend(batch)
    return np.stack(list(ref))


def oldest_first(queue):
    ptr = int(queue.ptr)
    return (
        np.roll(np.asarray(queue.features), -ptr, axis=0),
        np.roll(np.asarray(queue.labels), -ptr, axis=0),
        np.roll(np.asarray(queue.valid), -ptr, axis=0),
    )


def test_init_random_and_empty():
    q = kq.init_queue(jax.random.key(0), 64, 16, 7)
    assert q.features.shape == (64, 16) and q.features.dtype == jnp.float32
    assert q.labels.dtype == jnp.int32 and q.ptr.dtype == jnp.int32 and q.valid.dtype == jnp.bool_
    np.testing.assert_allclose(np.linalg.norm(np.asarray(q.features), axis=1), 1.0, rtol=1e-5)
    labels = np.asarray(q.labels)
    assert labels.min() >= 0 and labels.max() < 7 and len(np.unique(labels)) > 1
    assert int(q.ptr) == 0 and bool(jnp.all(q.valid))
    # Different seeds give different queues; the same seed the same one.
    q2 = kq.init_queue(jax.random.key(0), 64, 16, 7)
    q3 = kq.init_queue(jax.random.key(1), 64, 16, 7)
    np.testing.assert_array_equal(np.asarray(q.features), np.asarray(q2.features))
    assert not np.allclose(np.asarray(q.features), np.asarray(q3.features))

    e = kq.init_queue(jax.random.key(0), 8, 4, 3, mode="empty")
    np.testing.assert_array_equal(np.asarray(e.features), np.zeros((8, 4)))
    assert not bool(jnp.any(e.valid)) and int(e.ptr) == 0
    with pytest.raises(ValueError, match="mode"):
        kq.init_queue(jax.random.key(0), 8, 4, 3, mode="zeros")
    with pytest.raises(ValueError, match="positive"):
        kq.init_queue(jax.random.key(0), 0, 4, 3)


def test_init_released_normalises_along_the_queue_axis():
    """randn(K, d) normalised over the K entries (dim 0), as the released code builds it."""
    q = kq.init_queue(jax.random.key(0), 256, 16, 7, mode="released")
    feats = np.asarray(q.features)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=0), 1.0, rtol=1e-5)
    # Each entry is short: norm about sqrt(d / K) = 0.25, far from a unit vector.
    assert 0.15 < np.linalg.norm(feats, axis=1).mean() < 0.35
    labels = np.asarray(q.labels)
    assert labels.min() >= 0 and labels.max() < 7 and bool(jnp.all(q.valid))


@pytest.mark.parametrize("mode", ["random", "empty"])
def test_enqueue_wraps_around_like_a_deque(mode):
    size, batch, dim = 12, 4, 3
    rng = np.random.default_rng(0)
    q = kq.init_queue(jax.random.key(0), size, dim, 5, mode=mode)
    init_f, init_l = np.asarray(q.features), np.asarray(q.labels)
    init_v = np.asarray(q.valid)
    step = jax.jit(kq.enqueue)
    feats, labels = [], []
    for i in range(7):  # 28 rows into 12 slots: wraps twice
        f = rng.normal(size=(batch, dim)).astype(np.float32)
        lab = rng.integers(0, 5, size=batch).astype(np.int32)
        q = step(q, f, lab)
        feats.append(f)
        labels.append(lab)
        assert int(q.ptr) == ((i + 1) * batch) % size
        got_f, got_l, got_v = oldest_first(q)
        np.testing.assert_array_equal(got_f, deque_reference(init_f, feats))
        np.testing.assert_array_equal(got_l, deque_reference(init_l, labels))
        np.testing.assert_array_equal(
            got_v, deque_reference(init_v, [np.ones(batch, bool)] * len(feats))
        )
    assert q.ptr.dtype == jnp.int32 and q.labels.dtype == jnp.int32


def test_enqueue_stops_gradients_and_casts():
    q = kq.init_queue(jax.random.key(0), 8, 2, 3, mode="empty")

    def f(keys):
        new = kq.enqueue(q, keys, jnp.array([1, 2]))
        return jnp.sum(new.features)

    np.testing.assert_array_equal(np.asarray(jax.grad(f)(jnp.ones((2, 2)))), np.zeros((2, 2)))
    new = kq.enqueue(q, jnp.ones((2, 2), jnp.bfloat16), jnp.array([1, 2], jnp.int8))
    assert new.features.dtype == jnp.float32 and new.labels.dtype == jnp.int32


def test_check_queue_size_messages():
    kq.check_queue_size(8192, 256)
    with pytest.raises(ValueError, match=r"not a multiple.*e\.g\. 96 or 128"):
        kq.check_queue_size(100, 32)
    with pytest.raises(ValueError, match="smaller than"):
        kq.check_queue_size(16, 32)
    with pytest.raises(ValueError, match="positive"):
        kq.check_queue_size(16, 0)
    q = kq.init_queue(jax.random.key(0), 10, 2, 3)
    with pytest.raises(ValueError, match="loss.queue_size"):
        kq.enqueue(q, jnp.zeros((4, 2)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="keys must have shape"):
        kq.enqueue(q, jnp.zeros((5, 3)), jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match="labels must have shape"):
        kq.enqueue(q, jnp.zeros((5, 2)), jnp.zeros(4, jnp.int32))


def test_enqueue_inside_jit_with_batch_sharded_over_devices():
    devices = jax.devices()
    assert len(devices) >= 8, "conftest sets 8 fake CPU devices"
    mesh = Mesh(np.array(devices[:8]), ("data",))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    size, batch, dim = 48, 16, 4
    q = jax.device_put(kq.init_queue(jax.random.key(3), size, dim, 7), replicated)
    init_f, init_l = np.asarray(q.features), np.asarray(q.labels)
    step = jax.jit(kq.enqueue, out_shardings=replicated, donate_argnums=0)
    rng = np.random.default_rng(1)
    feats, labels = [], []
    for _ in range(5):  # wraps once
        f = rng.normal(size=(batch, dim)).astype(np.float32)
        lab = rng.integers(0, 7, size=batch).astype(np.int32)
        q = step(q, jax.device_put(f, batch_sharding), jax.device_put(lab, batch_sharding))
        feats.append(f)
        labels.append(lab)
    assert q.features.sharding.is_equivalent_to(replicated, 2)
    got_f, got_l, _ = oldest_first(q)
    np.testing.assert_array_equal(got_f, deque_reference(init_f, feats))
    np.testing.assert_array_equal(got_l, deque_reference(init_l, labels))
    assert int(q.ptr) == (5 * batch) % size
