"""FIFO queue of key features and labels for the contrastive loss (docs/method.md section 7).

The queue is a NamedTuple of arrays, so it sits inside the train state as ordinary pytree leaves,
is donated and sharded with it, and is checkpointed like any other array. The `valid` mask is
always present: all True for a randomly initialised queue, all False for an "empty and masked"
one, turning True row by row as keys are written; the loss takes it as `queue_mask`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

QUEUE_INIT_MODES = ("random", "empty", "released")


class KeyQueue(NamedTuple):
    """K queued keys: features (K, d) float32, labels (K,) int32, ptr () int32, valid (K,) bool."""

    features: jax.Array
    labels: jax.Array
    ptr: jax.Array
    valid: jax.Array


def check_queue_size(queue_size: int, batch_size: int) -> None:
    """Raises ValueError unless the queue holds a whole number (>= 1) of batches of keys.

    Writes of B rows at ptr = multiple of B then never straddle the end of the queue.
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if queue_size < batch_size:
        raise ValueError(
            f"queue size K={queue_size} is smaller than the batch of B={batch_size} keys written "
            f"per step; set loss.queue_size to a multiple of {batch_size} (e.g. {batch_size})"
        )
    if queue_size % batch_size:
        lower = (queue_size // batch_size) * batch_size
        upper = lower + batch_size
        raise ValueError(
            f"queue size K={queue_size} is not a multiple of the batch of B={batch_size} keys "
            f"written per step; set loss.queue_size to a multiple of {batch_size} (e.g. {lower} "
            f"or {upper}) or change the batch size to a divisor of {queue_size}"
        )


def init_queue(
    rng: jax.Array, size: int, dim: int, num_classes: int, *, mode: str = "random"
) -> KeyQueue:
    """Creates the initial queue.

    mode 'random': random unit vectors with uniformly random labels, all valid; mode 'released':
    Gaussian features normalised along the QUEUE axis (each feature column has unit norm over
    the K entries, so each entry is short, norm about sqrt(dim / K)), random labels, all valid,
    as the released code initialises it; mode 'empty': zero features, label 0, all masked out
    until written.
    """
    if size <= 0 or dim <= 0 or num_classes <= 0:
        raise ValueError(
            f"size, dim and num_classes must be positive, got {size}, {dim}, {num_classes}"
        )
    if mode in ("random", "released"):
        feat_key, label_key = jax.random.split(rng)
        features = jax.random.normal(feat_key, (size, dim), jnp.float32)
        axis = 1 if mode == "random" else 0
        features = features / jnp.linalg.norm(features, axis=axis, keepdims=True)
        labels = jax.random.randint(label_key, (size,), 0, num_classes, jnp.int32)
        valid = jnp.ones((size,), bool)
    elif mode == "empty":
        features = jnp.zeros((size, dim), jnp.float32)
        labels = jnp.zeros((size,), jnp.int32)
        valid = jnp.zeros((size,), bool)
    else:
        raise ValueError(f"queue init mode must be one of {QUEUE_INIT_MODES}, got {mode!r}")
    return KeyQueue(features=features, labels=labels, ptr=jnp.zeros((), jnp.int32), valid=valid)


def enqueue(queue: KeyQueue, keys: jax.Array, labels: jax.Array) -> KeyQueue:
    """Writes B keys (stop-gradient, float32) and labels at ptr; ptr <- (ptr + B) mod K.

    Requires K % B == 0 (checked from the static shapes), so ptr is always a multiple of B and a
    single dynamic_update_slice never runs past the end. Works on sharded keys inside jit.
    """
    size, dim = queue.features.shape
    if keys.ndim != 2 or keys.shape[1] != dim:
        raise ValueError(f"keys must have shape (B, {dim}), got {tuple(keys.shape)}")
    batch = keys.shape[0]
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
    check_queue_size(size, batch)
    keys = jax.lax.stop_gradient(keys).astype(queue.features.dtype)
    labels = labels.astype(queue.labels.dtype)
    ptr = queue.ptr.astype(jnp.int32)
    features = jax.lax.dynamic_update_slice(queue.features, keys, (ptr, jnp.int32(0)))
    new_labels = jax.lax.dynamic_update_slice(queue.labels, labels, (ptr,))
    valid = jax.lax.dynamic_update_slice(queue.valid, jnp.ones((batch,), bool), (ptr,))
    return KeyQueue(
        features=features,
        labels=new_labels,
        ptr=((ptr + batch) % size).astype(jnp.int32),
        valid=valid,
    )
