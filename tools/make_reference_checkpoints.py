"""Makes small reference checkpoints and timm's features on them, for tests/test_pretrained.py.

Needs torch, timm and safetensors in an environment of its own (the project does not depend on
torch), e.g.

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm safetensors numpy
    /work/torchvenv/bin/python tools/make_reference_checkpoints.py --out tests/fixtures/pretrained

Every model has random weights and random BatchNorm running statistics. Written files:

* vit_mu8.safetensors: timm ViT (width 32, 2 blocks, 2 heads, MLP 64, patch 8, 32 px) = "mu/8";
* vit_mu8.npz: the same weights in the original ViT .npz layout (checked here by loading it back
  with timm's own .npz reader);
* vit_mu8_bv.npz / vit_mu8_bv_scan.npz: big_vision layout (position embedding without its CLS
  row, so timm's CLS row is zeroed for their features), per-block and stacked blocks;
* hybrid_rmu.safetensors: timm hybrid ViT on a reduced ResNet-D trunk ("Rmu+mu/16", 64 px);
* resnet_rmu.safetensors: a bare reduced ResNet-D with layer4 and fc (as a timm resnet50d file);
* expected.npz: inputs (NHWC) and timm's `forward_features(x)[:, 0]` for each file, the ViT's
  features at 48 px after timm's .npz loader resampled the position embedding, and the bare
  ResNet's layer3 output.

`--full DIR` instead writes full-size files outside the repository: `vit_small_resnet50d_s16_224`
at 64 px and ViT-Ti/16 at 224 px (.safetensors and original .npz) with their expected features.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os

import numpy as np
import safetensors.torch
import timm
import torch
from timm.layers import HybridEmbed
from timm.models._features import FeatureListNet
from timm.models.resnet import Bottleneck, ResNet
from timm.models.vision_transformer import VisionTransformer, _load_weights


def randomise(model: torch.nn.Module, gen: torch.Generator, scale: float = 0.2) -> None:
    """Random weights everywhere, BatchNorm running statistics included (LN/BN scales near 1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):  # LayerNorm scales
                p.copy_(1.0 + 0.1 * noise)
            elif p.ndim == 1:  # biases (BatchNorm scales are set below)
                p.copy_(0.1 * noise)
            elif p.ndim == 4:  # convolutions: fan-in scaled
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(noise * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(noise * scale)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=gen))


def cls_features(model: torch.nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()
        return model.forward_features(x)[:, 0].numpy().astype(np.float32)


def vit_to_npz(model: VisionTransformer, big_vision: bool = False, scan: bool = False) -> dict:
    """timm ViT -> original ViT (or big_vision) .npz arrays, as timm's `_load_weights` reads."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    d = sd["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    hd = d // heads
    pre = "params/" if big_vision else ""
    mha, ln2, mlp = (
        ("_0", "LayerNorm_1", "MlpBlock_0") if big_vision else ("_1", "LayerNorm_2", "MlpBlock_3")
    )
    out = {
        f"{pre}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        f"{pre}embedding/bias": sd["patch_embed.proj.bias"],
        f"{pre}cls": sd["cls_token"],
        f"{pre}Transformer/encoder_norm/scale": sd["norm.weight"],
        f"{pre}Transformer/encoder_norm/bias": sd["norm.bias"],
        f"{pre}head/kernel": sd["head.weight"].T,
        f"{pre}head/bias": sd["head.bias"],
    }
    if big_vision:
        out[f"{pre}pos_embedding"] = sd["pos_embed"][:, 1:]
    else:
        out["Transformer/posembed_input/pos_embedding"] = sd["pos_embed"]
    blocks = []
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        blk = {
            "LayerNorm_0/scale": sd[b + "norm1.weight"],
            "LayerNorm_0/bias": sd[b + "norm1.bias"],
            f"{ln2}/scale": sd[b + "norm2.weight"],
            f"{ln2}/bias": sd[b + "norm2.bias"],
            f"MultiHeadDotProductAttention{mha}/out/kernel": sd[b + "attn.proj.weight"].T.reshape(
                heads, hd, d
            ),
            f"MultiHeadDotProductAttention{mha}/out/bias": sd[b + "attn.proj.bias"],
            f"{mlp}/Dense_0/kernel": sd[b + "mlp.fc1.weight"].T,
            f"{mlp}/Dense_0/bias": sd[b + "mlp.fc1.bias"],
            f"{mlp}/Dense_1/kernel": sd[b + "mlp.fc2.weight"].T,
            f"{mlp}/Dense_1/bias": sd[b + "mlp.fc2.bias"],
        }
        for j, n in enumerate(("query", "key", "value")):
            blk[f"MultiHeadDotProductAttention{mha}/{n}/kernel"] = qkv_w[
                j * d : (j + 1) * d
            ].T.reshape(d, heads, hd)
            blk[f"MultiHeadDotProductAttention{mha}/{n}/bias"] = qkv_b[j * d : (j + 1) * d].reshape(
                heads, hd
            )
        blocks.append(blk)
    if scan:
        for k in blocks[0]:
            out[f"{pre}Transformer/encoderblock/{k}"] = np.stack([blk[k] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            for k, v in blk.items():
                out[f"{pre}Transformer/encoderblock_{i}/{k}"] = v
    return out


def save_safetensors(model: torch.nn.Module, path: str) -> None:
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(sd, path)


def tiny(out: str) -> None:
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    expected = {}
    os.makedirs(out, exist_ok=True)

    # Plain ViT "mu/8" at 32 px, in three layouts.
    vit_args = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=5)
    vit = VisionTransformer(img_size=32, **vit_args).eval()
    randomise(vit, gen)
    x32 = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    expected["x32"] = x32
    expected["vit_mu8"] = cls_features(vit, x32)
    save_safetensors(vit, f"{out}/vit_mu8.safetensors")
    np.savez(f"{out}/vit_mu8.npz", **vit_to_npz(vit))
    back = VisionTransformer(img_size=32, **vit_args).eval()
    _load_weights(back, f"{out}/vit_mu8.npz")
    assert np.allclose(cls_features(back, x32), expected["vit_mu8"], atol=1e-6), "npz round trip"
    # timm's .npz loader resamples the 4x4 position grid to 6x6 (bilinear, no antialias).
    vit48 = VisionTransformer(img_size=48, **vit_args).eval()
    _load_weights(vit48, f"{out}/vit_mu8.npz")
    x48 = rng.standard_normal((2, 48, 48, 3)).astype(np.float32)
    expected["x48"] = x48
    expected["vit_mu8_at48"] = cls_features(vit48, x48)
    # big_vision has no position for CLS: the same network with timm's CLS row zeroed.
    bv = copy.deepcopy(vit)
    with torch.no_grad():
        bv.pos_embed[:, 0] = 0
    expected["vit_mu8_bv"] = cls_features(bv, x32)
    np.savez(f"{out}/vit_mu8_bv.npz", **vit_to_npz(vit, big_vision=True))
    np.savez(f"{out}/vit_mu8_bv_scan.npz", **vit_to_npz(vit, big_vision=True, scan=True))

    # Hybrid "Rmu+mu/16" at 64 px: reduced ResNet-D trunk (stages 1-3) + 1x1 projection.
    trunk_args = dict(
        block=Bottleneck,
        layers=(1, 1, 1),
        channels=(8, 16, 32),
        stem_width=8,
        stem_type="deep",
        avg_down=True,
    )
    trunk = FeatureListNet(ResNet(num_classes=0, global_pool="", **trunk_args), out_indices=(3,))
    hybrid = VisionTransformer(
        img_size=64,
        patch_size=1,
        embed_layer=functools.partial(HybridEmbed, backbone=trunk),
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_ratio=2,
        num_classes=5,
    ).eval()
    randomise(hybrid, gen)
    x64 = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected["x64"] = x64
    expected["hybrid_rmu"] = cls_features(hybrid, x64)
    save_safetensors(hybrid, f"{out}/hybrid_rmu.safetensors")

    # A bare reduced ResNet-D with layer4 and fc, as a timm resnet50d file.
    resnet = ResNet(
        num_classes=10, **dict(trunk_args, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64))
    ).eval()
    randomise(resnet, gen)
    with torch.no_grad():
        x = torch.from_numpy(x64).permute(0, 3, 1, 2)
        y = resnet.maxpool(resnet.act1(resnet.bn1(resnet.conv1(x))))
        y = resnet.layer3(resnet.layer2(resnet.layer1(y)))
    expected["resnet_rmu_layer3"] = y.permute(0, 2, 3, 1).numpy().astype(np.float32)
    save_safetensors(resnet, f"{out}/resnet_rmu.safetensors")
    np.savez(f"{out}/expected.npz", **expected)
    total = sum(os.path.getsize(f"{out}/{f}") for f in os.listdir(out))
    print(f"wrote {sorted(os.listdir(out))} to {out}: {total / 1e6:.2f} MB")


def full(out: str) -> None:
    """Full-size checks, too big for the repository."""
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    os.makedirs(out, exist_ok=True)
    expected = {}
    hybrid = timm.create_model("vit_small_resnet50d_s16_224", img_size=64).eval()
    randomise(hybrid, gen, scale=0.05)
    x64 = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    expected["x64"] = x64
    expected["hybrid"] = cls_features(hybrid, x64)
    save_safetensors(hybrid, f"{out}/vit_small_resnet50d_s16_64.safetensors")
    ti = timm.create_model("vit_tiny_patch16_224").eval()
    randomise(ti, gen, scale=0.05)
    x224 = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    expected["x224"] = x224
    expected["ti"] = cls_features(ti, x224)
    save_safetensors(ti, f"{out}/vit_tiny_patch16_224.safetensors")
    np.savez(f"{out}/vit_tiny_patch16_224.npz", **vit_to_npz(ti))
    back = timm.create_model("vit_tiny_patch16_224").eval()
    _load_weights(back, f"{out}/vit_tiny_patch16_224.npz")
    assert np.allclose(cls_features(back, x224), expected["ti"], atol=1e-5), "npz round trip"
    np.savez(f"{out}/expected.npz", **expected)
    print(f"wrote {sorted(os.listdir(out))} to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tests/fixtures/pretrained")
    parser.add_argument("--full", default="", help="write full-size checks here instead")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.full:
        full(args.full)
    else:
        tiny(args.out)


if __name__ == "__main__":
    main()
