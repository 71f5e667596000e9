"""End to end on configs/tiny.py with 8 fake devices: train, SIGKILL, resume, compare, evaluate.

Training runs in subprocesses through the real entry point. They share a persistent compilation
cache so the step compiles once for the whole module.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import tiny
from spmix_jax import checkpointing, evaluate, optimizer, sharding
from spmix_jax import state as state_lib
from spmix_jax.models import make_model

pytestmark = pytest.mark.slow  # subprocess runs of the whole trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8


def _env(cache: pathlib.Path, devices: int = 8) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    return env


def _cmd(workdir: pathlib.Path, mode: str = "train") -> list[str]:
    return [
        sys.executable,
        "-m",
        "spmix_jax.main",
        "--config=configs/tiny.py",
        f"--config.optim.total_steps={STEPS}",
        "--config.train.checkpoint_every=2",
        f"--config.train.eval_every={STEPS}",
        f"--workdir={workdir}",
        f"--mode={mode}",
    ]


def _steps(workdir: pathlib.Path) -> list[int]:
    ckpt = workdir / "checkpoints"
    if not ckpt.exists():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    cache = root / "jax_cache"
    full, killed = root / "full", root / "killed"
    # Uninterrupted run.
    done = subprocess.run(
        _cmd(full), cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # Same run, SIGKILLed as soon as its first checkpoint is complete, then resumed.
    proc = subprocess.Popen(
        _cmd(killed),
        cwd=REPO,
        env=_env(cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 900
    while not _steps(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-4000:]
    at_kill = _steps(killed)
    resumed = subprocess.run(
        _cmd(killed), cwd=REPO, env=_env(cache), capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {
        "full": full,
        "killed": killed,
        "at_kill": at_kill,
        "cache": cache,
        "resumed_out": resumed.stdout,
    }


def _final_state(workdir: pathlib.Path):
    config = tiny.get_config()
    config.optim.total_steps = STEPS
    mesh = sharding.make_mesh()
    tx = optimizer.make_optimizer(config, config.data.synthetic.num_train)
    abstract = state_lib.create(config, make_model(config), tx, mesh)
    manager = checkpointing.latest_manager(str(workdir))
    assert manager.latest_step() == STEPS
    return jax.device_get(checkpointing.restore(manager, STEPS, abstract))


def test_killed_and_resumed_run_equals_uninterrupted_run_bitwise(runs):
    assert runs["at_kill"] and max(runs["at_kill"]) < STEPS, runs["at_kill"]
    assert f"Training steps {max(runs['at_kill'])}..{STEPS}" in runs["resumed_out"]
    a, b = _final_state(runs["full"]), _final_state(runs["killed"])
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert int(a.step) == STEPS
    # Training changed the parameters and filled the queue.
    assert int(a.queue.ptr) == (STEPS * 16) % 32


def test_run_leaves_eval_json_figures_and_events(runs):
    full = runs["full"]
    result = json.loads((full / f"eval_synthetic-s0_validation_{STEPS}.json").read_text())
    assert 0.0 <= result["balanced_accuracy"] <= 1.0
    assert len(result["confusion_matrix"]) == 7
    assert (full / f"confusion_synthetic-s0_validation_{STEPS}.png").stat().st_size > 1000
    assert (full / "pairs.png").stat().st_size > 1000
    assert (full / "figures" / f"confusion_validation_{STEPS}.png").stat().st_size > 1000
    assert list(full.glob("events.out.tfevents.*"))
    # The run ends on the test split too, and records what it was.
    test = json.loads((full / f"eval_synthetic-s0_test_{STEPS}.json").read_text())
    assert test["split"] == "test" and test["role"] == "held-out test split"
    assert json.loads((full / "config.json").read_text())["optim"]["total_steps"] == STEPS
    assert "--config=configs/tiny.py" in (full / "command.txt").read_text()
    # TensorBoard: the pair figure and per-class recall at the periodic evaluation, grad norm.
    assert (full / "figures" / f"pairs_{STEPS}.png").stat().st_size > 1000
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(str(full), size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    want = {
        "train/grad_norm",
        "train/steps_per_sec",
        "val_recall/DF",
        "train/pairs",
        "val/few_accuracy",
    }
    assert want <= tags, tags


def test_eval_on_one_device_matches_eight(runs):
    full = runs["full"]
    config = tiny.get_config()
    config.optim.total_steps = STEPS
    eight = json.loads((full / f"eval_synthetic-s0_validation_{STEPS}.json").read_text())
    # Re-evaluate the same checkpoint in a process that has a single CPU device.
    out = full / "one_device"
    out.mkdir()
    for p in ("checkpoints", "best"):
        (out / p).symlink_to(full / p)
    done = subprocess.run(
        _cmd(out, "eval"),
        cwd=REPO,
        env=_env(runs["cache"], devices=1),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    one = json.loads((out / f"eval_synthetic-s0_validation_{STEPS}.json").read_text())
    assert one["confusion_matrix"] == eight["confusion_matrix"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        assert one[key] == pytest.approx(eight[key], abs=1e-9)
    assert one["auc_macro"] == pytest.approx(eight["auc_macro"], abs=1e-4)
    # And in this process (8 devices) the restored parameters give the same metrics again.
    mesh = sharding.make_mesh()
    variables, step = evaluate.restore_variables(config, str(full), mesh)
    from input_pipeline import sources

    split = sources.get_split(config.data, config.data.eval_split)
    again = evaluate.evaluate_split(config, variables, split, mesh)
    assert step == STEPS
    assert again["confusion_matrix"] == eight["confusion_matrix"]


def test_predict_writes_probabilities_csv(runs):
    full = runs["full"]
    done = subprocess.run(
        _cmd(full, "predict"),
        cwd=REPO,
        env=_env(runs["cache"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    # Predictions default to the test split (the command says so).
    lines = (full / f"predict_synthetic-s0_test_{STEPS}.csv").read_text().splitlines()
    assert lines[0] == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"
    assert len(lines) == 1 + 40
    probs = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
