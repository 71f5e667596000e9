"""The SPMix train step side by side with a plain JAX/Flax ViT step and a plain PyTorch ViT step.

Same device, batch, resolution and precision for every case. The cases run in alternating rounds
(A B C A B C ...) and each reports the median over rounds, so load from other processes weighs on
all of them alike. Compilation is timed separately and excluded.

- `spmix:<saliency>:<key encoder>`: the SPMix step built exactly as training builds it
  (`state.create`, `train.jit_train_step`: four views, saliency, per-patch ratios, token mixing,
  query and key encoders, loss, AdamW, key-encoder update, enqueue), on uint8 pair batches;
  `spmix:none:<key encoder>` is the same step with random per-patch ratios (`mix.ratio=random`),
  so no saliency map is computed: the difference to a saliency case is what saliency costs
  inside the compiled step, with whatever XLA fuses or overlaps. `<saliency>` alone makes the
  maps on each view (`saliency.source=view`); `<saliency>@frame` makes one map per image from
  its stored frame and carries it through the view warps (`saliency.source=frame`);
- `plain_jax`: the same backbone (`spmix_jax.models.ViT`) with a linear head, one view, one
  forward and backward, cross-entropy, AdamW (optax), jitted and donated: the floor for the model;
- `plain_torch`: a plain PyTorch ViT of the same widths (`scaled_dot_product_attention`, AdamW),
  in a subprocess with `--torch_python` (skipped with a note when torch is not importable).

A SPMix "example" is one pair (two images, four views); a plain example is one image.

    python benchmarks/compare_step.py --variant S/16 --image_size 224 --batch 8 --steps 3 \
        --rounds 5 --out compare.json
    python benchmarks/compare_step.py --dry_run          # tiny sizes, seconds
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from spmix_jax.models import decode_variant  # noqa: E402

SALIENCY = (
    "fine_grained",
    "spectral_residual",
    "gradient",
    "none",
    "fine_grained@frame",
    "spectral_residual@frame",
    "gradient@frame",
)
KEY_ENCODERS = ("ema", "shared")
ALL_CASES = tuple(f"spmix:{s}:{k}" for k in KEY_ENCODERS for s in SALIENCY) + (
    "plain_jax",
    "plain_torch",
)
DEFAULT_TORCH_PYTHON = "/work/torchvenv/bin/python"
DRY_RUN_CASES = "spmix:fine_grained:ema,spmix:none:ema,plain_jax,plain_torch"
TARGETS = {"spmix_over_plain": 1.5, "gradient_over_static": 1.35, "static_saliency_share": 0.05}


class Case:
    """A named step with `run(n) -> seconds` for n back-to-back steps (blocking at the end)."""

    def __init__(self, name: str, examples: int, run: Callable[[int], float], info: dict):
        self.name, self.examples, self.run, self.info = name, examples, run, info
        self.times: list[float] = []  # seconds per step, one per round

    def close(self) -> None:
        closer = self.info.pop("_close", None)
        if closer is not None:
            closer()


def spmix_case(name: str, args: argparse.Namespace, warmup: int) -> Case:
    _, saliency, key = name.split(":")
    method, _, source = saliency.partition("@")
    config = bc.spmix_config(
        variant=args.variant,
        image_size=args.image_size,
        data_size=args.data_size,
        batch=args.batch,
        dtype=args.dtype,
        saliency="fine_grained" if method == "none" else method,
        key_encoder=key,
        ratio="random" if method == "none" else "patch",
        tiny=args.dry_run,
        source=source or "view",
    )
    built = bc.build_spmix(config)
    t0 = time.perf_counter()
    lowered = built["step"].lower(built["state"], built["batch"])
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    holder = {"state": built["state"], "metrics": None}
    batch = built["batch"]

    def run(n: int) -> float:
        start = time.perf_counter()
        state, metrics = holder["state"], holder["metrics"]
        for _ in range(n):
            state, metrics = compiled(state, batch, built["step"].base_key)
        jax.block_until_ready((state, metrics))
        holder["state"], holder["metrics"] = state, metrics
        return time.perf_counter() - start

    run(warmup)
    step_flops = bc.flops(compiled)
    info = {
        "saliency": method,
        "saliency_source": config.saliency.source,
        "key_encoder": key,
        "lower_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "flops_per_step": bc.sig(step_flops),
        "memory_plan": bc.memory(compiled),
        "_loss": lambda: float(np.asarray(jax.device_get(holder["metrics"].compute()["loss"]))),
    }
    return Case(name, args.batch, run, info)


def plain_jax_case(args: argparse.Namespace, warmup: int) -> Case:
    built = bc.build_plain_jax(
        variant=args.variant, image_size=args.image_size, batch=args.batch, dtype=args.dtype
    )
    images, labels = built["images"], built["labels"]
    t0 = time.perf_counter()
    lowered = built["step"].lower(built["state"], images, labels)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    holder: dict[str, Any] = {"state": built["state"], "loss": None}

    def run(n: int) -> float:
        start = time.perf_counter()
        state, loss = holder["state"], holder["loss"]
        for _ in range(n):
            state, loss = compiled(state, images, labels)
        jax.block_until_ready((state, loss))
        holder["state"], holder["loss"] = state, loss
        return time.perf_counter() - start

    run(warmup)
    info = {
        "lower_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "flops_per_step": bc.sig(bc.flops(compiled)),
        "memory_plan": bc.memory(compiled),
        "_loss": lambda: float(holder["loss"]),
    }
    return Case("plain_jax", args.batch, run, info)


def plain_torch_case(args: argparse.Namespace, threads: int) -> Case | str:
    """The PyTorch worker, or a note saying why it is skipped."""
    python = args.torch_python or DEFAULT_TORCH_PYTHON
    if not (pathlib.Path(python).exists() or shutil.which(python)):
        return f"skipped: no Python at {python} (pass --torch_python)"
    probe = subprocess.run(
        [python, "-c", "import torch"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"skipped: torch is not importable by {python}"
    spec = decode_variant(args.variant)
    if spec.hybrid:
        return "skipped: the plain PyTorch ViT has no hybrid trunk"
    settings = {
        "width": spec.width,
        "depth": spec.depth,
        "mlp_dim": spec.mlp_dim,
        "heads": spec.num_heads,
        "patch": spec.patch_size,
        "image_size": args.image_size,
        "num_classes": bc.NUM_CLASSES,
        "batch": args.batch,
        "dtype": args.dtype,
        "threads": threads,
        "cuda": jax.devices()[0].platform == "gpu",
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    worker = pathlib.Path(__file__).resolve().parent / "torch_vit_step.py"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, str(worker), json.dumps(settings)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        return f"skipped: the PyTorch worker exited with status {proc.returncode}"
    ready = json.loads(line)
    startup = time.perf_counter() - t0
    last = {"loss": ready.get("last_loss")}

    def run(n: int) -> float:
        proc.stdin.write(json.dumps({"steps": n}) + "\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        reply = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        last["loss"] = reply["loss"]
        return float(reply["seconds"])

    def close() -> None:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=60)

    info = {
        "python": python,
        "startup_s": round(startup, 3),
        "first_step_s": ready["first_step_s"],
        "torch": ready["torch"],
        "torch_device": ready["device"],
        "torch_threads": ready["threads"],
        "params": ready["params"],
        "flops_per_step": bc.sig(ready["flops_per_step_fwd_bwd"]),
        "flops_note": "torch FlopCounterMode: matmul, convolution and attention of the forward "
        "and backward only (XLA's estimate also counts elementwise work and the optimizer)",
        "_loss": lambda: last["loss"],
        "_close": close,
    }
    return Case("plain_torch", args.batch, run, info)


def select_cases(spec: str) -> list[str]:
    """Case names from a comma list; a token selects every case it prefixes ('spmix', 'plain')."""
    if not spec:
        return list(ALL_CASES)
    chosen = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        hits = [c for c in ALL_CASES if c == token or c.startswith(token)]
        if not hits:
            raise SystemExit(f"--cases: unknown case {token!r}; known: {', '.join(ALL_CASES)}")
        chosen += [c for c in hits if c not in chosen]
    return chosen


def summarise(case: Case, peak: float | None) -> dict[str, Any]:
    step_s = statistics.median(case.times)
    info = {k: v for k, v in case.info.items() if not k.startswith("_")}
    out: dict[str, Any] = {
        "step_ms_median": round(1e3 * step_s, 3),
        "step_ms_per_round": [round(1e3 * t, 3) for t in case.times],
        "ms_per_example": round(1e3 * step_s / case.examples, 3),
        "examples_per_s": round(case.examples / step_s, 3),
    }
    f = info.get("flops_per_step")
    out["gflops_per_example"] = None if f is None else bc.sig(f / case.examples / 1e9)
    out["achieved_tflops"] = None if f is None else bc.sig(f / step_s / 1e12)
    out["mfu_vs_bf16_peak"] = (
        None if f is None or peak is None else bc.sig(f / step_s / (peak * 1e12), 3)
    )
    out.update(info)
    loss = case.info["_loss"]()
    out["last_loss"] = None if loss is None else round(float(loss), 5)
    return out


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-example time of every SPMix case over each plain case, gradient over static, and the
    share of each saliency case's step that saliency takes (against `spmix:none` with the same
    key encoder)."""
    out: dict[str, Any] = {}
    per_ex = {name: r["ms_per_example"] for name, r in results.items()}
    for name in per_ex:
        if not name.startswith("spmix"):
            continue
        for base in ("plain_jax", "plain_torch"):
            if base in per_ex:
                out[f"{name} / {base}"] = round(per_ex[name] / per_ex[base], 3)
        _, saliency, key = name.split(":")
        method, at, source = saliency.partition("@")
        static = f"spmix:fine_grained{at}{source}:{key}"
        if method == "gradient" and static in per_ex:
            out[f"{name} / {static}"] = round(per_ex[name] / per_ex[static], 3)
        control = f"spmix:none:{key}"
        if method != "none" and control in per_ex:
            share = 1.0 - per_ex[control] / per_ex[name]
            out[f"saliency share of {name} (1 - {control} / it)"] = round(share, 3)
    return out


def host_comparison(path: str, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Host pairs/s per core (input_pipeline.py's JSON) against each SPMix case's pairs/s.

    The JPEG folder's numbers first; with `--storages`, each built dataset's too (`storages`):
    what the trainer reads, JPEG- or raw-stored.
    """
    data = json.loads(pathlib.Path(path).read_text())
    cpus = data["machine"]["cpus_usable"]

    def verdict(parts: dict[str, Any], throughput: list[dict[str, Any]]) -> dict[str, Any]:
        per_core = parts["pairs_per_s_one_core"]
        best = max(throughput, key=lambda t: t["pairs_per_s"])
        out: dict[str, Any] = {
            "host_pairs_per_s_per_core": per_core,
            "host_pairs_per_s_best_measured": best["pairs_per_s"],
            "host_workers_best": best["workers"],
        }
        for name, r in results.items():
            if name.startswith("spmix"):
                need = r["examples_per_s"] / per_core
                out[name] = {
                    "step_pairs_per_s": r["examples_per_s"],
                    "host_cores_needed": round(need, 2),
                    "host_keeps_up": bool(need <= cpus),
                }
        return out

    out = {"input_pipeline_json": path, "host_cpus": cpus}
    out.update(verdict(data["parts"], data["throughput"]))
    if data.get("storages"):
        out["storages"] = {
            storage: verdict(built["parts"], built["throughput"])
            for storage, built in data["storages"].items()
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = bc.step_parser(__doc__.splitlines()[0], "pairs (SPMix) or images (plain)")
    p.add_argument("--steps", type=int, default=3, help="back-to-back steps per case per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    p.add_argument("--cases", default="", help=f"comma list (prefixes allowed) of {ALL_CASES}")
    p.add_argument("--torch_python", default="", help=f"default {DEFAULT_TORCH_PYTHON}")
    p.add_argument("--input_pipeline_json", default="", help="input_pipeline.py's JSON output")
    args = p.parse_args(argv)
    if args.dry_run:
        args.cases = args.cases or DRY_RUN_CASES
        args.variant, args.image_size, args.batch = "mu/8", 16, 4
        args.steps, args.rounds, args.warmup = 1, 2, 1
    args.data_size = args.data_size or args.image_size
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = select_cases(args.cases)
    threads = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {"benchmark": "compare_step", **bc.environment()}
    report["settings"] = {
        "variant": args.variant,
        "image_size": args.image_size,
        "data_size": args.data_size,
        "batch": args.batch,
        "dtype": args.dtype,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "cases": names,
        "torch_threads": threads,
        "dry_run": args.dry_run,
    }
    peak = bc.peak_bf16_tflops(report["device_kind"])
    report["peak_bf16_tflops"] = peak
    cases: list[Case] = []
    notes: dict[str, str] = {}
    for name in names:
        print(f"[compare_step] building {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        if name == "plain_torch":
            built = plain_torch_case(args, threads)
            if isinstance(built, str):
                notes[name] = built
                continue
            built.run(args.warmup)
            cases.append(built)
        elif name == "plain_jax":
            cases.append(plain_jax_case(args, args.warmup))
        else:
            cases.append(spmix_case(name, args, args.warmup))
        # Progress with timings as each case is ready: a run cut short still says where its
        # time went (on a GPU the SPMix step's first compile can take minutes).
        timing = {k: cases[-1].info[k] for k in ("lower_s", "compile_s") if k in cases[-1].info}
        print(
            f"[compare_step] built {name} in {time.perf_counter() - t0:.1f} s {timing}",
            file=sys.stderr,
            flush=True,
        )
    for r in range(args.rounds):
        for case in cases:
            case.times.append(case.run(args.steps) / args.steps)
        print(f"[compare_step] round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    results = {case.name: summarise(case, peak) for case in cases}
    for case in cases:
        case.close()
    report["results"] = results
    report["ratios"] = ratios(results)
    report["targets"] = TARGETS
    report["notes"] = notes
    report["notes"]["examples"] = (
        "SPMix: one example is one pair (2 images, 4 augmented views, a query pass with backward "
        "and a key pass); plain: one example is one image (1 view, 1 pass with backward)."
    )
    report["peak_device_bytes"] = bc.peak_device_bytes()
    if args.input_pipeline_json and pathlib.Path(args.input_pipeline_json).is_file():
        report["host_vs_step"] = host_comparison(args.input_pipeline_json, results)
    elif args.input_pipeline_json:  # e.g. accelerator_check.sh with ONLY=compare_step
        report["host_vs_step"] = {"skipped": f"no file {args.input_pipeline_json}"}
        print(
            f"[compare_step] {args.input_pipeline_json} does not exist (input_pipeline.py did "
            "not run first): no host comparison",
            file=sys.stderr,
        )
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    bc.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
