"""Pretrained starts: load public ViT / ResNet-50d weights (or a run of this project) into SPMix.

`config.model.init_from` names the file (see docs/pretrained.md for which to download):

* `.safetensors` in timm's layouts: a ViT (`vit_*`), a hybrid ViT with a ResNet-D trunk
  (`vit_*_resnet50d_*`, trunk under `patch_embed.backbone.`), or a bare `resnet50d` whose stem and
  stages 1-3 fill the trunk of a hybrid variant (`layer4` and `fc` are ignored);
* `.npz` in the original ViT layout (`Transformer/encoderblock_N`, position embedding with its
  CLS row) or in big_vision's (`params/` prefix, position embedding without a CLS row, blocks
  optionally stacked as `encoderblock` with a leading depth axis);
* a workdir or Orbax checkpoint of this project (the `state` item under `<workdir>/checkpoints`
  or `<workdir>/best`).

The backbone is loaded; the projector, predictor and classifier start fresh unless
`model.init_heads` asks for them (project checkpoints only). Everything is converted and checked
before anything is returned, so a bad file never leaves a half-loaded model; every load prints
one line naming the file, the layout, and what was loaded, left at init and ignored.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from flax import traverse_util

from spmix_jax.errors import NotFoundError, UserError
from spmix_jax.models import decode_variant, make_model

LAYOUTS = {
    "timm ViT": "timm ViT .safetensors (cls_token, pos_embed, patch_embed.proj.*, blocks.N.*, "
    "norm.*)",
    "timm hybrid ViT": "timm hybrid ViT .safetensors (a ViT whose ResNet-D trunk is under "
    "patch_embed.backbone.*)",
    "timm resnet50d": "timm resnet50d .safetensors (conv1.*, bn1.*, layer1-3.* fill the trunk; "
    "layer4.* and fc.* are ignored)",
    "original ViT npz": "original ViT .npz (embedding/, cls, Transformer/encoderblock_N/..., "
    "Transformer/posembed_input/pos_embedding with the CLS row)",
    "big_vision npz": "big_vision ViT .npz (params/ prefix, pos_embedding without a CLS row, "
    "Transformer/encoderblock_N or stacked Transformer/encoderblock)",
    "checkpoint": "a workdir or Orbax checkpoint of this project (<workdir>/checkpoints or "
    "<workdir>/best, item 'state')",
}
HEADS = ("projector", "predictor", "classifier")

Key = tuple[str, ...]


@dataclasses.dataclass
class Entry:
    """One converted array and where it came from (for messages)."""

    value: np.ndarray
    source: str
    source_shape: tuple[int, ...]


@dataclasses.dataclass
class Converted:
    """A file turned into this project's variable paths, before it touches the model."""

    layout: str
    entries: dict[Key, Entry]  # ('params' | 'batch_stats', 'backbone', ...) -> Entry
    ignored: list[str]
    parts: set[str]  # 'trunk', 'vit', 'heads': which parts of the model the file fills
    optional: set[Key] = dataclasses.field(default_factory=set)  # may stay at init


def _known_layouts() -> str:
    return "; ".join(LAYOUTS.values())


class PretrainedError(UserError):
    """A `model.init_from` that cannot be read or does not fit the model; the message names it."""


def _unknown_layout(path: str, why: str) -> PretrainedError:
    return PretrainedError(
        f"{path}: {why}; no known layout matches. Known layouts: {_known_layouts()}."
    )


# --- timm (.safetensors) ----------------------------------------------------------------------


def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
    return np.transpose(w, (2, 3, 1, 0)) if w.ndim == 4 else w


_BN = {"weight": ("params", "scale"), "bias": ("params", "bias")}
_BN.update({"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")})


def _trunk_key(key: str) -> tuple[str, str, str] | str | None:
    """timm ResNet-D key -> (collection, module path, leaf); 'ignore' for layer4/fc; None if odd."""
    if key.endswith("num_batches_tracked") or re.match(r"(layer4|fc)\.", key):
        return "ignore"
    m = re.fullmatch(r"conv1\.([036])\.weight", key)
    if m:
        return "params", f"stem_conv{'036'.index(m[1]) + 1}", "kernel"
    m = re.fullmatch(r"(conv1\.1|conv1\.4|bn1)\.(weight|bias|running_mean|running_var)", key)
    if m:
        bn = {"conv1.1": "stem_bn1", "conv1.4": "stem_bn2", "bn1": "stem_bn3"}[m[1]]
        return _BN[m[2]][0], bn, _BN[m[2]][1]
    m = re.fullmatch(r"layer([123])\.(\d+)\.(conv[123]|downsample\.1)\.weight", key)
    if m:
        mod = "down_conv" if m[3] == "downsample.1" else m[3]
        return "params", f"layer{m[1]}_{m[2]}/{mod}", "kernel"
    m = re.fullmatch(
        r"layer([123])\.(\d+)\.(bn[123]|downsample\.2)\.(weight|bias|running_mean|running_var)",
        key,
    )
    if m:
        mod = "down_bn" if m[3] == "downsample.2" else m[3]
        return _BN[m[4]][0], f"layer{m[1]}_{m[2]}/{mod}", _BN[m[4]][1]
    return None


def _split_heads(w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reshapes to the per-head `shape` when sizes allow (else keeps it, for the shape check)."""
    try:
        return w.reshape(shape)
    except ValueError:
        return w


def _vit_timm(
    sd: dict[str, np.ndarray], heads: int, out: dict[Key, Entry], ignored: list[str]
) -> list[str]:
    """Converts timm ViT keys into `out`; returns the keys it does not understand."""
    odd = []

    def put(path: str, value: np.ndarray, source: str) -> None:
        col, _, rest = path.partition(":")
        out[(col, "backbone", *rest.split("/"))] = Entry(value, source, tuple(sd[source].shape))

    for key, w in sd.items():
        if key.startswith("patch_embed.backbone."):
            continue
        if key.startswith("head.") or key == "head":
            ignored.append(key)
            continue
        if key == "cls_token":
            put("params:cls", w, key)
        elif key == "pos_embed":
            put("params:pos_embedding", w, key)
        elif key == "patch_embed.proj.weight":
            put("params:embedding/kernel", _conv(w), key)
        elif key == "patch_embed.proj.bias":
            put("params:embedding/bias", w, key)
        elif key in ("norm.weight", "norm.bias"):
            put(f"params:encoder_norm/{'scale' if key.endswith('weight') else 'bias'}", w, key)
        else:
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key)
            if not m:
                odd.append(key)
                continue
            blk, mod, kind = f"block{m[1]}", m[2], m[3]
            if mod in ("norm1", "norm2"):
                put(f"params:{blk}/{mod}/{'scale' if kind == 'weight' else 'bias'}", w, key)
            elif mod in ("mlp.fc1", "mlp.fc2"):
                leaf = "kernel" if kind == "weight" else "bias"
                put(f"params:{blk}/mlp/{mod[4:]}/{leaf}", w.T if kind == "weight" else w, key)
            elif mod == "attn.qkv":  # fused (3D, D) -> query/key/value (D, heads, head_dim)
                width = w.shape[0] // 3
                for i, name in enumerate(("query", "key", "value")):
                    part = w[i * width : (i + 1) * width]
                    if kind == "weight":
                        part = _split_heads(part.T, (part.shape[1], heads, width // heads))
                    else:
                        part = _split_heads(part, (heads, width // heads))
                    leaf = "kernel" if kind == "weight" else "bias"
                    put(f"params:{blk}/attn/{name}/{leaf}", part, key)
            elif mod == "attn.proj":  # (D, D) -> (heads, head_dim, D)
                if kind == "weight":
                    kernel = _split_heads(w.T, (heads, w.shape[1] // heads, w.shape[0]))
                    put(f"params:{blk}/attn/out/kernel", kernel, key)
                else:
                    put(f"params:{blk}/attn/out/bias", w, key)
            else:
                odd.append(key)
    # timm ViTs built with qkv_bias=False have no q/k/v biases: zeros are the same function.
    for path in list(out):
        if path[-1] == "kernel" and path[-2] == "query":
            for name in ("query", "key", "value"):
                bias = (*path[:-2], name, "bias")
                if bias not in out:
                    k = out[(*path[:-2], name, "kernel")]
                    zeros = np.zeros(k.value.shape[1:], k.value.dtype)
                    out[bias] = Entry(zeros, k.source + " (no bias: zeros)", zeros.shape)
    return odd


def _trunk_timm(
    sd: dict[str, np.ndarray], prefix: str, out: dict[Key, Entry], ignored: list[str]
) -> list[str]:
    """Converts timm ResNet-D keys under `prefix` into the trunk; returns keys it cannot place."""
    odd = []
    for full, w in sd.items():
        if not full.startswith(prefix):
            continue
        where = _trunk_key(full[len(prefix) :])
        if where is None:
            odd.append(full)
        elif isinstance(where, str):  # "ignore"
            ignored.append(full)
        else:
            col, mod, leaf = where
            key = (col, "backbone", "trunk", *mod.split("/"), leaf)
            out[key] = Entry(_conv(w), full, tuple(w.shape))
    return odd


def _from_safetensors(path: str, data: bytes, heads: int) -> Converted:
    import safetensors.numpy  # only needed for .safetensors starts

    try:
        # safetensors hands its tensors back in an order that changes from process to process:
        # sorted, every start converts (and reports the first mismatch) the same way.
        sd = dict(sorted(safetensors.numpy.load(data).items()))
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise _unknown_layout(path, f"not a readable .safetensors file ({e})") from e
    out: dict[Key, Entry] = {}
    ignored: list[str] = []
    if "patch_embed.backbone.conv1.0.weight" in sd and "patch_embed.proj.weight" in sd:
        layout, parts = "timm hybrid ViT", {"trunk", "vit"}
        odd = _trunk_timm(sd, "patch_embed.backbone.", out, ignored)
        odd += _vit_timm(sd, heads, out, ignored)
    elif "patch_embed.proj.weight" in sd and any(k.startswith("blocks.") for k in sd):
        if any(k.startswith("patch_embed.backbone.") for k in sd):
            raise _unknown_layout(path, "its hybrid trunk is not a ResNet-D (resnet50d) trunk")
        layout, parts = "timm ViT", {"vit"}
        odd = _vit_timm(sd, heads, out, ignored)
    elif "conv1.0.weight" in sd and "layer1.0.conv1.weight" in sd:
        layout, parts = "timm resnet50d", {"trunk"}
        odd = _trunk_timm(sd, "", out, ignored)
    else:
        raise _unknown_layout(path, f"its keys ({', '.join(sorted(sd)[:5])}, ...) are not timm's")
    if odd:
        raise PretrainedError(
            f"{path}: layout {layout!r} but {len(odd)} keys have no place in this model, first "
            f"{odd[:5]} (unsupported options such as layer scale or q/k norm?)."
        )
    return Converted(layout, out, ignored, parts)


# --- ViT .npz (original and big_vision) -------------------------------------------------------

_MHA = "MultiHeadDotProductAttention"
_NPZ_BLOCK = {  # layout: (first norm, attention, second norm, mlp)
    "original ViT npz": ("LayerNorm_0", f"{_MHA}_1", "LayerNorm_2", "MlpBlock_3"),
    "big_vision npz": ("LayerNorm_0", f"{_MHA}_0", "LayerNorm_1", "MlpBlock_0"),
}


def _npz_block_leaf(layout: str, rest: str) -> str | None:
    """'LayerNorm_0/scale' -> 'norm1/scale' etc. in our block, or None when unknown."""
    ln1, mha, ln2, mlp = _NPZ_BLOCK[layout]
    m = re.fullmatch(r"([^/]+)/(.+)", rest)
    if not m:
        return None
    mod, leaf = m[1], m[2]
    if mod == ln1 and leaf in ("scale", "bias"):
        return f"norm1/{leaf}"
    if mod == ln2 and leaf in ("scale", "bias"):
        return f"norm2/{leaf}"
    if mod == mha and re.fullmatch(r"(query|key|value|out)/(kernel|bias)", leaf):
        return f"attn/{leaf}"
    m2 = re.fullmatch(r"Dense_([01])/(kernel|bias)", leaf)
    if mod == mlp and m2:
        return f"mlp/fc{int(m2[1]) + 1}/{m2[2]}"
    return None


def _from_npz(path: str, data: bytes) -> Converted:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:  # noqa: BLE001  (zipfile / numpy raise many error types)
        raise _unknown_layout(path, f"not a readable .npz file ({e})") from e
    prefix, layout = None, ""
    for p, name in (
        ("params/", "big_vision npz"),
        ("params/img/", "big_vision npz"),
        ("opt/target/", "original ViT npz"),
        ("", "original ViT npz"),
    ):
        if f"{p}embedding/kernel" in arrays and f"{p}Transformer/encoder_norm/scale" in arrays:
            prefix, layout = p, name
            break
    if prefix is None:
        raise _unknown_layout(path, f"its keys ({', '.join(sorted(arrays)[:5])}, ...) are unknown")
    if layout == "original ViT npz" and f"{prefix}pos_embedding" in arrays:
        layout = "big_vision npz"  # big_vision files saved without the params/ prefix
    out: dict[Key, Entry] = {}
    ignored: list[str] = []
    odd: list[str] = []
    optional: set[Key] = set()

    def put(ours: str, value: np.ndarray, source: str) -> None:
        out[("params", "backbone", *ours.split("/"))] = Entry(
            value, source, tuple(arrays[source].shape)
        )

    for key, w in arrays.items():
        if not key.startswith(prefix):
            ignored.append(key)
            continue
        rest = key[len(prefix) :]
        if rest in ("embedding/kernel", "embedding/bias", "cls"):
            put(rest, w, key)
        elif rest in ("Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"):
            put(f"encoder_norm/{rest.rsplit('/', 1)[1]}", w, key)
        elif rest in (
            "Transformer/posembed_input/pos_embedding",
            "Transformer/pos_embedding",
            "pos_embedding",
        ):
            n = w.shape[1]
            if int(math.isqrt(n)) ** 2 == n:
                # big_vision adds positions before prepending CLS: a zero CLS row is the same.
                w = np.concatenate([np.zeros_like(w[:, :1]), w], axis=1)
            put("pos_embedding", w, key)
        elif re.match(r"(head|pre_logits|MAPHead_\d+)(/|$)", rest):
            ignored.append(key)
        elif m := re.fullmatch(r"Transformer/encoderblock_(\d+)/(.+)", rest):
            leaf = _npz_block_leaf(layout, m[2])
            if leaf is None:
                odd.append(key)
            else:
                put(f"block{m[1]}/{leaf}", w, key)
        elif m := re.fullmatch(r"Transformer/encoderblock/(.+)", rest):
            leaf = _npz_block_leaf(layout, m[1])
            if leaf is None:
                odd.append(key)
                continue
            for i in range(w.shape[0]):  # stacked (scanned) blocks: leading depth axis
                put(f"block{i}/{leaf}", w[i], key)
        else:
            odd.append(key)
    if odd:
        raise PretrainedError(
            f"{path}: layout {layout!r} but keys {odd[:5]} have no place in a ViT."
        )
    if layout == "big_vision npz":
        optional.add(("params", "backbone", "cls"))  # GAP / MAP models have no CLS token
    return Converted(layout, out, ignored, {"vit"}, optional)


# --- this project's checkpoints ---------------------------------------------------------------


def _checkpoint_state_dir(path: epath.Path) -> epath.Path | None:
    """A workdir, a manager directory, a step directory or a `state` item -> the `state` item."""
    if (path / "_METADATA").exists() or (path / "_sharding").exists():
        return path
    if (path / "state").is_dir():
        return path / "state"
    for sub in ("best", "checkpoints"):  # workdir: best if evaluated, else the latest step
        found = _checkpoint_state_dir(path / sub) if (path / sub).is_dir() else None
        if found is not None:
            return found
    steps = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
    if steps:
        return _checkpoint_state_dir(max(steps, key=lambda p: int(p.name)))
    return None


def _from_checkpoint(path: str, init_heads: bool) -> Converted:
    import orbax.checkpoint as ocp  # only needed for checkpoint starts

    state_dir = _checkpoint_state_dir(epath.Path(path))
    if state_dir is None:
        raise _unknown_layout(path, "the directory holds no Orbax 'state' item")
    checkpointer = ocp.StandardCheckpointer()
    try:
        # Restore onto one device whatever topology wrote it (a raw restore refuses a mismatch).
        tree = checkpointer.metadata(state_dir).item_metadata.tree
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree
        )
        state = jax.device_get(checkpointer.restore(state_dir, target))
    except Exception as e:  # noqa: BLE001  (orbax / tensorstore raise many error types)
        raise PretrainedError(
            f"{path}: could not restore the checkpoint at {state_dir} ({e})."
        ) from e
    if not isinstance(state, dict) or "backbone" not in (state.get("params") or {}):
        raise _unknown_layout(path, f"{state_dir} has no params/backbone")
    parts = {"vit"}
    wanted = ["backbone"]
    if init_heads:
        wanted += list(HEADS)
        parts.add("heads")
    out: dict[Key, Entry] = {}
    for col in ("params", "batch_stats"):
        tree = state.get(col) or {}
        for name in wanted:
            if name not in tree:
                if col == "params":
                    raise PretrainedError(f"{path}: the checkpoint has no params/{name}.")
                continue
            for sub, v in traverse_util.flatten_dict(tree[name]).items():
                key = (col, name, *sub)
                v = np.asarray(v)
                out[key] = Entry(v, "/".join(key), tuple(v.shape))
    ignored = sorted(k for k in state if k not in ("params", "batch_stats"))
    ignored += [f"params/{k}" for k in state["params"] if k not in wanted]
    has_trunk = any(k[2:3] == ("trunk",) for k in out if k[1] == "backbone")
    if has_trunk:
        parts.add("trunk")
    return Converted("checkpoint", out, ignored, parts)


# --- checking and applying --------------------------------------------------------------------


def _grid(n: int) -> int | None:
    """Side of the square grid of a position embedding with a CLS row, or None."""
    g = math.isqrt(n - 1)
    return g if n > 1 and g * g == n - 1 else None


def resample_pos_embedding(pos: np.ndarray, tokens: int) -> np.ndarray:
    """(1, 1 + g*g, D) -> (1, tokens, D): bilinear over the grid, CLS row kept.

    Uses `jax.image.resize(..., "bilinear", antialias=False)` (half-pixel centres), which equals
    PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`, i.e. timm's
    `resample_abs_pos_embed` as timm calls it for .npz files; timm's default for its own
    checkpoints is bicubic with antialias, which differs slightly.
    """
    g_old, g_new = _grid(pos.shape[1]), _grid(tokens)
    if g_old is None or g_new is None:
        raise PretrainedError(f"cannot resample position embedding {pos.shape} to {tokens} tokens")
    d = pos.shape[-1]
    grid = jnp.asarray(pos[0, 1:], jnp.float32).reshape(g_old, g_old, d)
    grid = jax.image.resize(grid, (g_new, g_new, d), "bilinear", antialias=False)
    out = np.concatenate([pos[0, :1], np.asarray(grid).reshape(g_new * g_new, d)], axis=0)
    return out[None].astype(pos.dtype)


def _part(key: Key) -> str:
    if key[1] in HEADS:
        return "heads"
    return "trunk" if key[2:3] == ("trunk",) else "vit"


def _summary(names: Iterable[str], depth: int = 1, strip: bool = False) -> str:
    """'a/b/c', 'a/d' ... -> 'a (2)' grouped on the first `depth` components."""

    def group(n: str) -> str:
        if n.endswith("num_batches_tracked"):
            return "*.num_batches_tracked"
        parts = re.split(r"[/.]", n)
        while strip and len(parts) > 1 and parts[0] in ("params", "opt", "target", "img"):
            parts = parts[1:]  # checkpoint prefixes say nothing
        return "/".join(parts[:depth])

    counts = collections.Counter(group(n) for n in names)
    return ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"


def _apply(
    path: str, variant: str, variables: dict[str, Any], conv: Converted
) -> tuple[dict[str, Any], str]:
    """Checks every converted array against the model, then returns the loaded variables."""
    flat = traverse_util.flatten_dict({c: variables[c] for c in ("params", "batch_stats")})
    new: dict[Key, Any] = {}
    for key, entry in conv.entries.items():
        name = "/".join(key)
        if key not in flat:
            raise PretrainedError(
                f"{path}: {entry.source} (shape {entry.source_shape}) maps to {name}, which "
                f"model.variant={variant!r} does not have (another depth or variant?)."
            )
        want = tuple(flat[key].shape)
        value = entry.value
        if key[-1] == "pos_embedding" and value.shape != want:
            if value.ndim == 3 and value.shape[2] == want[2] and _grid(value.shape[1]):
                if _grid(want[1]):
                    value = resample_pos_embedding(value, want[1])
        if tuple(value.shape) != want:
            converted = tuple(value.shape)
            as_ours = f" (converted: {converted})" if converted != entry.source_shape else ""
            raise PretrainedError(
                f"{path}: shape mismatch for parameter {name} (from {entry.source}): the file "
                f"has {entry.source_shape}{as_ours}, model.variant={variant!r} needs {want}."
            )
        new[key] = np.asarray(value, dtype=flat[key].dtype)
    missing = [
        k for k in flat if _part(k) in conv.parts and k not in new and k not in conv.optional
    ]
    if missing:
        raise PretrainedError(
            f"{path}: layout {conv.layout!r} fills {sorted(conv.parts)} of "
            f"model.variant={variant!r} but lacks {len(missing)} of its arrays, first "
            f"{'/'.join(missing[0])} (another depth or variant?)."
        )
    left = ["/".join(k) for k in flat if k not in new]
    out = dict(flat)
    out.update(new)
    result = dict(variables)
    result.update(traverse_util.unflatten_dict(out))
    count = sum(int(np.prod(v.shape)) for v in new.values())
    line = (
        f"pretrained: {path} [{conv.layout}]: loaded {len(new)} arrays ({count:,} values); "
        f"left at init {len(left)} arrays: {_summary(left, depth=2)}; "
        f"ignored {len(conv.ignored)} keys: {_summary(conv.ignored, strip=True)}"
    )
    return result, line


def read(path: str, variant: str, init_heads: bool = False) -> Converted:
    """Reads and converts `path` (any known layout); raises naming the file on any problem."""
    p = epath.Path(path)
    if not p.exists():
        raise NotFoundError(f"model.init_from={path!r}: no such file or directory.")
    heads = decode_variant(variant).num_heads
    if p.is_dir():
        conv = _from_checkpoint(path, init_heads)
    else:
        suffix = p.name.rsplit(".", 1)[-1].lower() if "." in p.name else ""
        readers: dict[str, Callable[[bytes], Converted]] = {
            "safetensors": lambda data: _from_safetensors(path, data, heads),
            "npz": lambda data: _from_npz(path, data),
        }
        if suffix not in readers:
            raise _unknown_layout(path, f"unknown file type {suffix or '(none)'!r}")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise PretrainedError(f"model.init_from={path!r} cannot be read: {e}") from e
        conv = readers[suffix](data)
    if init_heads and "heads" not in conv.parts:
        raise PretrainedError(
            f"{path}: model.init_heads=True needs a checkpoint of this project; a "
            f"{conv.layout!r} file has no SPMix heads."
        )
    if "trunk" in conv.parts and not decode_variant(variant).hybrid:
        raise PretrainedError(
            f"{path}: layout {conv.layout!r} holds a ResNet-D trunk but model.variant="
            f"{variant!r} has none; use a hybrid variant such as 'R50d+timm_small/16'."
        )
    return conv


def load_into(config: ml_collections.ConfigDict, variables: dict[str, Any]) -> dict[str, Any]:
    """`variables` with the backbone (and heads if asked) replaced by `config.model.init_from`'s.

    Returns a new dict (host numpy for what was loaded, the given leaves elsewhere); `variables`
    is not modified. An empty `init_from` returns `variables` unchanged.
    """
    path = config.model.init_from
    if not path:
        return variables
    variant = config.model.variant
    conv = read(path, variant, bool(config.model.get("init_heads", False)))
    result, line = _apply(path, variant, variables, conv)
    print(line, flush=True)
    logging.info(line)
    return result


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
    """Fresh SPMix variables ({'params', 'batch_stats'}, host numpy), backbone per `init_from`."""
    variables = _init_fn(make_model(config), config.model.image_size)(rng)
    host = jax.device_get({"params": variables["params"], "batch_stats": variables["batch_stats"]})
    return load_into(config, host)


@functools.lru_cache(maxsize=8)
def _init_fn(model: Any, size: int) -> Callable[[jax.Array], Any]:
    """The jitted `init` on a dummy batch of two (as the train state does), compiled once."""

    def init(rng: jax.Array) -> Any:
        return model.init(rng, jnp.zeros((2, size, size, 3), jnp.float32), train=True)

    return jax.jit(init)


@functools.lru_cache(maxsize=8)
def _features_fn(model: Any) -> Callable[..., jax.Array]:
    return jax.jit(functools.partial(model.apply, method="features"))


def backbone_features(
    config: ml_collections.ConfigDict, variables: dict[str, Any], images: Any
) -> jax.Array:
    """(B, H, W, 3) normalised float images -> (B, D) float32 CLS features after the final norm.

    BatchNorm in inference mode; on timm's weights this equals `forward_features(x)[:, 0]`.
    """
    fn = _features_fn(make_model(config))
    v = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    return fn(v, jnp.asarray(images, jnp.float32)).astype(jnp.float32)
