"""How a network starts from scratch (`model.init`, docs/method.md section 7).

`timm` (the default) starts as the released code's PyTorch network does: timm's ViT init (its
`trunc_normal_` at std 0.02 for every Linear kernel and the position embedding, zero biases, the
CLS token normal at std 1e-6) and PyTorch's default Linear / Conv2d init (kaiming-uniform with
a = sqrt(5): weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))) where timm leaves PyTorch's
in place (the patch embedding) and for the heads the released code builds with `nn.Linear`
(projector, predictor, classifier). `xavier` keeps the JAX ViT's init: xavier-uniform kernels,
MLP biases normal at 1e-6, a plain-normal position embedding, a zero CLS token and Flax's
defaults (lecun-normal, zero bias) for the patch embedding and the heads.

A pretrained start (`model.init_from`) overwrites what it loads; the scheme decides the rest.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., Any]
INITS = ("timm", "xavier")


def timm_trunc_normal(std: float = 0.02, a: float = -2.0, b: float = 2.0) -> Initializer:
    """timm's `trunc_normal_(std=std)`: a normal cut at the ABSOLUTE bounds a, b (not a*std).

    At std 0.02 the cut lies 100 standard deviations out, so the values are those of a plain
    normal (unlike Flax's `truncated_normal`, which cuts at 2 std and rescales).
    """

    def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return std * jax.random.truncated_normal(key, a / std, b / std, shape, jnp.float32).astype(
            dtype
        )

    return init


def torch_uniform(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default Linear / Conv2d bias."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Any, dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


# kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / (1 + 5)) * sqrt(3 / fan_in) = 1 / sqrt(fan_in).
torch_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class InitScheme:
    """The initialiser of each kind of parameter; bias factories take the layer's fan-in."""

    vit_kernel: Initializer  # attention and MLP kernels of the transformer blocks
    mlp_bias: Initializer
    pos_embedding: Initializer
    cls: Initializer
    embed_kernel: Initializer  # patch embedding (or the hybrid's 1x1 projection)
    embed_bias: Callable[[int], Initializer]
    head_kernel: Initializer  # projector, predictor, classifier
    head_bias: Callable[[int], Initializer]


def scheme(name: str) -> InitScheme:
    """The scheme `model.init` names; raises naming the accepted values."""
    if name == "timm":
        return InitScheme(
            vit_kernel=timm_trunc_normal(0.02),
            mlp_bias=nn.initializers.zeros,
            pos_embedding=timm_trunc_normal(0.02),
            cls=nn.initializers.normal(stddev=1e-6),
            embed_kernel=torch_kernel,
            embed_bias=torch_uniform,
            head_kernel=torch_kernel,
            head_bias=torch_uniform,
        )
    if name == "xavier":
        return InitScheme(
            vit_kernel=nn.initializers.xavier_uniform(),
            mlp_bias=nn.initializers.normal(stddev=1e-6),
            pos_embedding=nn.initializers.normal(stddev=0.02),
            cls=nn.initializers.zeros,
            embed_kernel=nn.initializers.lecun_normal(),
            embed_bias=lambda fan_in: nn.initializers.zeros,
            head_kernel=nn.initializers.lecun_normal(),
            head_bias=lambda fan_in: nn.initializers.zeros,
        )
    raise ValueError(f"Unknown model.init {name!r}; known: {INITS}.")
