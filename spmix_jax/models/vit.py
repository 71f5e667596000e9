"""Vision Transformer split into `embed` and `encode`, so SPMix can mix patch tokens in between.

Pre-norm blocks, learned position embedding, CLS pooling, LayerNorm eps 1e-6 (as ViT / big_vision).
Variants are decoded from strings: "mu/8" (tiny, tests), "nano/8" (CPU runs), "Ti/16", "S/16",
"B/16", "L/16"; the number after the slash is the patch size (e.g. "S/8" for small images).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

_VARIANTS = {
    # name: (width, depth, mlp_dim, heads)
    "mu": (32, 2, 64, 2),
    "nano": (96, 4, 384, 3),  # small enough to train on a CPU in minutes
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


def decode_variant(variant: str) -> ViTSpec:
    """Turns "S/16" into its widths; raises with the known names for anything else."""
    name, _, patch = variant.partition("/")
    if name not in _VARIANTS or not patch.isdigit() or int(patch) <= 0:
        raise ValueError(
            f"Unknown ViT variant {variant!r}; expected NAME/PATCH with NAME in "
            f"{sorted(_VARIANTS)} and a positive integer patch size, e.g. 'S/16' or 'mu/8'."
        )
    width, depth, mlp_dim, heads = _VARIANTS[name]
    return ViTSpec(width, depth, mlp_dim, heads, int(patch))


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            name=name,
        )
        x = dense(self.mlp_dim, "fc1")(x)
        x = nn.gelu(x, approximate=False)  # exact GELU, as PyTorch ViTs
        return dense(width, "fc2")(x)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

    mlp_dim: int
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            name="attn",
        )(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, name="mlp")(y)
        return x + y


class ViT(nn.Module):
    """ViT backbone with separate token embedding and encoding."""

    variant: str = "S/16"
    image_size: int = 224
    dtype: Any = jnp.float32

    @property
    def spec(self) -> ViTSpec:
        return decode_variant(self.variant)

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.spec.patch_size

    def setup(self) -> None:
        spec = self.spec
        if self.image_size % spec.patch_size:
            raise ValueError(
                f"model.image_size={self.image_size} is not a multiple of the patch size "
                f"{spec.patch_size} of variant {self.variant!r}."
            )
        self.patch_embed = nn.Conv(
            spec.width,
            (spec.patch_size, spec.patch_size),
            strides=(spec.patch_size, spec.patch_size),
            padding="VALID",
            dtype=self.dtype,
            name="embedding",
        )
        self.cls = self.param("cls", nn.initializers.zeros, (1, 1, spec.width))
        self.pos_embedding = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, self.grid**2 + 1, spec.width)
        )
        self.blocks = [
            EncoderBlock(spec.mlp_dim, spec.num_heads, dtype=self.dtype, name=f"block{i}")
            for i in range(spec.depth)
        ]
        self.encoder_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")

    def embed(self, images: jax.Array) -> jax.Array:
        """(B, H, W, 3) -> patch tokens (B, P, D), patches in row-major order."""
        x = self.patch_embed(images.astype(self.dtype))
        b, h, w, d = x.shape
        return x.reshape(b, h * w, d)

    def encode(self, tokens: jax.Array) -> jax.Array:
        """Patch tokens (B, P, D) -> CLS feature (B, D): add CLS and positions, blocks, norm."""
        b = tokens.shape[0]
        cls = jnp.broadcast_to(self.cls.astype(tokens.dtype), (b, 1, tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens], axis=1) + self.pos_embedding.astype(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        return self.encoder_norm(x)[:, 0]

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.encode(self.embed(images))
