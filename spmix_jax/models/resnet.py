"""ResNet-D trunk (stem + stages 1-3, stride 16) that feeds the hybrid ViT (docs/method.md §7).

Reproduces timm's `resnet50d` as used by `vit_small_resnet50d_s16_224`: a deep stem of three 3x3
convolutions (32-32-64, the first with stride 2) each followed by BatchNorm + ReLU, a 3x3 max-pool
with stride 2, then stages of ResNet-D bottlenecks (stride on the 3x3 convolution; the shortcut
of a strided block average-pools 2x2 with ceil mode before its 1x1 convolution). Padding is
explicit and symmetric, as PyTorch pads, so pretrained timm weights give timm's activations.

BatchNorm (eps 1e-5, PyTorch momentum 0.1) uses batch statistics and updates its running
averages in the `batch_stats` collection when `train=True`, and the running averages otherwise;
`bn_group_size` takes those statistics over groups of that many images, as per-device BatchNorm
in data-parallel PyTorch does (0: the global batch).
PyTorch updates the running variance with the unbiased batch variance, Flax with the biased one;
inference is identical, the running averages drift by a factor n / (n - 1) of the update.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spmix_jax.models.batchnorm import GroupBatchNorm


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
    stem_width: int  # widths of the stem convolutions: w, w, 2w
    depths: tuple[int, ...]  # bottleneck blocks per stage
    widths: tuple[int, ...]  # bottleneck widths per stage (outputs are 4x)


TRUNKS = {
    "R50d": TrunkSpec(32, (3, 4, 6), (64, 128, 256)),
    # A reduced-width trunk with the same structure and stride, for tests.
    "Rmu": TrunkSpec(8, (1, 1, 1), (8, 16, 32)),
}
EXPANSION = 4
TRUNK_STRIDE = 16  # stem conv 2 x max-pool 2 x stage 2 (2) x stage 3 (2)

_PAD1 = ((1, 1), (1, 1))
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # kaiming, as timm


def avg_pool_ceil(x: jax.Array, stride: int) -> jax.Array:
    """AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) on NHWC.

    A window that runs past the bottom/right edge averages only the pixels it covers.
    """
    b, h, w, c = x.shape
    ph, pw = -h % stride, -w % stride
    x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    gh, gw = (h + ph) // stride, (w + pw) // stride
    total = x.reshape(b, gh, stride, gw, stride, c).sum(axis=(2, 4))
    # Pixels each window covers inside the image (static), so padding never counts.
    covered = np.pad(np.ones((h, w), np.float32), ((0, ph), (0, pw)))
    count = covered.reshape(gh, stride, gw, stride).sum(axis=(1, 3))
    return total / jnp.asarray(count, x.dtype)[None, :, :, None]


class BottleneckD(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 bottleneck with a ResNet-D shortcut."""

    width: int
    stride: int = 1
    bn_group_size: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = self.width * EXPANSION
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        norm = functools.partial(GroupBatchNorm, self.bn_group_size, dtype=self.dtype)
        y = nn.relu(norm(name="bn1")(conv(self.width, (1, 1), name="conv1")(x), train))
        y = conv(self.width, (3, 3), strides=self.stride, padding=_PAD1, name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y, train))
        y = conv(out, (1, 1), name="conv3")(y)
        # Residual branch starts near zero, as timm's zero_init_last.
        y = norm(scale_init=nn.initializers.zeros, name="bn3")(y, train)
        shortcut = x
        if self.stride > 1 or x.shape[-1] != out:
            if self.stride > 1:
                shortcut = avg_pool_ceil(shortcut, self.stride)
            shortcut = conv(out, (1, 1), name="down_conv")(shortcut)
            shortcut = norm(name="down_bn")(shortcut, train)
        return nn.relu(y + shortcut)


class ResNetTrunk(nn.Module):
    """Images (B, H, W, 3) -> feature map (B, H/16, W/16, 4 * widths[-1])."""

    trunk: str = "R50d"
    bn_group_size: int = 0
    dtype: Any = jnp.float32

    @property
    def spec(self) -> TrunkSpec:
        if self.trunk not in TRUNKS:
            raise ValueError(f"Unknown trunk {self.trunk!r}; known: {sorted(TRUNKS)}")
        return TRUNKS[self.trunk]

    @property
    def out_channels(self) -> int:
        return self.spec.widths[-1] * EXPANSION

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        spec = self.spec
        x = x.astype(self.dtype)
        sw = spec.stem_width
        for i, (width, stride) in enumerate(((sw, 2), (sw, 1), (2 * sw, 1)), start=1):
            x = nn.Conv(
                width,
                (3, 3),
                strides=stride,
                padding=_PAD1,
                use_bias=False,
                dtype=self.dtype,
                kernel_init=_conv_init,
                name=f"stem_conv{i}",
            )(x)
            x = GroupBatchNorm(self.bn_group_size, dtype=self.dtype, name=f"stem_bn{i}")(x, train)
            x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_PAD1)
        for s, (depth, width) in enumerate(zip(spec.depths, spec.widths, strict=True), start=1):
            for b in range(depth):
                stride = 2 if (b == 0 and s > 1) else 1
                x = BottleneckD(
                    width, stride, self.bn_group_size, dtype=self.dtype, name=f"layer{s}_{b}"
                )(x, train)
        return x
