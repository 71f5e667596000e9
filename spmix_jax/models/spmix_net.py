"""The whole SPMix network: ViT backbone, projector, predictor, classifier (docs/method.md §7)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from spmix_jax.mixing import mix_tokens
from spmix_jax.models.vit import ViT


class GroupBatchNorm(nn.Module):
    """BatchNorm whose statistics are taken over the global batch or over groups of it.

    `group_size == 0` uses the whole (global, possibly sharded) batch, which under `jax.jit` is a
    cross-device reduction. A positive `group_size` splits the batch into consecutive groups of
    that many rows (as per-device BatchNorm does in data-parallel PyTorch) and normalises each
    group with its own statistics; running averages use the mean over groups.
    """

    group_size: int = 0
    use_scale: bool = True
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
            grouped = xf.reshape(b // g, g, features)
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
            y = y * self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return y.astype(self.dtype)


class Projector(nn.Module):
    """Linear-BN-ReLU x2, Linear, BN without affine; all Linear layers without bias."""

    hidden: int = 4096
    out: int = 256
    bn_group_size: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(2):
            x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name=f"fc{i}")(x)
            x = GroupBatchNorm(self.bn_group_size, dtype=self.dtype, name=f"bn{i}")(x, train)
            x = nn.relu(x)
        x = nn.Dense(self.out, use_bias=False, dtype=self.dtype, name="fc2")(x)
        return GroupBatchNorm(
            self.bn_group_size, use_scale=False, use_bias=False, dtype=self.dtype, name="bn2"
        )(x, train)


class Predictor(nn.Module):
    """Linear-BN-ReLU, Linear, BN without affine (query branch only)."""

    hidden: int = 4096
    out: int = 256
    bn_group_size: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="fc0")(x)
        x = nn.relu(GroupBatchNorm(self.bn_group_size, dtype=self.dtype, name="bn0")(x, train))
        x = nn.Dense(self.out, use_bias=False, dtype=self.dtype, name="fc1")(x)
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

    def setup(self) -> None:
        self.backbone = ViT(self.variant, self.image_size, dtype=self.dtype, name="backbone")
        self.projector = Projector(
            self.proj_hidden, self.proj_dim, self.bn_group_size, self.dtype, name="projector"
        )
        self.predictor = Predictor(
            self.proj_hidden, self.proj_dim, self.bn_group_size, self.dtype, name="predictor"
        )
        self.classifier = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")

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
    )
