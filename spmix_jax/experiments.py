"""Experiment suites: methods x seeds on one base config, each run a `spmix_jax.main` subprocess.

    python -m spmix_jax.experiments --base=configs/ham10000.py \\
        --methods=ce,ce_balanced,la_ce,gpaco,bmix,spmix --seeds=0,1,2 --out=results/ham10000_cpu

Run `M` with seed `S` trains in `OUT/runs/M-sS` with `--config=BASE:method=M --config.seed=S`
(methods are the presets of `configs/common.py` METHODS). A subprocess per run keeps one crash
from ending the suite; a run whose final test evaluation exists is skipped and an unfinished one
resumes from its checkpoint, so a killed suite is restarted with the same command. Arguments
starting with `--config.` are passed to every run (e.g. `--config.optim.total_steps=100`).

A finished run also leaves its row in OUT/rows/M-sS.json with the base and overrides it ran
with: a suite restarted elsewhere (a fresh clone with the rows committed, the run folders gone)
skips the runs recorded there with the same base and overrides instead of training them again.

Outputs in OUT, rewritten after every run so that a stopped suite still has its table:
results.csv (one row per run, from the eval JSONs the trainer's final report writes: the
checkpoint chosen on validation, evaluated on test), results.md (mean ± std over seeds per
method), results.png, command.txt (this command and the git commit).

The runs share one compilation cache, OUT/compile_cache (`suite_environment`): a method's seeds
after the first load its compiled programs instead of compiling them.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmix_jax import result_files

NUM_RARE = 3
METRICS = (
    "balanced_accuracy",
    "macro_f1",
    "auc_macro",
    "many_accuracy",
    "medium_accuracy",
    "few_accuracy",
)
# The training counts that separate many / medium / few (the run's eval.*_threshold).
SHOT_COLUMNS = ("many_threshold", "few_threshold")
RARE_COLUMNS = tuple(
    f"rare{i}_{kind}" for i in range(1, NUM_RARE + 1) for kind in ("class", "recall")
)
COLUMNS = (
    "method",
    "seed",
    *METRICS,
    *SHOT_COLUMNS,
    "rare_recall_mean",
    *RARE_COLUMNS,
    "val_balanced_accuracy",
    "steps",
    "wall_s",
    "workdir",
)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_base_config(base: str, overrides: Sequence[str] = ()) -> Any:
    """The base config (`path.py[:arg]` or a shipped name), read for its split names; its
    problems and unknown `--config.*` fields in `overrides` stop the suite before any run,
    with the trainer's message."""
    from spmix_jax import config_files
    from spmix_jax.config_checks import unknown_override
    from spmix_jax.errors import UserError

    try:
        config = config_files.load(base)
        message = unknown_override([f"--config={config_files.resolve(base)}", *overrides])
    except UserError as error:
        raise SystemExit(f"error: {error}") from error
    if message:
        raise SystemExit(f"error: {message}")
    return config


def method_arg(base: str, method: str) -> str:
    """`BASE:method=M`, appended to an argument the base already has."""
    return f"{base},method={method}" if ":" in base else f"{base}:method={method}"


def run_dir(out: str, method: str, seed: int) -> pathlib.Path:
    """Where run (method, seed) of a suite trains; the name alone makes the suite resumable."""
    return pathlib.Path(out) / "runs" / f"{method}-s{seed}"


def eval_json(workdir: str | os.PathLike, split: str, step: int | None = None) -> str | None:
    """The newest `eval_<dataset>_<split>_<step>.json` in `workdir` (of `step` if given)."""
    name = re.compile(rf"eval_.+_{re.escape(split)}_(\d+)\.json")
    paths = []
    for path in glob.glob(os.path.join(glob.escape(str(workdir)), "eval_*.json")):
        match = name.fullmatch(os.path.basename(path))
        if match and (step is None or int(match.group(1)) == step):
            paths.append(path)
    return max(paths, key=os.path.getmtime) if paths else None


def run_row(
    method: str, seed: int, workdir: str | os.PathLike, test_split: str, eval_split: str
) -> dict[str, Any] | None:
    """One results row from a run's test JSON (and the validation JSON of the same step)."""
    test_path = eval_json(workdir, test_split)
    if test_path is None:
        return None
    test = json.loads(pathlib.Path(test_path).read_text())
    step = test.get("step")
    val_path = eval_json(workdir, eval_split, step) or eval_json(workdir, eval_split)
    val = json.loads(pathlib.Path(val_path).read_text()) if val_path else {}
    row: dict[str, Any] = {"method": method, "seed": seed, "steps": step, "workdir": str(workdir)}
    for name in METRICS:
        row[name] = test.get(name)
    row["val_balanced_accuracy"] = val.get("balanced_accuracy")
    thresholds = test.get("shot_thresholds") or {}
    row["many_threshold"], row["few_threshold"] = thresholds.get("many"), thresholds.get("few")
    names = test.get("class_names") or list(test.get("per_class", {}))
    counts = test.get("train_class_counts")
    rare = rarest_classes(names, counts)
    recalls = [test["per_class"][name]["recall"] for name in rare]
    for i, (name, recall) in enumerate(zip(rare, recalls, strict=True), start=1):
        row[f"rare{i}_class"] = name
        row[f"rare{i}_recall"] = recall
    row["rare_recall_mean"] = float(np.mean(recalls)) if recalls else None
    timing = pathlib.Path(workdir) / "suite_time.json"
    row["wall_s"] = json.loads(timing.read_text())["wall_s"] if timing.is_file() else None
    return row


def row_path(out: str, method: str, seed: int) -> pathlib.Path:
    """The record of finished run (method, seed): its results row and what it ran with."""
    return pathlib.Path(out) / "rows" / f"{method}-s{seed}.json"


def run_settings(base: str, overrides: Sequence[str]) -> dict[str, Any]:
    """What makes two runs of a method and seed the same run: the base and the overrides."""
    return {"base": base, "overrides": sorted(overrides)}


def save_row(path: pathlib.Path, row: dict[str, Any], settings: dict[str, Any]) -> None:
    """Writes a finished run's record (atomically), with the commit it was summarised at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    result_files.write_json(path, {"row": row, "settings": settings, "git_commit": git_commit()})


def recorded_row(path: pathlib.Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The row recorded at `path` if it ran with `settings`, else None."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record["row"] if record.get("settings") == settings else None


def rarest_classes(names: Sequence[str], counts: Sequence[int] | None) -> list[str]:
    """The NUM_RARE classes with the fewest training images (ties: class order); [] if unknown."""
    if not counts or len(counts) != len(names):
        return []
    order = sorted(range(len(names)), key=lambda c: (counts[c], c))
    return [names[c] for c in order[:NUM_RARE]]


def _mean_std(values: Sequence[Any]) -> tuple[float, float] | None:
    vals = [float(v) for v in values if v is not None and v != ""]
    if not vals:
        return None
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return float(np.mean(vals)), std


def format_mean_std(values: Sequence[Any]) -> str:
    """`mean ± std` (sample std over seeds), `mean` for one seed, `n/a` for none."""
    ms = _mean_std(values)
    if ms is None:
        return "n/a"
    mean, std = ms
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def summary_markdown(rows: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """One line per method: mean ± std over its seeds of every metric."""
    cols = (*METRICS, "rare_recall_mean")
    rare = [rows[0].get(f"rare{i}_class") for i in range(1, NUM_RARE + 1)] if rows else []
    lines = [
        "Test split, checkpoint chosen on validation; mean ± sample std over seeds. "
        f"rare_recall_mean: mean recall of the {NUM_RARE} rarest training classes "
        f"({', '.join(str(r) for r in rare if r)}).{_shot_note(rows)}",
        "",
        "| method | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        if not mine:
            continue
        seeds = ",".join(str(r["seed"]) for r in mine)
        cells = [format_mean_std([r.get(c) for r in mine]) for c in cols]
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _shot_note(rows: Sequence[dict[str, Any]]) -> str:
    """The shot groups' definition, from the thresholds the runs recorded ('' if unknown)."""
    pairs = {(r.get("many_threshold"), r.get("few_threshold")) for r in rows}
    pairs.discard((None, None))
    if len(pairs) != 1:
        return "" if not pairs else " Runs differ in their many / few thresholds (results.csv)."
    many, few = pairs.pop()
    return (
        f" Many / medium / few: classes with over {many} / {few}-{many} / under {few} "
        "training images."
    )


def write_csv(path: pathlib.Path, rows: Sequence[dict[str, Any]]) -> None:
    """results.csv; a metric that is n/a (None) is an empty cell, never a number."""
    result_files.write_csv(path, COLUMNS, ([row.get(k) for k in COLUMNS] for row in rows))


def write_figure(
    path: pathlib.Path, rows: Sequence[dict[str, Any]], methods: Sequence[str]
) -> None:
    """Balanced accuracy and rare-class recall per method, one point per seed, mean as a bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [m for m in methods if any(r["method"] == m for r in rows)]
    fig = Figure(figsize=(max(4.0, 0.9 * len(shown) + 2), 3.4))
    FigureCanvasAgg(fig)
    for k, (key, title) in enumerate(
        (("balanced_accuracy", "balanced accuracy"), ("rare_recall_mean", "rare-class recall"))
    ):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, method in enumerate(shown):
            vals = [r[key] for r in rows if r["method"] == method and r.get(key) is not None]
            if vals:
                ax.bar(i, float(np.mean(vals)), color="0.85", width=0.6)
                ax.plot([i] * len(vals), vals, "o", color="C0", markersize=4)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown, rotation=45, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"test {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)


def git_commit() -> str:
    """HEAD of the repository (with `-dirty` when the tree has changes), or `unknown`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def parse_extra(text: str) -> list[tuple[str, int]]:
    """`spmix_global:1,spmix_random:2` -> methods run with their first N seeds only."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, count = item.partition(":")
        out.append((name, int(count) if count else 1))
    return out


def _duration(seconds: float) -> str:
    """3h05m, 12m09s or 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def suite_environment(out: pathlib.Path) -> dict[str, str]:
    """The runs' environment: this one, with one compilation cache for the whole suite.

    A method's runs differ only in their seed, which the compiled step takes as an input, so
    every seed after the first loads the method's programs from `OUT/compile_cache` instead of
    compiling them. A cache already named in the environment, or by
    `--config.train.compile_cache`, is used instead.
    """
    from spmix_jax import compile_cache  # imports jax: only when runs are launched

    env = dict(os.environ)
    if not compile_cache.shared_folder(env):
        env[compile_cache.ENV_VAR] = str(out / compile_cache.FOLDER)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or resumes) the suite and writes its tables; returns 1 if any run failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="config file, optionally with :args")
    parser.add_argument("--methods", required=True, help="comma-separated method presets")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--out", required=True, help="suite directory")
    parser.add_argument("--extra", default="", help="METHOD:N,... run with the first N seeds")
    parser.add_argument(
        "--tables_only",
        action="store_true",
        help="write the tables and records from the runs finished so far; train nothing",
    )
    args, passthrough = parser.parse_known_args(argv)
    bad = [a for a in passthrough if not a.startswith("--config.")]
    if bad:
        parser.error(f"unknown arguments {bad}; only --config.* overrides are passed to runs")

    if str(ROOT) not in sys.path:  # the presets, and config files importing `configs.common`
        sys.path.insert(0, str(ROOT))
    from configs import common

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    plan = [(m.strip(), seeds) for m in args.methods.split(",") if m.strip()]
    plan += [(m, seeds[:n]) for m, n in parse_extra(args.extra)]
    unknown = sorted({m for m, _ in plan} - set(common.METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(common.METHODS)}")
    methods = list(dict.fromkeys(m for m, _ in plan))
    runs = [(m, s) for m, ss in plan for s in ss]
    config = load_base_config(args.base, passthrough)
    test_split, eval_split = config.data.test_split, config.data.eval_split

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([sys.executable, "-m", "spmix_jax.experiments", *argv])
    if not args.tables_only:
        result_files.write_text(out / "command.txt", f"{command}\ngit commit: {git_commit()}\n")

    settings = run_settings(args.base, passthrough)

    def row_of(method: str, seed: int) -> dict[str, Any] | None:
        """The run's row from its folder (recording it), else from its record."""
        row = run_row(method, seed, run_dir(args.out, method, seed), test_split, eval_split)
        path = row_path(args.out, method, seed)
        if row is not None:
            if recorded_row(path, settings) != row:
                save_row(path, row, settings)
            return row
        return recorded_row(path, settings)

    def write_tables() -> int:
        rows = [row for m, s in runs if (row := row_of(m, s)) is not None]
        write_csv(out / "results.csv", rows)
        result_files.write_text(out / "results.md", summary_markdown(rows, methods))
        if rows:
            write_figure(out / "results.png", rows, methods)
        return len(rows)

    durations: list[float] = []
    failed = []
    env = suite_environment(out)
    for i, (method, seed) in enumerate([] if args.tables_only else runs, start=1):
        workdir = run_dir(args.out, method, seed)
        name = f"{method}-s{seed}"
        if eval_json(workdir, test_split) is not None:
            print(f"[{i}/{len(runs)}] {name}: done before, skipped", flush=True)
            continue
        if recorded_row(row_path(args.out, method, seed), settings) is not None:
            print(f"[{i}/{len(runs)}] {name}: recorded in {out / 'rows'}, skipped", flush=True)
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "spmix_jax.main",
            f"--config={method_arg(args.base, method)}",
            f"--config.seed={seed}",
            f"--workdir={workdir}",
            *passthrough,
        ]
        start = time.monotonic()
        with (workdir / "suite_log.txt").open("a") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        took = time.monotonic() - start
        timing = workdir / "suite_time.json"
        before = json.loads(timing.read_text())["wall_s"] if timing.is_file() else 0.0
        result_files.write_json(timing, {"wall_s": round(before + took, 1)})
        ok = rc == 0 and eval_json(workdir, test_split) is not None
        if not ok:
            failed.append(name)
        durations.append(took)
        left = sum(1 for m, s in runs[i:] if row_of(m, s) is None)
        eta = _duration(float(np.mean(durations)) * left)
        status = "done" if ok else f"FAILED (exit {rc}; see {workdir / 'suite_log.txt'})"
        print(
            f"[{i}/{len(runs)}] {name}: {status} in {_duration(took)}; {left} left, ETA {eta}",
            flush=True,
        )
        write_tables()

    count = write_tables()
    print(f"Wrote {out / 'results.csv'}, results.md, results.png ({count} runs)")
    if failed:
        print(f"Failed runs: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
