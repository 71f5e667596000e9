"""The benchmark scripts run and print valid JSON (tiny sizes on the CPU; no timing checks)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def _env() -> dict[str, str]:
    """The environment without the tests' 8 simulated devices (the benchmarks use one)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHON"] = sys.executable
    return env


def _run(args: list[str], timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, **kw
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _accelerator_plan(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """accelerator_check.sh with DRY_RUN=1 and `env`: its JSON plan, nothing run."""
    return subprocess.run(
        ["bash", str(BENCH / "accelerator_check.sh"), str(tmp_path / "out")],
        cwd=REPO,
        env={**_env(), "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("smoke", ["0", "1"])
def test_accelerator_check_dry_run_prints_a_json_plan(tmp_path, smoke):
    proc = _accelerator_plan(tmp_path, SMOKE=smoke)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["smoke"] is (smoke == "1")
    names = [s["name"] for s in plan["steps"]]
    default = ["input_pipeline", "compare_step", "demo", "ham10000_short"]
    assert names == default + (["step_breakdown"] if smoke == "1" else [])
    if smoke == "0":  # the accelerator run fits in one 10-minute device command
        assert sum(s["timeout_s"] for s in plan["steps"]) <= 10 * 60 - 30
    commands = " ".join(s["command"] for s in plan["steps"])
    assert "spmix_jax.main --config=configs/demo.py" in commands
    if smoke == "1":
        assert "--dry_run" in commands
    else:
        assert "--variant B/16" in commands and "--dtype bfloat16" in commands
        assert "--storages jpeg,raw" in commands
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


@pytest.mark.parametrize("limit", ["540", "5x"])
def test_accelerator_check_step_limit_replaces_the_selected_steps_limits(tmp_path, limit):
    proc = _accelerator_plan(tmp_path, ONLY="compare_step", STEP_LIMIT=limit)
    if limit == "5x":
        assert proc.returncode == 2
        assert "STEP_LIMIT=5x: expected a whole number of seconds" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    steps = json.loads(proc.stdout)["steps"]
    assert [(s["name"], s["timeout_s"]) for s in steps] == [("compare_step", 540)]


def _load(name: str):
    """A benchmark script loaded from its file as a module.

    benchmarks/ is taken off sys.path again afterwards (the scripts put it first): there,
    `input_pipeline` would name the benchmark script instead of the package.
    """
    path = list(sys.path)
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


def test_peak_table_matches_device_kinds():
    bench_common = _load("bench_common")
    assert bench_common.peak_bf16_tflops("NVIDIA H200") == 989.0
    assert bench_common.peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench_common.peak_bf16_tflops("TPU v5 lite") == 197.0
    assert bench_common.peak_bf16_tflops("TPU v5p") == 459.0
    assert bench_common.peak_bf16_tflops("TPU v6 lite") == 918.0
    assert bench_common.peak_bf16_tflops("cpu") is None


def test_compare_step_ratios_by_hand():
    compare_step = _load("compare_step")
    per_ex = {
        "spmix:fine_grained:ema": 120.0,
        "spmix:gradient:ema": 300.0,
        "spmix:none:ema": 114.0,
        "spmix:fine_grained@frame:ema": 116.0,
        "spmix:gradient@frame:ema": 232.0,
        "plain_jax": 80.0,
    }
    out = compare_step.ratios({k: {"ms_per_example": v} for k, v in per_ex.items()})
    # Gradient from the frame against static from the frame; shares against the same control.
    assert out["spmix:gradient@frame:ema / spmix:fine_grained@frame:ema"] == 2.0
    assert out["saliency share of spmix:gradient@frame:ema (1 - spmix:none:ema / it)"] == 0.509
    assert out["spmix:fine_grained:ema / plain_jax"] == 1.5
    assert out["spmix:gradient:ema / spmix:fine_grained:ema"] == 2.5
    assert out["saliency share of spmix:fine_grained:ema (1 - spmix:none:ema / it)"] == 0.05
    assert out["saliency share of spmix:gradient:ema (1 - spmix:none:ema / it)"] == 0.62
    assert not any("shared" in k or "plain_torch" in k for k in out)


@pytest.mark.slow
def test_compare_step_dry_run_prints_valid_json(tmp_path):
    out = tmp_path / "compare.json"
    # A host JSON that was never written (accelerator_check.sh with ONLY=compare_step) leaves the
    # host comparison out instead of losing the measurements at the end.
    missing = tmp_path / "input_pipeline.json"
    args = [sys.executable, str(BENCH / "compare_step.py"), "--dry_run", "--out", str(out)]
    proc = _run([*args, "--input_pipeline_json", str(missing)])
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["host_vs_step"] == {"skipped": f"no file {missing}"}
    results = report["results"]
    assert {"spmix:fine_grained:ema", "plain_jax"} <= set(results)
    assert "plain_torch" in results or "plain_torch" in report["notes"]
    for r in results.values():
        assert r["ms_per_example"] > 0 and r["last_loss"] is not None
        assert math.isfinite(r["last_loss"])
    assert results["spmix:fine_grained:ema"]["flops_per_step"] > 0
    # The control without saliency really drops the maps' computation.
    flops_none = results["spmix:none:ema"]["flops_per_step"]
    assert 0 < flops_none < results["spmix:fine_grained:ema"]["flops_per_step"]
    assert "spmix:fine_grained:ema / plain_jax" in report["ratios"]
    assert any(k.startswith("saliency share of spmix:fine_grained:ema") for k in report["ratios"])
    for key in ("date_utc", "jax", "device_kind", "settings"):
        assert key in report


@pytest.mark.slow
def test_step_breakdown_dry_run_prints_valid_json_without_recompiles(tmp_path):
    proc = _run([sys.executable, str(BENCH / "step_breakdown.py"), "--dry_run"])
    report = json.loads(proc.stdout)
    assert list(report["phases"])[1] == "saliency[fine_grained]"
    assert len(report["phases"]) == 8
    assert set(report["other_saliency_methods"]) == {
        "saliency[spectral_residual]",
        "saliency[gradient]",
    }
    assert report["compiles_during_timed_steps"] == 0
    assert report["whole_step_ms"] > 0


def _other_checkout(tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of this checkout's packages in another folder: a stand-in for another revision."""
    other = tmp_path / "other"
    skip = shutil.ignore_patterns("__pycache__")
    for package in ("spmix_jax", "configs", "input_pipeline"):
        shutil.copytree(REPO / package, other / package, ignore=skip)
    return other


def test_bench_common_imports_the_packages_of_the_root_it_is_given(tmp_path):
    """`SPMIX_PACKAGE_ROOT` decides where the benchmarks' spmix_jax comes from, even when this
    repository is installed and PYTHONPATH lists it (what `compile_breakdown --against` needs)."""
    other = _other_checkout(tmp_path)
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); import bench_common, spmix_jax, configs;"
        " print(spmix_jax.__file__); print(configs.__file__)"
    )
    for root, want in ((str(other), other), ("", REPO)):
        env = {**_env(), "SPMIX_PACKAGE_ROOT": root, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        package, configs = done.stdout.split()
        assert pathlib.Path(package).resolve() == (want / "spmix_jax" / "__init__.py").resolve()
        assert pathlib.Path(configs).resolve() == (want / "configs" / "__init__.py").resolve()


@pytest.mark.slow
def test_compile_breakdown_in_fresh_processes_reports_both_steps_and_their_ratio(tmp_path):
    out = tmp_path / "compile.json"
    args = [sys.executable, str(BENCH / "compile_breakdown.py"), "--dry_run", "--rounds", "1"]
    # A copy of this checkout stands in for another revision: its step joins the rotation as
    # `against`, and the run stops if that process imports any other spmix_jax.
    other = _other_checkout(tmp_path)
    args += ["--fresh_processes", "--against", str(other), "--stages", "--out", str(out)]
    report = json.loads(_run(args).stdout)
    assert json.loads(out.read_text()) == report
    assert report["settings"]["fresh_processes"] is True
    assert report["settings"]["against"]["folder"] == str(other)
    rows = report["compile"]
    # No phases in this mode.
    assert set(rows) == {"whole_step", "plain_vit_step", "whole_step_against"}
    for row in rows.values():
        assert len(row["totals_s"]) == 1 and row["total_s"] == row["totals_s"][0] > 0
        assert row["cpu_s"] > 0
    ratio = rows["whole_step"]["total_s"] / rows["plain_vit_step"]["total_s"]
    assert report["whole_over_plain"] == round(ratio, 2)
    against = rows["whole_step"]["total_s"] / rows["whole_step_against"]["total_s"]
    assert report["whole_over_against"] == round(against, 3)
    # --stages: one more profiled compile of each, in a fresh process, read from XLA's events.
    stages = report["stages"]
    assert set(stages) == set(rows)
    for row in stages.values():
        assert row["compile_s"] > 0 and row["hlo_passes_s"] > 0 and row["llvm_codegen_s"] > 0
        assert 0 < row["kernel_emission_s"] <= row["compile_s"]
        assert row["kernel_operations"] > row["kernels"] > 0
    # The same program in both checkouts: the same kernels.
    assert stages["whole_step"]["kernels"] == stages["whole_step_against"]["kernels"]
    assert stages["whole_step"]["kernels"] > stages["plain_vit_step"]["kernels"]


def test_compile_stages_from_hand_made_trace_events():
    """Stage seconds summed from XLA's event names; kernel emission as a wall-clock span; the
    per-kernel fit through points that lie on one line."""
    stages = _load("compile_stages")
    us = 1_000_000
    kernel = "FusionCompiler::Compile"
    events = [
        {"ph": "X", "name": "HLO passes through layout assignment (jit_f)", "ts": 0, "dur": us},
        {"ph": "X", "name": "HLO passes after layout assignment (jit_f)", "ts": us, "dur": us // 2},
        # Two threads emit three kernels from t = 2 s to t = 3.5 s, 2.5 s of work in all:
        # 1000 ms at 8 operations, 500 ms at 3, so 200 ms fixed and 100 ms per operation.
        {"ph": "X", "name": kernel, "ts": 2 * us, "dur": us, "args": {"op_count": 8}},
        {"ph": "X", "name": kernel, "ts": 2 * us, "dur": us // 2, "args": {"op_count": "3"}},
        {"ph": "X", "name": kernel, "ts": 5 * us // 2, "dur": us, "args": {"op_count": 8}},
        {"ph": "X", "name": "JitCompiler::Compile", "ts": 4 * us, "dur": 2 * us},
        {"ph": "i", "name": kernel, "ts": 9 * us},  # not a complete event
        {"ph": "X", "name": "CpuCompiler::RunBackend", "ts": 2 * us, "dur": 4 * us},
    ]
    assert stages.stages_from_events(events) == {
        "hlo_passes_s": 1.5,
        "kernel_emission_s": 1.5,
        "kernel_emission_busy_s": 2.5,
        "llvm_codegen_s": 2.0,
        "kernels": 3,
        "kernel_operations": 19,
        "kernel_fixed_ms": 200.0,
        "kernel_ms_per_operation": 100.0,
    }
    empty = stages.stages_from_events([])
    assert empty["kernels"] == 0 and empty["kernel_fixed_ms"] is None


def test_compile_breakdown_refuses_another_revision_without_its_package(tmp_path):
    args = [sys.executable, str(BENCH / "compile_breakdown.py"), "--dry_run", "--rounds", "1"]
    done = subprocess.run(
        [*args, "--fresh_processes", "--against", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert f"--against {tmp_path}: no spmix_jax/step.py in that folder" in done.stderr


@pytest.mark.slow
def test_input_pipeline_on_synthetic_jpegs_reports_host_against_step(tmp_path):
    out = tmp_path / "pipe.json"
    args = [sys.executable, str(BENCH / "input_pipeline.py"), "--make_jpegs", "32"]
    args += ["--data_dir", str(tmp_path / "jpegs"), "--image_size", "32", "--batch", "4"]
    args += ["--batches", "2", "--workers", "0", "--parts_pairs", "8"]
    args += ["--step_pairs_per_s", "50", "--out", str(out)]
    ham = os.environ.get("SPMIX_HAM10000_DIR", "/work/shared/data/ham10000_subset")
    if os.path.isdir(ham):  # upscaled real images, every class present: both storages built
        args += ["--upscale_from", ham, "--storages", "jpeg,raw"]
    report = json.loads(_run(args).stdout)
    assert json.loads(out.read_text()) == report
    assert report["examples"] == 32 and report["source_image_hw"] == [450, 600]
    assert report["host_vs_step"]["host_cores_needed"] > 0
    if "storages" in report:
        raw = report["storages"]["raw"]
        assert raw["stored_bytes"] >= 32 * 32 * 32 * 3  # uncompressed 32 x 32 frames
        assert "decode_ms" in report["storages"]["jpeg"]["parts"]
        assert raw["throughput"][0]["pairs_per_s"] > 0
