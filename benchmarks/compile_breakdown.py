"""Where the SPMix step's compile time goes: each phase lowered and compiled on its own.

The phases are those of `step_breakdown.py` (views, the configured saliency method, embeddings
and mixing, query forward and backward, key forward, loss, optimizer, EMA and enqueue), plus the
views without RandAugment (`augment.randaugment_n=0`) so that RandAugment's share shows, the
whole step (`train.jit_train_step`) and the plain ViT step of `compare_step.py` (one view,
forward, backward, AdamW). Each is timed as tracing + lowering (`lower_s`) and XLA compilation
(`compile_s`), ahead of time, with the persistent compilation cache off. Everything is compiled
in one process, one after the other, so load from other processes weighs on all alike; the
whole and the plain step are compiled `--rounds` times in alternation and their medians compared.
With `--fresh_processes` each of those compiles runs in a new Python process of its own, as a
user's first start does (nothing compiled before it in the process); the phases are then skipped.
`--against DIR` adds, in that rotation, the whole step of the `spmix_jax` checkout in DIR (another
revision, e.g. `git worktree add DIR HEAD~1`), so a change's effect is measured in one window.
Every row also gives `cpu_s`, the CPU time of lowering and compiling summed over threads.
`--stages` then compiles each step once more under `jax.profiler.trace` (in a fresh process of
its own with `--fresh_processes`) and reports where that compile went (`compile_stages.py`: HLO
passes, kernel emission, LLVM code generation, kernels and their operations).

    python benchmarks/compile_breakdown.py --variant S/16 --image_size 224 --batch 8 --out c.json
    python benchmarks/compile_breakdown.py --variant S/16 --rounds 5 --fresh_processes
    python benchmarks/compile_breakdown.py --variant S/16 --rounds 5 --fresh_processes \
        --against ../spmix_jax_previous
    python benchmarks/compile_breakdown.py --variant S/16 --rounds 5 --fresh_processes --stages
    python benchmarks/compile_breakdown.py --dry_run
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import bench_common as bc  # noqa: E402
import compile_stages  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import step_breakdown  # noqa: E402

from spmix_jax import augment  # noqa: E402
from spmix_jax import step as step_lib  # noqa: E402


def _aot(fn: Callable[..., Any], *args: Any) -> dict[str, float]:
    """Seconds to trace + lower, and to compile, `fn` (a jitted function) at `args`.

    `cpu_s` is the CPU time of both, summed over the process' threads: on a shared machine it
    moves less than the wall-clock seconds when other work takes the cores away.
    """
    jax.clear_caches()  # the pieces ran once to make the next one's inputs: compile afresh
    c0, t0 = time.process_time(), time.perf_counter()
    lowered = fn.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    c2, t2 = time.process_time(), time.perf_counter()
    return {
        "lower_s": round(t1 - t0, 3),
        "compile_s": round(t2 - t1, 3),
        "cpu_s": round(c2 - c0, 3),
    }


def _profiled(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """`fn` lowered afresh at `args` and compiled under the profiler (`compile_stages`)."""
    jax.clear_caches()
    return compile_stages.profiled_compile(fn.lower(*args))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-field medians of repeated `_aot` rows, with each run's total kept for the record."""
    out = {k: round(float(np.median([r[k] for r in runs])), 3) for k in runs[0]}
    out["total_s"] = round(float(np.median([r["lower_s"] + r["compile_s"] for r in runs])), 3)
    out["totals_s"] = [round(r["lower_s"] + r["compile_s"], 3) for r in runs]  # type: ignore[assignment]
    return out


STEPS = ("whole_step", "plain_vit_step")


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This benchmark's own flags, and the rest for `step_breakdown.parse_args`."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--fresh_processes", action="store_true")
    p.add_argument("--only", choices=STEPS, default="", help="compile this step once, alone")
    p.add_argument(
        "--against",
        default="",
        help="with --fresh_processes: also compile the whole step of the spmix_jax checkout in "
        "this folder (another revision), alternating with this one's",
    )
    p.add_argument(
        "--stages",
        action="store_true",
        help="also compile each step once under the profiler and report its compile stages",
    )
    own, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return own, rest


def _in_fresh_process(
    name: str, argv: list[str], package_root: str = "", stages: bool = False
) -> dict[str, Any]:
    """`name` compiled once in a new Python process running this script with `--only`.

    `package_root`, a checkout of another revision, becomes the new process' package root
    (`bench_common.PACKAGE_ROOT`), so that it imports that revision's `spmix_jax` (this script and
    `bench_common` stay this one's); the process reports where its `spmix_jax` came from, and a
    package from anywhere else stops the run rather than timing the wrong step. With `stages`
    the process compiles under the profiler and the row is `compile_stages.profiled_compile`'s.
    """
    env = None
    if package_root:
        env = {**os.environ, "SPMIX_PACKAGE_ROOT": package_root}
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name, *(["--stages"] if stages else [])],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    report = json.loads(done.stdout)
    want = pathlib.Path(package_root or bc.PACKAGE_ROOT).resolve() / "spmix_jax"
    if pathlib.Path(report["package"]).resolve() != want:
        raise SystemExit(
            f"the {name} process imported spmix_jax from {report['package']}, not from {want}"
        )
    return report["compile"][name]


def _revision(folder: str) -> str:
    """The git commit checked out in `folder`, or '' where it is not a git checkout."""
    done = subprocess.run(
        ["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    own, rest = _parse(argv)
    args = step_breakdown.parse_args(rest)
    jax.config.update("jax_enable_compilation_cache", False)
    report: dict[str, Any] = {"benchmark": "compile_breakdown", **bc.environment()}
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    report["settings"]["fresh_processes"] = own.fresh_processes
    if own.against:
        if not own.fresh_processes:
            raise SystemExit("--against compiles another revision's step: add --fresh_processes")
        if not (pathlib.Path(own.against) / "spmix_jax" / "step.py").is_file():
            raise SystemExit(f"--against {own.against}: no spmix_jax/step.py in that folder")
        report["settings"]["against"] = {"folder": own.against, "commit": _revision(own.against)}
        report["settings"]["commit"] = _revision(str(bc.REPO))
    config = bc.spmix_config(
        variant=args.variant,
        image_size=args.image_size,
        data_size=args.data_size,
        batch=args.batch,
        dtype=args.dtype,
        saliency=args.saliency,
        key_encoder=args.key_encoder,
        tiny=args.dry_run,
    )
    if own.only:  # one compile, reported alone: the unit of --fresh_processes
        fn, fargs, _ = _build(own.only, config, args)
        report["compile"] = {own.only: (_profiled if own.stages else _aot)(fn, *fargs)}
        report["package"] = str(pathlib.Path(step_lib.__file__).parent)
        bc.emit(report)
        return report
    # The whole and the plain step, compiled `rounds` times in alternation: a single compile of
    # either moves by a second or more between runs on a shared machine; medians are reported.
    # With --against, the other revision's whole step joins the rotation, and the order flips
    # every round so that neither revision always follows the same one.
    names = [*STEPS, *(["whole_step_against"] if own.against else [])]
    repeats: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    steps = {} if own.fresh_processes else {name: _build(name, config, args) for name in STEPS}
    where = "fresh process" if own.fresh_processes else "this process"
    for r in range(args.rounds):
        for name in names if not (own.against and r % 2) else names[::-1]:
            print(f"[compile_breakdown] {name}, {where}, round {r + 1}", file=sys.stderr)
            if name == "whole_step_against":
                repeats[name].append(_in_fresh_process("whole_step", rest, own.against))
            elif own.fresh_processes:
                repeats[name].append(_in_fresh_process(name, rest))
            else:
                fn, fargs, _ = steps[name]
                repeats[name].append(_aot(fn, *fargs))
    rows = {name: _median(runs) for name, runs in repeats.items()}
    report["compile"] = rows
    report["whole_over_plain"] = round(
        rows["whole_step"]["total_s"] / rows["plain_vit_step"]["total_s"], 2
    )
    report["whole_over_plain_cpu"] = round(
        rows["whole_step"]["cpu_s"] / rows["plain_vit_step"]["cpu_s"], 2
    )
    if own.against:
        against = rows["whole_step_against"]
        report["against_over_plain"] = round(
            against["total_s"] / rows["plain_vit_step"]["total_s"], 2
        )
        report["whole_over_against"] = round(rows["whole_step"]["total_s"] / against["total_s"], 3)
        report["whole_over_against_cpu"] = round(rows["whole_step"]["cpu_s"] / against["cpu_s"], 3)
    if own.stages:
        report["stages"] = _stages(names, steps, rest, own)
    if own.fresh_processes:
        report["note"] = (
            "Each compile ran in a new Python process of its own (nothing compiled before it), "
            "whole and plain step alternating; medians of lower + compile, totals_s lists each."
        )
    else:
        _compile_phases(config, args, steps["whole_step"][2], rows, report)
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    bc.emit(report, args.out)
    return report


def _stages(
    names: list[str], steps: dict[str, Any], rest: list[str], own: argparse.Namespace
) -> dict[str, Any]:
    """Each step compiled once more under the profiler: where its compile time goes."""
    out = {}
    for name in names:
        print(f"[compile_breakdown] {name}, stages", file=sys.stderr, flush=True)
        if name == "whole_step_against":
            out[name] = _in_fresh_process("whole_step", rest, own.against, stages=True)
        elif own.fresh_processes:
            out[name] = _in_fresh_process(name, rest, stages=True)
        else:
            fn, fargs, _ = steps[name]
            out[name] = _profiled(fn, *fargs)
    return out


def _build(name: str, config: Any, args: argparse.Namespace) -> tuple[Any, tuple[Any, ...], Any]:
    """Step `name` (one of STEPS), the arguments it is compiled at, and what built it."""
    if name == "whole_step":
        built = bc.build_spmix(config)
        return built["step"], (built["state"], built["batch"]), built
    plain = bc.build_plain_jax(
        variant=args.variant, image_size=args.image_size, batch=args.batch, dtype=args.dtype
    )
    return plain["step"], (plain["state"], plain["images"], plain["labels"]), plain


def _compile_phases(
    config: Any, args: argparse.Namespace, built: Any, rows: dict[str, Any], report: dict[str, Any]
) -> None:
    """Each phase of the step compiled alone, added to `rows`; their sum and RandAugment's share."""
    print("[compile_breakdown] phases", file=sys.stderr, flush=True)
    pieces = step_breakdown.build_pieces(config, built)
    wanted = f"saliency[{args.saliency}]"
    for name, (fn, fargs) in pieces.items():
        if name.startswith("saliency[") and name != wanted:
            continue
        print(f"[compile_breakdown] {name}", file=sys.stderr, flush=True)
        rows[name] = _aot(fn, *fargs)
    no_ra = dataclasses.replace(augment.ViewSettings.from_config(config.augment), ra_n=0)
    size = config.model.image_size
    views_no_ra = jax.jit(lambda r, b: step_lib.make_views(r, b, no_ra, size))
    rows["views_without_randaugment"] = _aot(views_no_ra, jax.random.PRNGKey(0), built["batch"])
    phases = [n for n in rows if n not in (*STEPS, "views_without_randaugment")]
    report["sum_of_phases_s"] = round(
        sum(rows[n]["lower_s"] + rows[n]["compile_s"] for n in phases), 3
    )
    report["randaugment_in_views_s"] = round(
        rows["views"]["lower_s"]
        + rows["views"]["compile_s"]
        - rows["views_without_randaugment"]["lower_s"]
        - rows["views_without_randaugment"]["compile_s"],
        3,
    )
    report["note"] = (
        "Each phase is jitted and compiled alone (ahead of time, no persistent cache); inside "
        "the step XLA compiles them together, so the phases need not add up to the step. "
        "whole_over_plain is the median (lower + compile) of the SPMix step over that of the plain "
        "step, both compiled `rounds` times in alternation (totals_s lists every run)."
    )


if __name__ == "__main__":
    main()
