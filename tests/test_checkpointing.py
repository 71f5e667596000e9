"""Checkpoint managers: relative workdirs, best-vs-latest resolution, resharding on restore,
and asynchronous saves that a kill cannot turn into a half-written latest checkpoint."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spmix_jax import checkpointing, sharding

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tree(value: float):
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    return {
        "w": jax.device_put(jnp.full((4, 3), value, jnp.float32), rep),
        "step": jax.device_put(jnp.asarray(int(value), jnp.int32), rep),
    }


def _abstract(tree, devices):
    target = sharding.replicated(sharding.make_mesh(devices))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target), tree)


def test_relative_workdir_save_restore_and_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    latest = checkpointing.latest_manager("run", keep=2)
    best = checkpointing.best_manager("run")
    for step, acc in ((1, 0.2), (2, 0.6), (3, 0.4)):
        tree = _tree(float(step))
        checkpointing.save(latest, step, tree)
        checkpointing.save(best, step, tree, metrics={"balanced_accuracy": acc})
    assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
    assert checkpointing.latest_manager("run").all_steps() == [2, 3]  # keeps the last 2
    manager, step = checkpointing.resolve_step("run", "best")
    assert step == 2  # the best balanced accuracy, not the latest
    restored = checkpointing.restore(manager, step, _abstract(_tree(0.0), jax.devices()[:1]))
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.full((4, 3), 2.0))
    assert len(restored["w"].sharding.device_set) == 1  # resharded onto one device
    assert checkpointing.resolve_step("run", "latest")[1] == 3
    assert checkpointing.resolve_step("run", "2")[1] == 2
    with pytest.raises(FileNotFoundError, match="available"):
        checkpointing.resolve_step("run", "7")
    with pytest.raises(ValueError, match="eval.checkpoint"):
        checkpointing.resolve_step("run", "newest")


def test_missing_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train first"):
        checkpointing.resolve_step(str(tmp_path / "empty"), "latest")


def _tmp_dirs(workdir: pathlib.Path) -> list[str]:
    ckpt = workdir / "checkpoints"
    return [p.name for p in ckpt.iterdir() if "tmp" in p.name] if ckpt.is_dir() else []


@pytest.mark.slow
def test_kill_during_async_save_resumes_from_a_complete_checkpoint(tmp_path):
    steps = 12
    workdir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "spmix_jax.main",
        "--config=configs/tiny.py",
        f"--config.optim.total_steps={steps}",
        "--config.train.checkpoint_every=1",
        "--config.train.keep_checkpoints=100",
        "--config.train.eval_every=1000",
        f"--workdir={workdir}",
    ]
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    # SIGKILL the moment a save is in flight (orbax writes a step into a temporary folder and
    # renames it when complete), once at least one step is complete.
    deadline, seen_in_flight = time.time() + 600, []
    while proc.poll() is None and time.time() < deadline:
        in_flight = _tmp_dirs(workdir)
        if in_flight and (workdir / "checkpoints" / "1").is_dir():
            proc.send_signal(signal.SIGKILL)
            seen_in_flight = in_flight
            break
        time.sleep(0.002)
    proc.wait()
    assert seen_in_flight, "no save was caught in flight: " + proc.stderr.read()[-3000:]
    assert proc.returncode == -signal.SIGKILL
    # Only complete steps are listed; the interrupted one is not among them.
    manager = checkpointing.latest_manager(str(workdir), create=False)
    complete = list(manager.all_steps())
    assert complete and max(complete) < steps
    for step in complete:
        assert (workdir / "checkpoints" / str(step) / "state").is_dir()
    resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"Training steps {max(complete)}..{steps} of {steps}" in resumed.stdout
    assert checkpointing.latest_manager(str(workdir), create=False).latest_step() == steps


_PENDING_READ = """
async def read(pending):
    try:
        await pending
    except GeneratorExit as closed:
        raise Exception("Encountered error while reading array index") from closed
"""


def _collect_pending_read(filename: str, monkeypatch) -> list:
    """What the quieted unraisable hook passes on when a coroutine compiled as `filename`,
    suspended on a read, is garbage-collected (closing it raises from `GeneratorExit`)."""
    import asyncio
    import gc

    passed: list = []
    monkeypatch.setattr(sys, "unraisablehook", checkpointing._quiet_abandoned_io(passed.append))
    namespace: dict = {}
    exec(compile(_PENDING_READ, filename, "exec"), namespace)
    loop = asyncio.new_event_loop()
    coroutine = namespace["read"](loop.create_future())
    coroutine.send(None)  # suspended on the future, as orbax's shard reads are
    del coroutine
    gc.collect()
    loop.close()
    return passed


def test_reads_of_a_failed_restore_are_not_reported(monkeypatch):
    orbax_file = os.path.join(checkpointing._ORBAX_DIR, "_src", "serialization", "x.py")
    assert _collect_pending_read(orbax_file, monkeypatch) == []
    # The same error from a coroutine outside orbax still shows.
    (other,) = _collect_pending_read(os.path.join(os.getcwd(), "reader.py"), monkeypatch)
    assert isinstance(other.exc_value.__cause__, GeneratorExit)
