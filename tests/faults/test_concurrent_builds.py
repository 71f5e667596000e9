"""Two builds of one missing dataset at once, and the folders killed builds leave behind."""

import os
import signal
import subprocess
import threading
import time

import pytest

from configs import tiny
from input_pipeline import build, build_lock, sources

from . import helpers

# A build command whose writing of images stops at a gate until the test opens it; the file
# `started` says it got there (so it holds the dataset's build lock, where there is one).
_GATED_BUILD = """
import os, sys, time
from input_pipeline import build
from input_pipeline.builders import image_files
real = image_files.prepare_image
gate = sys.argv.pop(1)
def gated(data, *a, **k):
    open(gate + ".started", "w").close()
    deadline = time.time() + 300
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.05)
    return real(data, *a, **k)
image_files.prepare_image = gated
build.run()
"""


def _command(source, data_dir) -> list[str]:
    return [
        "--builder=folder_csv",
        f"--source={source}",
        f"--data_dir={data_dir}",
        "--metadata=none",
        "--split_fractions=1",
        "--num_threads=1",
    ]


def _wait_for(condition, seconds: float = 180) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_second_build_command_waits_for_the_first_and_reuses_it(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    data_dir = tmp_path / "out"
    gate = tmp_path / "gate"
    env = helpers.subprocess_env()
    first = subprocess.Popen(
        [helpers.python(), "-c", _GATED_BUILD, str(gate), *_command(source, data_dir)],
        cwd=helpers.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _wait_for(lambda: os.path.exists(f"{gate}.started") or first.poll() is not None)
    second_err = tmp_path / "second.err"
    with open(second_err, "w") as err:
        second = subprocess.Popen(
            [helpers.python(), "-m", "input_pipeline.build", *_command(source, data_dir)],
            cwd=helpers.REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        # The second either waits (and says so) or, without a lock, builds everything itself.
        _wait_for(lambda: "waiting for" in second_err.read_text() or second.poll() is not None)
        gate.touch()
        out_first, err_first = first.communicate(timeout=300)
        out_second, _ = second.communicate(timeout=300)
    err_second = second_err.read_text()
    assert first.returncode == 0, err_first[-3000:]
    assert second.returncode == 0, err_second[-3000:]
    assert f"waiting for process {first.pid} on host" in err_second
    target = data_dir / "folder_csv" / "default" / "1.0.0"
    assert f"Dataset at {target}" in out_first and f"Dataset at {target}" in out_second
    build.validate_dataset(target)
    assert not list(target.parent.glob("incomplete.*"))


@pytest.mark.slow
def test_folder_of_a_killed_build_is_removed_by_the_next_build(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    data_dir = tmp_path / "out"
    gate = tmp_path / "gate"
    killed = subprocess.Popen(
        [helpers.python(), "-c", _GATED_BUILD, str(gate), *_command(source, data_dir)],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert _wait_for(lambda: os.path.exists(f"{gate}.started") or killed.poll() is not None)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    config_dir = data_dir / "folder_csv" / "default"
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read()[-3000:]
    assert list(config_dir.glob("incomplete.*"))
    path = helpers.build(source, data_dir)
    assert not list(config_dir.glob("incomplete.*"))
    build.validate_dataset(path)


def test_leftover_incomplete_folder_is_removed(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    data_dir = tmp_path / "out"
    leftover = data_dir / "folder_csv" / "default" / "incomplete.0123abcd"
    (leftover / "1.0.0").mkdir(parents=True)
    (leftover / "1.0.0" / "folder_csv-train.array_record-00000-of-00001").write_bytes(b"x" * 99)
    path = helpers.build(source, data_dir)
    assert not leftover.exists()
    build.validate_dataset(path)


def test_trainer_building_on_first_use_waits_for_a_running_build(tmp_path, capsys):
    source = helpers.make_source(tmp_path / "src")
    cfg = tiny.get_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = os.fspath(tmp_path / "out")
    cfg.source_dir = os.fspath(source)
    target = tmp_path / "out" / "folder_csv" / "default" / "1.0.0"
    holding = threading.Event()

    def other_build() -> None:  # holds the dataset's build lock for a while, as a build would
        with build_lock.hold(os.fspath(target)):
            holding.set()
            time.sleep(3)

    thread = threading.Thread(target=other_build)
    thread.start()
    holding.wait()
    start = time.monotonic()
    split = sources.get_split(cfg, "train")  # builds the missing dataset after the lock is free
    waited = time.monotonic() - start
    thread.join()
    assert waited >= 2.5
    assert f"which is building the dataset at {target}" in capsys.readouterr().err
    assert len(split.source) == len(split.labels) > 0
