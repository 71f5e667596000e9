"""Per-image cost of each saliency method (jitted, batched) against OpenCV on one image.

Prints one JSON object. The gradient method's cost is dominated by the model it differentiates;
here that is a small stand-in convolutional classifier (named in the JSON), so the number shows
the overhead of the saliency computation around a backward pass, not the cost with a ViT.

  python benchmarks/saliency_cost.py [--size 224] [--batches 1,32] [--min-seconds 0.5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from spmix_jax import saliency  # noqa: E402

NUM_CLASSES = 7
STAND_IN = "conv 3->32 k8 s4, relu, conv 32->64 k3 s2, relu, global mean, dense 64->7"


def _stand_in_score_fn(key: jax.Array):
    """A small convolutional classifier: images (B, H, W, 3) -> logits (B, 7)."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (8, 8, 3, 32)) * 0.1
    w2 = jax.random.normal(k2, (3, 3, 32, 64)) * 0.05
    w3 = jax.random.normal(k3, (64, NUM_CLASSES)) * 0.1
    dims = ("NHWC", "HWIO", "NHWC")

    def score_fn(x: jax.Array) -> jax.Array:
        h = jax.lax.conv_general_dilated(x, w1, (4, 4), "SAME", dimension_numbers=dims)
        h = jax.lax.conv_general_dilated(jax.nn.relu(h), w2, (2, 2), "SAME", dimension_numbers=dims)
        return jnp.mean(jax.nn.relu(h), axis=(1, 2)) @ w3

    return score_fn


def _time_per_call(fn, *args, min_seconds: float) -> float:
    """Seconds per call after one warm-up (compilation) call; repeats until min_seconds pass."""
    jax.block_until_ready(fn(*args))
    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn(*args))
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= min_seconds:
            return elapsed / calls


def _opencv_ms(image_u8: np.ndarray, min_seconds: float) -> dict[str, float | str] | None:
    try:
        import cv2
    except ImportError:
        return None
    algos = {
        "fine_grained": cv2.saliency.StaticSaliencyFineGrained_create(),
        "spectral_residual": cv2.saliency.StaticSaliencySpectralResidual_create(),
    }
    out = {}
    for name, algo in algos.items():
        algo.computeSaliency(image_u8)
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < min_seconds:
            algo.computeSaliency(image_u8)
            calls += 1
        out[name] = round(1e3 * (time.perf_counter() - start) / calls, 4)
    out["version"] = cv2.__version__
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="timing window per case")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    rng = np.random.default_rng(0)
    score_fn = _stand_in_score_fn(jax.random.key(0))
    results: dict[str, dict[str, float]] = {m: {} for m in saliency.METHODS}
    for b in batches:
        images = jnp.asarray(rng.random((b, args.size, args.size, 3), dtype=np.float32))
        labels = jnp.asarray(rng.integers(0, NUM_CLASSES, b))
        for method in saliency.METHODS:
            fn = jax.jit(
                lambda x, y, method=method: saliency.compute(method, x, score_fn=score_fn, labels=y)
            )
            seconds = _time_per_call(fn, images, labels, min_seconds=args.min_seconds)
            results[method][f"batch_{b}_ms_per_image"] = round(1e3 * seconds / b, 4)

    image_u8 = (rng.random((args.size, args.size)) * 255).astype(np.uint8)
    device = jax.devices()[0]
    report = {
        "image_size": args.size,
        "jax_version": jax.__version__,
        "platform": device.platform,
        "device": device.device_kind,
        "num_devices": jax.device_count(),
        "gradient_model": STAND_IN,
        "jax_ms_per_image": results,
        "opencv_ms_per_image_single": _opencv_ms(image_u8, args.min_seconds),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
