"""A trained run used as a model: the Python API equals the evaluation, `spmix-predict` classifies
folders of image files, and an exported model equals the in-project forward without flax.

One tiny run (2 training steps of `configs/tiny.py`, cross-entropy) is shared by every test here.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from input_pipeline import sources
from spmix_jax import evaluate, export, inference, metrics, predict, sharding, train
from spmix_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("infer_run")
    config = tiny.get_config("steps=2,method=ce")
    assert train.train_and_evaluate(config, os.fspath(workdir))
    return workdir


@pytest.fixture(scope="module")
def classifier(run_dir):
    return inference.Classifier.from_workdir(run_dir, "latest", batch_size=8)


def test_probabilities_equal_the_evaluation(run_dir, classifier):
    config = classifier.config
    assert classifier.step == 2 and classifier.class_names == tuple(config.data.class_names)
    split = sources.get_split(config.data, config.data.eval_split, require_train=False)
    mesh = sharding.make_mesh(jax.devices()[:1])  # where the classifier's variables live
    logits, _, index = evaluate.predict_split(config, classifier.variables, split, mesh)
    expected = metrics.softmax(logits)
    images = np.stack([np.asarray(split.source[int(i)]["image"]) for i in index])
    got = classifier.predict(images)
    assert got.shape == (len(index), config.data.num_classes)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(got, got[:1])  # a trained model: rows differ


def _write_images(folder, pixels):
    """The same pixels as PNG (RGB, RGBA, grayscale) and JPEG, one unreadable file."""
    sub = folder / "sub"
    sub.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "rgb.png")
    rgba = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 128, np.uint8)], axis=-1)
    Image.fromarray(rgba, "RGBA").save(sub / "rgba.PNG")
    Image.fromarray(pixels).convert("L").save(folder / "gray.png")
    Image.fromarray(pixels).save(sub / "photo.jpg", quality=95)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("not listed")


def test_predict_a_folder_names_the_unreadable_file(classifier, tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 36, 3), dtype=np.uint8)
    _write_images(tmp_path / "imgs", pixels)
    files = inference.find_images([tmp_path / "imgs"])
    assert [os.path.relpath(f, tmp_path / "imgs") for f in files] == [
        "broken.jpg",
        "gray.png",
        "rgb.png",
        "sub/photo.jpg",
        "sub/rgba.PNG",
    ]
    out = io.StringIO()
    count, failed = predict.predict_files(classifier, files, out, str(tmp_path / "ov"))
    assert count == 4 and failed == [str(tmp_path / "imgs" / "broken.jpg")]
    assert "skipped" in capsys.readouterr().err
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    names = list(classifier.class_names)
    assert rows[0] == ["image", *names, "predicted", "confidence"]
    by_name = {os.path.basename(r[0]): r for r in rows[1:]}
    expected = classifier.predict(
        [
            pixels,  # RGB and RGBA (alpha dropped) are the same pixels
            pixels,
            np.asarray(Image.fromarray(pixels).convert("L").convert("RGB")),
        ]
    )
    for name, want in (("rgb.png", expected[0]), ("rgba.PNG", expected[1])):
        got = np.array(by_name[name][1 : 1 + len(names)], float)
        np.testing.assert_allclose(got, want, atol=2e-6)
        assert by_name[name][-2] == names[int(np.argmax(want))]
        assert float(by_name[name][-1]) == pytest.approx(want.max(), abs=2e-6)
    np.testing.assert_allclose(
        np.array(by_name["gray.png"][1 : 1 + len(names)], float), expected[2], atol=2e-6
    )
    overlays = sorted(os.listdir(tmp_path / "ov"))
    assert len(overlays) == 4 and all(o.endswith(".png") for o in overlays)
    assert Image.open(tmp_path / "ov" / overlays[0]).size[0] > 100


def test_explain_is_the_gradient_of_the_predicted_class(classifier):
    rng = np.random.default_rng(1)
    squares = rng.integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    maps, views = classifier.explain(squares, np.array([0, 1, 2]))
    assert maps.shape == (3, 16, 16) and views.shape == (3, 16, 16, 3)
    assert maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    assert not np.allclose(maps[0], maps[1])


def test_missing_path_is_one_error(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        inference.find_images([tmp_path / "nope"])


def test_exported_model_equals_the_forward_without_flax(classifier, tmp_path):
    out = export.export_classifier(classifier, tmp_path / "exported")
    info = json.loads((tmp_path / "exported" / "model.json").read_text())
    assert info["class_names"] == list(classifier.class_names) and info["image_size"] == 24
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8) for n in (1, 5)]
    for k, b in enumerate(batches):
        np.save(tmp_path / f"in{k}.npy", b)
    Image.fromarray(batches[1][0]).save(tmp_path / "one.png")
    script = f"""
import os, sys, numpy as np
from spmix_jax import exported
model = exported.load({out!r})
os.chdir({str(tmp_path)!r})
for k in range(2):
    np.save(f"out{{k}}.npy", model(np.load(f"in{{k}}.npy")))
np.save("file.npy", model(["one.png"]))
bad = [m for m in sys.modules if m.split(".")[0] in ("flax", "configs", "optax", "orbax")
       or m.startswith("spmix_jax.models") or m in ("spmix_jax.inference", "spmix_jax.step")]
assert not bad, bad
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="")
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for k, b in enumerate(batches):
        np.testing.assert_allclose(
            np.load(tmp_path / f"out{k}.npy"), classifier.probabilities(b), atol=1e-5
        )
    np.testing.assert_allclose(
        np.load(tmp_path / "file.npy")[0], classifier.probabilities(batches[1][:1])[0], atol=1e-5
    )


@pytest.mark.slow
def test_predict_command_writes_csv_and_overlays_from_anywhere(run_dir, tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (30, 36, 3), dtype=np.uint8)
    _write_images(tmp_path / "imgs", pixels)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, XLA_FLAGS="")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "spmix_jax.predict",
            f"--workdir={run_dir}",
            "--checkpoint=latest",
            "imgs",
            "--explain=overlays",
            "--out=p.csv",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "broken.jpg" in done.stderr and "Traceback" not in done.stderr
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert len(rows) == 5 and rows[0][0] == "image" and rows[0][-2:] == ["predicted", "confidence"]
    assert len(os.listdir(tmp_path / "overlays")) == 4


def test_predict_mode_defaults_to_the_test_split_and_says_so(run_dir, capsys):
    config = tiny.get_config()
    config.eval.checkpoint = "latest"
    result = evaluate.run(config, os.fspath(run_dir), "predict")
    out = capsys.readouterr().out
    assert "Predicting the test split (--config.eval.split=NAME for another)" in out
    assert os.path.basename(result["path"]) == "predict_synthetic-s0_test_2.csv"
    assert result["num_examples"] == len(sources.get_split(config.data, "test").labels)
