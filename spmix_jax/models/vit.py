"""Vision Transformer split into `embed` and `encode`, so SPMix can mix patch tokens in between.

Pre-norm blocks, learned position embedding, CLS pooling, LayerNorm eps 1e-6 (as ViT / big_vision
/ timm). Variants are decoded from strings: "mu/8" (tiny, tests), "nano/8" (CPU runs), "Ti/16",
"S/16", "B/16", "L/16", "timm_small/16" (timm's hybrid ViT-small: 768 wide, 8 blocks, 8 heads,
MLP 2304); the number after the slash is the patch size (e.g. "S/8" for small images).

A trunk prefix makes a hybrid: "R50d+timm_small/16" (timm's `vit_small_resnet50d_s16_224`) or
"R50d+B/16" take their tokens from a ResNet-50d trunk (stem + stages 1-3, stride 16) followed by
a 1x1 projection convolution instead of patchifying the image; the patch size must then be 16,
the trunk's stride. "Rmu+mu/16" is a reduced-width hybrid for tests (docs/method.md section 7).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spmix_jax.models import inits
from spmix_jax.models.resnet import TRUNK_STRIDE, TRUNKS, ResNetTrunk

_VARIANTS = {
    # name: (width, depth, mlp_dim, heads)
    "mu": (32, 2, 64, 2),
    "nano": (96, 4, 384, 3),  # small enough to train on a CPU in minutes
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "timm_small": (768, 8, 2304, 8),  # timm's hybrid "small" (mlp_ratio 3)
}


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int  # pixels per token side (the trunk's stride for a hybrid)
    hybrid: bool = False  # tokens come from a ResNet trunk + 1x1 projection
    trunk: str = ""  # the trunk's name ("R50d") when hybrid


def decode_variant(variant: str) -> ViTSpec:
    """Turns "S/16" or "R50d+timm_small/16" into its widths; raises naming what is accepted."""
    trunk, plus, rest = variant.rpartition("+")
    name, _, patch = rest.partition("/")
    if name not in _VARIANTS or not patch.isdigit() or int(patch) <= 0:
        raise ValueError(
            f"Unknown ViT variant {variant!r}; expected [TRUNK+]NAME/PATCH with NAME in "
            f"{sorted(_VARIANTS)}, a positive integer patch size and an optional TRUNK in "
            f"{sorted(TRUNKS)}, e.g. 'S/16', 'mu/8' or 'R50d+timm_small/16'."
        )
    width, depth, mlp_dim, heads = _VARIANTS[name]
    if not plus:
        return ViTSpec(width, depth, mlp_dim, heads, int(patch))
    if trunk not in TRUNKS:
        raise ValueError(
            f"Unknown trunk {trunk!r} in ViT variant {variant!r}; known trunks: {sorted(TRUNKS)}."
        )
    if int(patch) != TRUNK_STRIDE:
        raise ValueError(
            f"Hybrid ViT variant {variant!r} needs patch size {TRUNK_STRIDE} (the stride of the "
            f"{trunk} trunk), e.g. '{trunk}+{name}/{TRUNK_STRIDE}'."
        )
    return ViTSpec(width, depth, mlp_dim, heads, TRUNK_STRIDE, hybrid=True, trunk=trunk)


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: Any = jnp.float32
    init_scheme: str = "timm"  # model.init (models/inits.py)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        scheme = inits.scheme(self.init_scheme)
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n,
            dtype=self.dtype,
            kernel_init=scheme.vit_kernel,
            bias_init=scheme.mlp_bias,
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
    init_scheme: str = "timm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            dtype=self.dtype,
            kernel_init=inits.scheme(self.init_scheme).vit_kernel,
            name="attn",
        )(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        y = MlpBlock(self.mlp_dim, dtype=self.dtype, init_scheme=self.init_scheme, name="mlp")(y)
        return x + y


# Every block of a ViT, and the query and key encoders' blocks, run the same program on arrays
# of the same shapes: jitted, a block is traced (and lowered) once per shape instead of once per
# layer and encoder, which cuts the step's first compile (benchmarks/README.md). XLA inlines the
# calls, so the compiled step computes the same values. `model.init` keeps the plain block: the
# lifted jit would split the initialisers' random keys differently.
_SharedBlock = nn.jit(EncoderBlock)


class ViT(nn.Module):
    """ViT backbone with separate token embedding and encoding."""

    variant: str = "S/16"
    image_size: int = 224
    dtype: Any = jnp.float32
    bn_group_size: int = 0  # the hybrid trunk's BatchNorm groups (model.bn_group_size)
    init_scheme: str = "timm"  # model.init (models/inits.py)

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
        scheme = inits.scheme(self.init_scheme)
        in_channels = 3
        if spec.hybrid:
            self.trunk = ResNetTrunk(
                spec.trunk, bn_group_size=self.bn_group_size, dtype=self.dtype, name="trunk"
            )
            in_channels = TRUNKS[spec.trunk].widths[-1] * 4
        # A hybrid projects the trunk's features with a 1x1 convolution (timm's HybridEmbed).
        kernel = 1 if spec.hybrid else spec.patch_size
        self.patch_embed = nn.Conv(
            spec.width,
            (kernel, kernel),
            strides=(kernel, kernel),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=scheme.embed_kernel,
            bias_init=scheme.embed_bias(in_channels * kernel * kernel),
            name="embedding",
        )
        self.cls = self.param("cls", scheme.cls, (1, 1, spec.width))
        self.pos_embedding = self.param(
            "pos_embedding", scheme.pos_embedding, (1, self.grid**2 + 1, spec.width)
        )
        block = EncoderBlock if self.is_initializing() else _SharedBlock
        self.blocks = [
            block(
                spec.mlp_dim,
                spec.num_heads,
                dtype=self.dtype,
                init_scheme=self.init_scheme,
                name=f"block{i}",
            )
            for i in range(spec.depth)
        ]
        self.encoder_norm = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")

    def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
        """(B, H, W, 3) -> patch tokens (B, P, D), patches in row-major order.

        `train` selects batch statistics for normalisation layers in the embedding (a hybrid
        trunk's BatchNorm); the plain patch embedding has none.
        """
        x = images.astype(self.dtype)
        if self.spec.hybrid:
            x = self.trunk(x, train)
        x = self.patch_embed(x)
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
