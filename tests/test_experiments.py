"""The experiment runner: aggregation on hand-made eval JSONs, and a small real suite (slow)."""

from __future__ import annotations

import csv
import json
import pathlib
import shutil

import numpy as np
import pytest

from spmix_jax import experiments

NAMES = ["A", "B", "C", "D", "E"]
COUNTS = [100, 3, 40, 1, 7]  # rarest: D (1), B (3), E (7)


def _write_eval(workdir: pathlib.Path, split: str, step: int, bacc: float, recalls: list[float]):
    workdir.mkdir(parents=True, exist_ok=True)
    result = {
        "step": step,
        "split": split,
        "balanced_accuracy": bacc,
        "macro_f1": bacc - 0.1,
        "auc_macro": 0.9,
        "many_accuracy": 0.8,
        "medium_accuracy": 0.5,
        "few_accuracy": None,
        "class_names": NAMES,
        "train_class_counts": COUNTS,
        "per_class": {n: {"recall": r} for n, r in zip(NAMES, recalls, strict=True)},
    }
    path = workdir / f"eval_synthetic-s0_{split}_{step}.json"
    path.write_text(json.dumps(result))


def test_rows_and_summary_from_hand_made_jsons(tmp_path):
    runs = {
        ("ce", 0): (0.5, [0.9, 0.1, 0.5, 0.0, 0.2]),
        ("ce", 1): (0.7, [0.9, 0.3, 0.5, 1.0, 0.2]),
        ("spmix", 0): (0.6, [0.9, 0.5, 0.5, 0.5, 0.5]),
    }
    rows = []
    for (method, seed), (bacc, recalls) in runs.items():
        workdir = experiments.run_dir(str(tmp_path), method, seed)
        _write_eval(workdir, "validation", 20, 0.99, [0.0] * 5)
        _write_eval(workdir, "validation", 40, bacc + 0.05, [0.0] * 5)
        _write_eval(workdir, "test", 40, bacc, recalls)
        rows.append(experiments.run_row(method, seed, workdir, "test", "validation"))
    assert experiments.rarest_classes(NAMES, COUNTS) == ["D", "B", "E"]
    first = rows[0]
    assert [first[f"rare{i}_class"] for i in (1, 2, 3)] == ["D", "B", "E"]
    assert [first[f"rare{i}_recall"] for i in (1, 2, 3)] == [0.0, 0.1, 0.2]
    np.testing.assert_allclose(first["rare_recall_mean"], 0.1)
    assert first["steps"] == 40
    np.testing.assert_allclose(first["val_balanced_accuracy"], 0.55)  # same step as test
    assert experiments.run_row("x", 0, tmp_path / "missing", "test", "validation") is None

    table = experiments.summary_markdown(rows, ["ce", "spmix"])
    ce_line = next(line for line in table.splitlines() if line.startswith("| ce |"))
    # balanced accuracy 0.5, 0.7: mean 0.6, sample std 0.1414.
    assert f"0.6000 ± {np.std([0.5, 0.7], ddof=1):.4f}" in ce_line
    assert "| 0,1 |" in ce_line
    # few_accuracy is None everywhere: n/a, never a made-up number.
    assert "n/a" in ce_line
    spmix_line = next(line for line in table.splitlines() if line.startswith("| spmix |"))
    assert "| 0.6000 |" in spmix_line  # one seed: no std


def _suite_rows(out: pathlib.Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_suite_on_tiny_matches_the_run_jsons(tmp_path, monkeypatch):
    out = tmp_path / "suite"
    argv = [
        "--base=configs/tiny.py",
        "--methods=ce,bmix",
        "--seeds=0",
        f"--out={out}",
        "--config.optim.total_steps=4",
    ]
    monkeypatch.chdir(experiments.ROOT)
    assert experiments.main(argv) == 0
    rows = _suite_rows(out)
    assert [(r["method"], r["seed"]) for r in rows] == [("ce", "0"), ("bmix", "0")]
    for row in rows:
        workdir = experiments.run_dir(str(out), row["method"], int(row["seed"]))
        test = json.loads(pathlib.Path(experiments.eval_json(workdir, "test")).read_text())
        assert int(row["steps"]) == test["step"] == 4
        for name in ("balanced_accuracy", "macro_f1"):
            assert float(row[name]) == pytest.approx(test[name])
        rare = row["rare1_class"]
        assert float(row["rare1_recall"]) == pytest.approx(test["per_class"][rare]["recall"])
        assert float(row["wall_s"]) > 0
        recorded = json.loads((workdir / "config.json").read_text())
        assert recorded["mix"]["method"] == {"ce": "none", "bmix": "balanced_mixup"}[row["method"]]
    assert "| bmix | 0 |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0
    command = (out / "command.txt").read_text()
    assert "spmix_jax.experiments" in command and "git commit:" in command
    # Resumable: a second call skips both finished runs and rewrites the same table.
    before = (out / "results.csv").read_text()
    assert experiments.main(argv) == 0
    assert (out / "results.csv").read_text() == before
    # Elsewhere (the run folders gone, the committed rows kept), the suite trains nothing again
    # and rebuilds the same table from the records.
    assert experiments.main([*argv, "--tables_only"]) == 0
    assert (out / "results.csv").read_text() == before
    assert (out / "command.txt").read_text() == command
    shutil.rmtree(out / "runs")
    assert experiments.main(argv) == 0
    assert not (out / "runs").exists()
    assert (out / "results.csv").read_text() == before


def test_a_run_record_is_reused_only_with_the_same_base_and_overrides(tmp_path):
    settings = experiments.run_settings("configs/tiny.py", ["--config.b=2", "--config.a=1"])
    path = experiments.row_path(str(tmp_path), "ce", 0)
    row = {"method": "ce", "seed": 0, "balanced_accuracy": 0.5, "few_accuracy": None}
    experiments.save_row(path, row, settings)
    assert path == tmp_path / "rows" / "ce-s0.json"
    same = experiments.run_settings("configs/tiny.py", ["--config.a=1", "--config.b=2"])
    assert experiments.recorded_row(path, same) == row
    for other in (
        experiments.run_settings("configs/tiny.py", ["--config.a=1"]),
        experiments.run_settings("configs/demo.py", ["--config.a=1", "--config.b=2"]),
    ):
        assert experiments.recorded_row(path, other) is None
    assert experiments.recorded_row(experiments.row_path(str(tmp_path), "ce", 1), same) is None


def test_misspelt_override_stops_the_suite_before_any_run(tmp_path):
    args = ["--base=tiny", "--methods=ce", f"--out={tmp_path / 'suite'}", "--config.optim.lrr=1"]
    with pytest.raises(SystemExit, match="config.optim.lrr: config.optim has no field 'lrr'"):
        experiments.main(args)
    assert not (tmp_path / "suite").exists()


def test_suite_runs_share_one_compilation_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("SPMIX_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert experiments.suite_environment(tmp_path)["SPMIX_COMPILE_CACHE"] == str(
        tmp_path / "compile_cache"
    )
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
    assert "SPMIX_COMPILE_CACHE" not in experiments.suite_environment(tmp_path)
    monkeypatch.setenv("SPMIX_COMPILE_CACHE", "/shared")
    assert experiments.suite_environment(tmp_path)["SPMIX_COMPILE_CACHE"] == "/shared"
