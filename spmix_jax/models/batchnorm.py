"""BatchNorm over the global batch or over groups of it, for the heads and the ResNet trunk."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class GroupBatchNorm(nn.Module):
    """BatchNorm whose statistics are taken over the global batch or over groups of it.

    `group_size == 0` uses the whole (global, possibly sharded) batch, which under `jax.jit` is a
    cross-device reduction. A positive `group_size` splits the batch into consecutive groups of
    that many rows (as per-device BatchNorm does in data-parallel PyTorch) and normalises each
    group with its own statistics; running averages use the mean over groups.
    """

    group_size: int = 0
    use_scale: bool = True
    scale_init: Any = nn.initializers.ones
    use_bias: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
        xf = x.astype(jnp.float32)
        if train:
            b = xf.shape[0]
            g = self.group_size if 0 < self.group_size < b else b
            if b % g:
                raise ValueError(f"Batch {b} is not divisible by model.bn_group_size={g}.")
            # Rows are consecutive, so a group holds g images and all their positions (NHWC).
            grouped = xf.reshape(b // g, -1, features)
            mean = grouped.mean(axis=1, keepdims=True)
            var = jnp.square(grouped - mean).mean(axis=1, keepdims=True)
            y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(xf.shape)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(axis=(0, 1))
                ra_var.value = m * ra_var.value + (1 - m) * var.mean(axis=(0, 1))
        else:
            y = (xf - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
        if self.use_scale:
            y = y * self.param("scale", self.scale_init, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return y.astype(self.dtype)
