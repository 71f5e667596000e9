"""Faults around a real training run on a built dataset: resuming on the classes in another
order, a damaged newest checkpoint, evaluating two builds that share a config name, image ids
that a spreadsheet would run as formulas. One short run is trained once and copied per test."""

import csv
import pathlib
import shutil
import subprocess

import pytest

from configs import tiny
from input_pipeline.builders.isic2018 import ISIC_CLASSES
from spmix_jax import evaluate, train
from spmix_jax.errors import UserError

from . import helpers

pytestmark = pytest.mark.slow


def run_config(data_dir: pathlib.Path, steps: int, class_names=ISIC_CLASSES):
    """The tiny config on a folder_csv build with a train split only (also evaluated on)."""
    config = tiny.get_config(f"steps={steps}")
    config.data.name = "folder_csv"
    config.data.data_dir = str(data_dir)
    config.data.class_names = tuple(class_names)
    config.data.eval_split = "train"
    config.data.test_split = ""
    config.eval.split = "train"
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`run/` trained 4 steps (checkpoints 2 and 4) on `tfds/`, built from `src/`."""
    root = tmp_path_factory.mktemp("trained")
    helpers.make_source(root / "src", per_class=3)
    helpers.build(root / "src", root / "tfds", class_names=ISIC_CLASSES)
    assert train.train_and_evaluate(run_config(root / "tfds", 4), str(root / "run"))
    return root


def _copy(trained, tmp_path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(trained / "run", tmp_path / "run"))


def test_resume_with_another_model_gives_one_message(trained, tmp_path):
    """Today: the message, then 800-5,000 lines of orbax read errors, about 60 for each array
    of the state, as the failed restore's pending reads are garbage-collected."""
    workdir = _copy(trained, tmp_path)
    proc = subprocess.run(
        [helpers.python(), "-m", "spmix_jax.main", "--config=configs/tiny.py:steps=6",
         f"--workdir={workdir}", "--config.data.name=folder_csv",
         f"--config.data.data_dir={trained / 'tfds'}", "--config.data.eval_split=train",
         "--config.data.test_split=", "--config.model.image_size=24"],
        capture_output=True, text=True, env=helpers.subprocess_env(), timeout=600,
        cwd=helpers.REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit the config" in errors[0], proc.stderr[-3000:]
    assert "model.image_size=16; you asked for 24" in proc.stderr
    assert len(proc.stderr.splitlines()) < 10


def test_resume_with_the_classes_in_another_order_is_refused(trained, tmp_path):
    """Today it resumes at step 4 and later checkpoints record the new order."""
    workdir = _copy(trained, tmp_path)
    reversed_names = ISIC_CLASSES[::-1]
    helpers.build(trained / "src", tmp_path / "tfds", class_names=reversed_names)
    config = run_config(tmp_path / "tfds", 6, reversed_names)
    with pytest.raises(UserError) as err:
        train.train_and_evaluate(config, str(workdir))
    message = str(err.value)
    assert str(list(ISIC_CLASSES)) in message and str(list(reversed_names)) in message
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


def _damage(step_dir: pathlib.Path, how: str) -> None:
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    if how == "metadata":
        files = [p for p in files if p.name == "_METADATA"]
    assert files
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize("how", ["metadata", "all"])
def test_damaged_newest_checkpoint_resumes_from_the_previous(trained, tmp_path, capsys, how):
    """Today: "does not fit the config ... pass the config it was trained with"."""
    workdir = _copy(trained, tmp_path)
    _damage(workdir / "checkpoints" / "4" / "state", how)
    assert train.train_and_evaluate(run_config(trained / "tfds", 6), str(workdir))
    out = capsys.readouterr().out
    assert "checkpoint 4" in out and "Training steps 2..6" in out
    assert (workdir / "checkpoints_unreadable" / "4").is_dir()


@pytest.mark.parametrize("how", ["metadata", "all"])
def test_damaged_newest_checkpoint_evaluates_the_previous(trained, tmp_path, how):
    workdir = _copy(trained, tmp_path)
    _damage(workdir / "checkpoints" / "4" / "state", how)
    config = run_config(trained / "tfds", 4)
    config.eval.checkpoint = "latest"
    result = evaluate.run(config, str(workdir), "eval")
    assert result["step"] == 2
    config.eval.checkpoint = "4"  # asked for by number: no other step is taken for it
    with pytest.raises(UserError, match="step 4: ") as err:
        evaluate.run(config, str(workdir), "eval")
    assert "does not fit" not in str(err.value)


def test_two_builds_with_one_config_name_keep_both_results(trained, tmp_path):
    """Today both write `eval_folder_csv-default_train_4.json`; the second replaces the first."""
    workdir = _copy(trained, tmp_path)
    helpers.make_source(tmp_path / "src2", per_class=2, seed=5)
    helpers.build(tmp_path / "src2", tmp_path / "tfds2", class_names=ISIC_CLASSES)
    first = evaluate.run(run_config(trained / "tfds", 4), str(workdir), "eval")
    second = evaluate.run(run_config(tmp_path / "tfds2", 4), str(workdir), "eval")
    files = sorted(workdir.glob("eval_folder_csv-default*_train_4.json"))
    assert len(files) == 2
    assert first["dataset"] != second["dataset"]
    assert first["dataset_location"].startswith(str(trained / "tfds"))
    assert second["dataset_location"].startswith(str(tmp_path / "tfds2"))
    assert first["dataset_fingerprint"] != second["dataset_fingerprint"]
    # The same dataset evaluated again replaces its own result, not the other's.
    again = evaluate.run(run_config(trained / "tfds", 4), str(workdir), "eval")
    assert again["dataset"] == first["dataset"]
    assert len(sorted(workdir.glob("eval_folder_csv-default*_train_4.json"))) == 2


HOSTILE_IDS = ["=1+2", "@SUM(1+1)", "=cmd|' -C calc'!A0"]


def test_predict_csv_escapes_formula_ids(trained, tmp_path):
    """Today `=cmd|' -C calc'!A0` is written unescaped: a spreadsheet runs it."""
    workdir = _copy(trained, tmp_path)
    source = helpers.make_source(tmp_path / "src", per_class=1)
    rows = list(csv.reader((source / "labels.csv").open()))
    for image_id, row in zip(HOSTILE_IDS, rows[1:], strict=False):
        (source / "images" / f"{row[0]}.png").rename(source / "images" / f"{image_id}.png")
        row[0] = image_id
    with (source / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    helpers.build(source, tmp_path / "tfds", class_names=ISIC_CLASSES)
    result = evaluate.run(run_config(tmp_path / "tfds", 4), str(workdir), "predict")
    with open(result["path"], newline="") as f:
        ids = [row[0] for row in csv.reader(f)][1:]
    assert sorted(ids) == sorted(["'" + i for i in HOSTILE_IDS] + [r[0] for r in rows[4:]])
