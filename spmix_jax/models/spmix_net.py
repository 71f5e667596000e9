"""The whole SPMix network: ViT backbone, projector, predictor, classifier (docs/method.md §7)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from spmix_jax.mixing import mix_tokens
from spmix_jax.models import inits
from spmix_jax.models.batchnorm import GroupBatchNorm
from spmix_jax.models.vit import ViT, decode_variant


class Projector(nn.Module):
    """Linear-BN-ReLU x2, Linear, BN without affine; all Linear layers without bias."""

    hidden: int = 4096
    out: int = 256
    bn_group_size: int = 0
    dtype: Any = jnp.float32
    init_scheme: str = "timm"  # model.init (models/inits.py)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = inits.scheme(self.init_scheme).head_kernel
        for i in range(2):
            x = nn.Dense(
                self.hidden, use_bias=False, dtype=self.dtype, kernel_init=kernel, name=f"fc{i}"
            )(x)
            x = GroupBatchNorm(self.bn_group_size, dtype=self.dtype, name=f"bn{i}")(x, train)
            x = nn.relu(x)
        x = nn.Dense(self.out, use_bias=False, dtype=self.dtype, kernel_init=kernel, name="fc2")(x)
        return GroupBatchNorm(
            self.bn_group_size, use_scale=False, use_bias=False, dtype=self.dtype, name="bn2"
        )(x, train)


class Predictor(nn.Module):
    """Linear-BN-ReLU, Linear, BN without affine (query branch only)."""

    hidden: int = 4096
    out: int = 256
    bn_group_size: int = 0
    dtype: Any = jnp.float32
    init_scheme: str = "timm"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        kernel = inits.scheme(self.init_scheme).head_kernel
        x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, kernel_init=kernel, name="fc0")(
            x
        )
        x = nn.relu(GroupBatchNorm(self.bn_group_size, dtype=self.dtype, name="bn0")(x, train))
        x = nn.Dense(self.out, use_bias=False, dtype=self.dtype, kernel_init=kernel, name="fc1")(x)
        return GroupBatchNorm(
            self.bn_group_size, use_scale=False, use_bias=False, dtype=self.dtype, name="bn1"
        )(x, train)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


class SPMixNet(nn.Module):
    """Backbone + heads. Methods follow the data flow: embed -> mix -> encode -> heads.

    The same module serves the query encoder and the key encoder (with its own parameters).
    `query` and `key` take the images of a view and, for SPMix, the partner images and per-patch
    ratios: both are embedded, their tokens mixed (docs/method.md section 6), then encoded.
    """

    num_classes: int
    variant: str = "S/16"
    image_size: int = 224
    proj_hidden: int = 4096
    proj_dim: int = 256
    bn_group_size: int = 0
    dtype: Any = jnp.float32
    init_scheme: str = "timm"  # model.init (models/inits.py)

    def setup(self) -> None:
        self.backbone = ViT(
            self.variant,
            self.image_size,
            dtype=self.dtype,
            bn_group_size=self.bn_group_size,
            init_scheme=self.init_scheme,
            name="backbone",
        )
        heads = dict(dtype=self.dtype, init_scheme=self.init_scheme)
        self.projector = Projector(
            self.proj_hidden, self.proj_dim, self.bn_group_size, **heads, name="projector"
        )
        self.predictor = Predictor(
            self.proj_hidden, self.proj_dim, self.bn_group_size, **heads, name="predictor"
        )
        scheme = inits.scheme(self.init_scheme)
        self.classifier = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            kernel_init=scheme.head_kernel,
            bias_init=scheme.head_bias(decode_variant(self.variant).width),
            name="classifier",
        )

    def embed(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Images (B, H, W, 3) -> patch tokens (B, P, D)."""
        return self.backbone.embed(images, train)

    def mixed_tokens(
        self,
        images: jax.Array,
        train: bool,
        partner: jax.Array | None = None,
        ratios: jax.Array | None = None,
    ) -> jax.Array:
        """Tokens of `images`, mixed per patch with those of `partner` when one is given."""
        tokens = self.embed(images, train)
        if partner is None or ratios is None:
            return tokens
        return mix_tokens(tokens, self.embed(partner, train), ratios)

    def classify_tokens(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Tokens -> (CLS feature, float32 logits)."""
        cls = self.backbone.encode(tokens)
        return cls, self.classifier(cls).astype(jnp.float32)

    def query(
        self,
        images: jax.Array,
        train: bool = True,
        partner: jax.Array | None = None,
        ratios: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Query branch: q = normalize(h(g(cls))), logits = classifier(cls)."""
        cls, logits = self.classify_tokens(self.mixed_tokens(images, train, partner, ratios))
        q = l2_normalize(self.predictor(self.projector(cls, train), train))
        return {"cls": cls, "logits": logits, "features": q}

    def key(
        self,
        images: jax.Array,
        train: bool = True,
        partner: jax.Array | None = None,
        ratios: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Key branch: k = normalize(g(cls)) (no predictor)."""
        cls, logits = self.classify_tokens(self.mixed_tokens(images, train, partner, ratios))
        k = l2_normalize(self.projector(cls, train))
        return {"cls": cls, "logits": logits, "features": k}

    def logits(self, images: jax.Array) -> jax.Array:
        """Inference: raw classifier logits (no prior; BatchNorm in inference mode)."""
        return self.classify_tokens(self.embed(images, False))[1]

    def features(self, images: jax.Array) -> jax.Array:
        """Inference: the backbone's CLS feature after the final LayerNorm, float32."""
        return self.backbone.encode(self.embed(images, False)).astype(jnp.float32)

    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        # Touches every submodule so that `init` creates all parameters.
        out = self.query(images, train)
        out["key_features"] = l2_normalize(self.projector(out["cls"], train))
        return out


COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_model(config: ml_collections.ConfigDict) -> SPMixNet:
    """The network a config describes (query and key encoders share this module)."""
    return SPMixNet(
        num_classes=config.data.num_classes,
        variant=config.model.variant,
        image_size=config.model.image_size,
        proj_hidden=config.model.proj_hidden,
        proj_dim=config.model.proj_dim,
        bn_group_size=config.model.bn_group_size,
        dtype=COMPUTE_DTYPES[config.model.dtype],
        init_scheme=config.model.get("init", "timm"),
    )
