"""The demo config learns: a short run at a fixed seed ends well above chance balanced accuracy.

The other end-to-end tests check plumbing (resume, evaluation files); this one fails when a change
keeps everything running but stops the model from learning.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess run of the whole trainer, about a minute on a CPU

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 300
# 7 classes: chance is 0.14. One run of this command gave 0.43 (validation) and 0.41 (test).
MIN_VALIDATION = 0.33
MIN_TEST = 0.30


def test_demo_reaches_well_above_chance(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "spmix_jax.main",
        f"--config=configs/demo.py:steps={STEPS}",
        "--config.seed=0",
        f"--config.train.eval_every={STEPS}",
        f"--config.train.checkpoint_every={STEPS}",
        f"--workdir={tmp_path}",
    ]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    val = json.loads((tmp_path / f"eval_synthetic-s0_validation_{STEPS}.json").read_text())
    test = json.loads((tmp_path / f"eval_synthetic-s0_test_{STEPS}.json").read_text())
    assert val["balanced_accuracy"] >= MIN_VALIDATION, val["balanced_accuracy"]
    assert test["balanced_accuracy"] >= MIN_TEST, test["balanced_accuracy"]
