"""A built dataset damaged afterwards: a truncated record file, a corrupt metadata.json or
dataset_info.json. Reading it names the file and gives the command that rebuilds it."""

import os
import subprocess

import pytest

from configs import tiny
from input_pipeline import build, sources
from spmix_jax.errors import UserError

from . import helpers


@pytest.fixture
def built(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    path = helpers.build(source, tmp_path / "out")
    cfg = tiny.get_config().data
    cfg.name = "folder_csv"
    cfg.data_dir = os.fspath(tmp_path / "out")
    return source, path, cfg


def _rebuild_command(cfg) -> str:
    return (
        f"python -m input_pipeline.build --builder=folder_csv --source="
        f"DIR_WITH_IMAGES_AND_labels.csv --data_dir={cfg.data_dir} --config=default --overwrite"
    )


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_record_file_names_it_and_the_rebuild(built, cut):
    _, path, cfg = built
    shard = os.path.join(path, "folder_csv-train.array_record-00000-of-00001")
    with open(shard, "r+b") as f:
        f.truncate(int(os.path.getsize(shard) * cut))
    with pytest.raises(UserError) as err:
        sources.get_split(cfg, "train")
    message = str(err.value)
    assert message.startswith(f"{shard}: ")
    assert "the built dataset is damaged" in message
    assert message.endswith(_rebuild_command(cfg))


@pytest.mark.parametrize("name", ["metadata.json", "dataset_info.json"])
def test_corrupt_json_names_the_file_and_the_rebuild(built, name):
    _, path, cfg = built
    file = os.path.join(path, name)
    text = open(file).read()
    with open(file, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(UserError) as err:
        sources.get_split(cfg, "train")
    message = str(err.value)
    assert message.startswith(f"{file}: not readable JSON")
    assert message.endswith(_rebuild_command(cfg))


def test_dataset_info_that_tfds_cannot_read_names_the_folder(built):
    _, path, cfg = built
    with open(os.path.join(path, "dataset_info.json"), "w") as f:
        f.write('{"name": 7, "splits": "x"}')
    with pytest.raises(UserError) as err:
        sources.get_split(cfg, "train")
    assert str(err.value).startswith(f"{path}: TFDS cannot open it")
    assert str(err.value).endswith(_rebuild_command(cfg))


def test_build_command_on_a_corrupt_metadata_json_says_overwrite(built, tmp_path):
    source, path, _ = built
    file = os.path.join(path, "metadata.json")
    with open(file, "w") as f:
        f.write("{")
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "input_pipeline.build",
            "--builder=folder_csv",
            f"--source={source}",
            f"--data_dir={tmp_path / 'out'}",
            "--metadata=none",
            "--split_fractions=1",
        ],
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = done.stderr[done.stderr.index("error: ") :].strip()
    assert error.startswith(f"error: {file}: not readable JSON")
    assert error.endswith("running the same build command with --overwrite.")
    # ... and --overwrite does replace it.
    path = helpers.build(source, tmp_path / "out", overwrite=True)
    build.validate_dataset(path)
