"""`model.init_from` pointing at something that is no pretrained model: one message naming the
file and the layouts that are accepted, and a pickled object is never unpickled."""

import os
import pickle
import subprocess

import numpy as np
import pytest

from configs import tiny
from spmix_jax import pretrained
from spmix_jax.errors import UserError

from . import helpers


class _Marker:
    """Unpickling this writes a file: the proof that a load executed pickled code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _bad_files(tmp_path) -> dict[str, str]:
    pickled = tmp_path / "pickled.npz"
    with open(pickled, "wb") as f:  # an .npz whose one member is a pickled object array
        np.savez(f, evil=np.array([_Marker(os.fspath(tmp_path / "unpickled"))], dtype=object))
    malformed = tmp_path / "malformed.safetensors"
    malformed.write_bytes((2**40).to_bytes(8, "little") + b'{"a": oops')
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    return {
        "pickled npz": os.fspath(pickled),
        "malformed safetensors": os.fspath(malformed),
        "/etc/passwd": "/etc/passwd",
        "empty folder": os.fspath(empty),
    }


def test_bad_files_are_user_errors_naming_the_file_and_layouts(tmp_path):
    assert pickle.loads(pickle.dumps(1)) == 1
    for what, path in _bad_files(tmp_path).items():
        config = tiny.get_config()
        config.model.init_from = path
        with pytest.raises(UserError) as err:
            pretrained.load_into(config, {})
        message = str(err.value)
        assert message.startswith(f"{path}: "), what
        for layout in pretrained.LAYOUTS.values():
            assert layout in message, what
    assert not (tmp_path / "unpickled").exists()


@pytest.mark.slow
def test_training_command_prints_one_line_for_a_pickled_npz(tmp_path):
    path = _bad_files(tmp_path)["pickled npz"]
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "spmix_jax.main",
            "--config=configs/tiny.py",
            f"--workdir={tmp_path / 'run'}",
            f"--config.model.init_from={path}",
        ],
        cwd=helpers.REPO,
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert errors[0].startswith(f"error: {path}: not a readable .npz file")
    assert "allow_pickle=False" in errors[0] and "Known layouts:" in errors[0]
    assert not (tmp_path / "unpickled").exists()
