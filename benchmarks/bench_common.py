"""Shared pieces of `compare_step.py` and `step_breakdown.py`: configs, cases, environment.

The SPMix case is built exactly as training builds it (`state.create`, `train.jit_train_step`);
the plain case is a ViT classifier on the same backbone (`spmix_jax.models.ViT`) trained with one
view, one forward and backward, cross-entropy and AdamW, jitted with the state donated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
# The checkout whose packages (spmix_jax, configs, input_pipeline) the benchmarks import: this
# repository, or the one that `SPMIX_PACKAGE_ROOT` names (how `compile_breakdown.py --against`
# compiles another revision's step with these scripts; PYTHONPATH cannot do it, as the line
# below puts the root ahead of it). The root goes first, ahead of this folder:
# `benchmarks/input_pipeline.py` would otherwise shadow the `input_pipeline` package.
PACKAGE_ROOT = pathlib.Path(os.environ.get("SPMIX_PACKAGE_ROOT") or REPO).resolve()
if str(PACKAGE_ROOT) in sys.path:
    sys.path.remove(str(PACKAGE_ROOT))
sys.path.insert(0, str(PACKAGE_ROOT))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import common  # noqa: E402
from spmix_jax import losses, optimizer, result_files, sharding, train  # noqa: E402
from spmix_jax import state as state_lib  # noqa: E402
from spmix_jax.config_checks import check_config  # noqa: E402
from spmix_jax.models import ViT, make_model  # noqa: E402
from spmix_jax.models.spmix_net import COMPUTE_DTYPES  # noqa: E402

NUM_CLASSES = 7
NUM_TRAIN = 10015  # shapes the learning-rate schedule only

# Dense bf16 peak (TFLOP/s, no sparsity) per chip, matched against `device_kind` by substring.
# Sources: vendor data sheets (H100/H200 SXM, A100 SXM) and Cloud TPU system architecture pages.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # "TPU v5" without "lite" is v5p
    ("TPU v6 lite", 918.0),
    ("TPU v6e", 918.0),
)


def peak_bf16_tflops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak from `PEAK_BF16_TFLOPS`, or None (CPU, unknown chips)."""
    for name, peak in PEAK_BF16_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def spmix_config(
    *,
    variant: str,
    image_size: int,
    data_size: int,
    batch: int,
    dtype: str,
    saliency: str = "fine_grained",
    key_encoder: str = "ema",
    ratio: str = "patch",
    tiny: bool = False,
    source: str = "frame",
) -> ml_collections.ConfigDict:
    """The paper's config (configs/common.py) at the benchmark's sizes.

    `ratio="random"` draws the per-patch ratios at random, so no saliency map is used and XLA
    drops their computation: the same step without saliency. `source` is `saliency.source`.
    """
    c = common.base_config()
    c.data.name = "synthetic"
    c.data.num_classes = NUM_CLASSES
    c.data.image_size = data_size
    c.input.batch_size = batch
    c.model.variant = variant
    c.model.image_size = image_size
    c.model.dtype = dtype
    c.model.key_encoder = key_encoder
    c.saliency.method = saliency
    c.saliency.source = source
    c.mix.ratio = ratio
    if tiny:
        c.model.proj_hidden = 16
        c.model.proj_dim = 8
        c.loss.queue_size = 8 * batch
    check_config(c)
    return c


def class_counts(
    num_classes: int = NUM_CLASSES, num_train: int = NUM_TRAIN, imbalance: float = 50.0
) -> np.ndarray:
    """A long-tailed class histogram, n_c ~ imbalance^(-c/(C-1)) (only the log-prior reads it)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shape = np.power(float(max(imbalance, 1.0)), -np.arange(num_classes) / max(num_classes - 1, 1))
    return np.maximum(1, np.round(num_train * shape / shape.sum())).astype(np.int64)


def pair_batch(
    rng: np.random.Generator, size: int, batch: int, num_classes: int = NUM_CLASSES
) -> dict[str, np.ndarray]:
    """A uint8 pair batch with the keys and dtypes the training iterator yields."""
    out = {}
    for who in ("primary", "secondary"):
        out[f"{who}_image"] = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        out[f"{who}_label"] = rng.integers(0, num_classes, batch).astype(np.int32)
        out[f"{who}_index"] = rng.integers(0, 1 << 20, batch).astype(np.int32)
    return out


def build_spmix(
    config: ml_collections.ConfigDict, num_train: int = NUM_TRAIN, imbalance: float = 50.0
) -> dict[str, Any]:
    """Model, optimizer, state, jitted step and a device batch, as `train.py` builds them."""
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = optimizer.make_optimizer(config, num_train)
    state = state_lib.create(config, model, tx, mesh, jax.random.PRNGKey(config.seed))
    shardings = jax.tree.map(lambda x: x.sharding, state)
    counts = class_counts(config.data.num_classes, num_train, imbalance)
    log_prior = losses.class_log_prior(
        counts, primary=config.mix.primary, balanced_q=config.input.balanced_q
    )
    step = train.jit_train_step(config, model, tx, log_prior, num_train, shardings, mesh)
    # This host's rows of one global batch (all of it in a single-process run).
    rng = np.random.default_rng(config.seed + jax.process_index())
    rows = config.input.batch_size // jax.process_count()
    host = pair_batch(rng, config.data.image_size, rows, config.data.num_classes)
    batch = sharding.global_batch(host, mesh)
    return dict(
        mesh=mesh,
        model=model,
        tx=tx,
        state=state,
        step=step,
        batch=batch,
        log_prior=log_prior,
        host_batch=host,
    )


class PlainViTClassifier(nn.Module):
    """The SPMix backbone (`spmix_jax.models.ViT`) with a linear head: a plain classifier."""

    variant: str
    image_size: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        feature = ViT(self.variant, self.image_size, dtype=self.dtype, name="backbone")(images)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(feature).astype(
            jnp.float32
        )


def build_plain_jax(
    *, variant: str, image_size: int, batch: int, dtype: str, seed: int = 0
) -> dict[str, Any]:
    """A plain jitted, donated ViT step: one view, forward, backward, cross-entropy, AdamW."""
    model = PlainViTClassifier(variant, image_size, NUM_CLASSES, COMPUTE_DTYPES[dtype])
    tx = optax.adamw(1e-4, weight_decay=0.05)

    @jax.jit
    def init(rng: jax.Array) -> tuple[Any, Any]:
        params = model.init(rng, jnp.zeros((1, image_size, image_size, 3), jnp.float32))["params"]
        return params, tx.init(params)

    def step(train_state: tuple[Any, Any], images: jax.Array, labels: jax.Array):
        params, opt_state = train_state

        def loss_fn(p: Any) -> jax.Array:
            logits = model.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.standard_normal((batch, image_size, image_size, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch).astype(np.int32))
    return dict(
        state=init(jax.random.PRNGKey(seed)),
        step=jax.jit(step, donate_argnums=(0,)),
        images=images,
        labels=labels,
    )


def flops(compiled: Any) -> float | None:
    """XLA's flop estimate for one call of a compiled program (None where unavailable)."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def memory(compiled: Any) -> dict[str, int] | None:
    """XLA's static memory plan of a compiled program: arguments, outputs, temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    names = ("argument", "output", "temp", "alias", "generated_code")
    return {f"{n}_bytes": int(getattr(m, f"{n}_size_in_bytes", 0)) for n in names}


def peak_device_bytes() -> int | None:
    """Device memory high-water mark of device 0 (GPU/TPU; None on CPU)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment() -> dict[str, Any]:
    """Device, versions, date and load: what a result needs to be compared with another."""
    import flax

    device = jax.devices()[0]
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "host": platform.node(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "load_average_1min_start": round(os.getloadavg()[0], 2),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return str(jaxlib.__version__)
    except Exception:
        return None


def sig(value: float | None, digits: int = 4) -> float | None:
    """value to `digits` significant digits (None stays None)."""
    return None if value is None else float(f"{value:.{digits}g}")


def emit(report: dict[str, Any], out: str = "") -> None:
    """Prints the JSON report and, when `out` is given, writes it there too."""
    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if out:
        result_files.write_text(out, text + "\n")


def step_parser(description: str, batch_help: str) -> argparse.ArgumentParser:
    """The flags every step benchmark shares: model, sizes, precision, dry run, output."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--variant", default="S/16")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--data_size", type=int, default=0, help="stored image size (0: the image size)")
    p.add_argument("--batch", type=int, default=8, help=batch_help)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--dry_run", action="store_true", help="tiny sizes and few steps (a test)")
    p.add_argument("--out", default="", help="also write the JSON here")
    return p
