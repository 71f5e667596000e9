"""Throughput of the jitted SPMix train step for a config, on synthetic pair batches.

Builds the model, optimizer, sharded state and donated step exactly as `spmix_jax/train.py` does,
then feeds uint8 pair batches made in numpy (no input pipeline, no JPEG decoding), so the numbers
isolate the device step: views, saliency, ratios, mixing, both encoders, loss, AdamW, EMA, queue.
By default the batches are put on the devices before timing; `--transfer` times the host-to-device
copy of every batch as well. Prints one JSON object (and writes it to `--output` if given).

  python benchmarks/train_step.py --config=configs/tiny.py --steps=5 --warmup=1
  python benchmarks/train_step.py --config=configs/demo.py --compare_saliency
  python benchmarks/train_step.py --config=configs/isic2018.py:variant=B/16 \
      --config.input.batch_size=256 --config.model.dtype=bfloat16 --steps=50
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import bench_common  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from spmix_jax import result_files, saliency, sharding  # noqa: E402
from spmix_jax import step as step_lib  # noqa: E402
from spmix_jax.config_checks import check_config  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    str(REPO / "configs" / "demo.py"),
    "Config file (configs/x.py[:arg]).",
    lock_config=True,
)
flags.DEFINE_integer("steps", 20, "Timed steps per case.", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation, per case.", lower_bound=0)
flags.DEFINE_bool(
    "compare_saliency",
    False,
    "Time the step once per saliency method (and once with mix.method=none as a reference).",
)
flags.DEFINE_bool("transfer", False, "Include the host-to-device copy of each batch in the timing.")
flags.DEFINE_integer(
    "num_train",
    10015,
    "Training-set size used for the LR schedule and total steps only (no effect on speed).",
    lower_bound=1,
)
flags.DEFINE_integer("num_batches", 2, "Distinct synthetic batches, used in turn.", lower_bound=1)
flags.DEFINE_string("profile_dir", "", "If set, write a jax.profiler trace of the timed steps.")
flags.DEFINE_string("output", "", "Also write the JSON report to this path.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
flags.DEFINE_string(
    "compile_cache",
    "",
    "Persistent compilation cache folder, as train.compile_cache (empty: off).",
)
flags.DEFINE_integer(
    "starts",
    1,
    "> 1: run the benchmark this many times, each in a fresh process sharing one compilation "
    "cache (--compile_cache, else a new temporary folder), and report each start's compile time.",
    lower_bound=1,
)


def _sig(value: float | None, unit: float) -> float | None:
    """value / unit to 4 significant digits (None stays None)."""
    return None if value is None else float(f"{value / unit:.4g}")


def _peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def config_summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return {
        "variant": config.model.variant,
        "model_image_size": config.model.image_size,
        "data_image_size": config.data.image_size,
        "global_batch_pairs": config.input.batch_size,
        "saliency_method": config.saliency.method,
        "mix_method": config.mix.method,
        "dtype": config.model.dtype,
        "loss": config.loss.name,
        "key_encoder": config.model.key_encoder,
        "queue_size": config.loss.queue_size,
        "num_classes": config.data.num_classes,
    }


def benchmark_step(
    config: ml_collections.ConfigDict,
    *,
    steps: int,
    warmup: int,
    num_train: int,
    num_batches: int = 2,
    transfer: bool = False,
    profile_dir: str = "",
) -> dict[str, Any]:
    """Compiles and times the train step for one config; returns a JSON-ready dict."""
    check_config(config)
    built = bench_common.build_spmix(config, num_train, config.data.synthetic.imbalance)
    mesh, state, train_step = built["mesh"], built["state"], built["step"]

    rows = config.input.batch_size // jax.process_count()
    rng = np.random.default_rng(config.seed + jax.process_index())
    size, num_classes = config.data.image_size, config.data.num_classes
    host_batches = [
        bench_common.pair_batch(rng, size, rows, num_classes) for _ in range(num_batches)
    ]
    device_batches = [sharding.global_batch(b, mesh) for b in host_batches]

    t0 = time.perf_counter()
    lowered = train_step.lower(state, device_batches[0])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()

    def batch_for(i: int) -> dict[str, jax.Array]:
        if transfer:
            return sharding.global_batch(host_batches[i % num_batches], mesh)
        return device_batches[i % num_batches]

    metrics = None
    for i in range(warmup):
        state, metrics = compiled(state, batch_for(i), train_step.base_key)
    jax.block_until_ready((state, metrics))

    if profile_dir:
        jax.profiler.start_trace(profile_dir)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, batch_for(warmup + i), train_step.base_key)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - start
    if profile_dir:
        jax.profiler.stop_trace()

    loss = step_lib.metrics_to_host(metrics)["loss"]
    steps_per_s = steps / elapsed
    pairs_per_s = steps_per_s * config.input.batch_size
    flops = bench_common.flops(compiled)
    return {
        "config": config_summary(config),
        "lower_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "steps": steps,
        "warmup": warmup,
        "step_ms": round(1e3 * elapsed / steps, 3),
        "steps_per_s": round(steps_per_s, 4),
        "pairs_per_s": round(pairs_per_s, 2),
        "pairs_per_s_per_device": round(pairs_per_s / jax.device_count(), 2),
        "xla_gflops_per_step_per_device": _sig(flops, 1e9),
        "achieved_tflops_per_device": _sig(None if flops is None else flops * steps_per_s, 1e12),
        "peak_bytes_in_use_device0": _peak_bytes(),
        "last_loss": round(loss, 5),
        "includes_host_to_device": transfer,
    }


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "jax_version": jax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def _with(config: ml_collections.ConfigDict, **fields: Any) -> ml_collections.ConfigDict:
    """A copy of the config with dotted fields replaced (`saliency__method=...`)."""
    new = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in fields.items():
        section, name = dotted.split("__")
        new[section][name] = value
    return new


class _CacheEvents:
    """Counts the persistent cache's hits and misses (jax.monitoring events)."""

    def __init__(self) -> None:
        self.hits = self.misses = 0
        jax.monitoring.register_event_listener(self._listen)

    def _listen(self, event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":
            self.misses += 1


def _starts(argv: list[str], starts: int, cache: str) -> dict[str, Any]:
    """Runs this script `starts` times in fresh processes sharing the cache `cache`."""
    import subprocess
    import tempfile

    own = [a for a in argv[1:] if not a.startswith(("--starts", "--output", "--compile_cache"))]
    with tempfile.TemporaryDirectory(prefix="spmix_compile_cache_") as scratch:
        cache = cache or scratch
        runs = []
        for _ in range(starts):
            out = pathlib.Path(scratch) / "start.json"
            command = [sys.executable, argv[0], *own, f"--compile_cache={cache}", f"--output={out}"]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
    keys = ("lower_s", "compile_s", "cache_files", "cache_hits", "cache_misses")
    return {
        **runs[-1],
        "compile_cache": cache,
        "starts": [{k: run.get(k) for k in keys} for run in runs],
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.starts > 1:
        report = _starts(sys.argv, FLAGS.starts, FLAGS.compile_cache)
        _emit(report)
        return
    if FLAGS.distributed:
        jax.distributed.initialize()
    events = _CacheEvents()
    if FLAGS.compile_cache:
        from spmix_jax import compile_cache

        compile_cache.enable(FLAGS.compile_cache, "")
    config = FLAGS.config
    common = dict(
        steps=FLAGS.steps,
        warmup=FLAGS.warmup,
        num_train=FLAGS.num_train,
        num_batches=FLAGS.num_batches,
        transfer=FLAGS.transfer,
    )
    report: dict[str, Any] = {"benchmark": "train_step", **environment()}
    if FLAGS.compare_saliency:
        if config.mix.method not in ("spmix", "saliencymix"):
            raise app.UsageError(
                f"--compare_saliency needs mix.method 'spmix' or 'saliencymix' (the only ones that "
                f"compute saliency); the config has {config.mix.method!r}."
            )
        cases = {}
        for method in saliency.METHODS:
            cases[method] = benchmark_step(_with(config, saliency__method=method), **common)
        cases["no_mix_reference"] = benchmark_step(_with(config, mix__method="none"), **common)
        keys = ("compile_s", "step_ms", "steps_per_s", "pairs_per_s", "pairs_per_s_per_device")
        report["config"] = config_summary(config)
        report["side_by_side"] = {name: {k: case[k] for k in keys} for name, case in cases.items()}
        report["cases"] = cases
    else:
        report.update(benchmark_step(config, profile_dir=FLAGS.profile_dir, **common))
    if FLAGS.compile_cache:
        cache = pathlib.Path(FLAGS.compile_cache)
        report["cache_files"] = len(list(cache.glob("*"))) if cache.is_dir() else 0
        report["cache_hits"], report["cache_misses"] = events.hits, events.misses
    _emit(report)


def _emit(report: dict[str, Any]) -> None:
    text = json.dumps(report, indent=2)
    if jax.process_index() == 0:
        print(text, flush=True)
        if FLAGS.output:
            result_files.write_text(FLAGS.output, text + "\n")


if __name__ == "__main__":
    app.run(main)
