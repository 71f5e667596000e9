"""Result files (metrics JSON, prediction CSVs, results tables) are written whole or not at all,
and no CSV cell is read as a formula by a spreadsheet."""

import csv
import io
import json
import os
import subprocess
import textwrap

import pytest

from spmix_jax import experiments, result_files

from . import helpers

HOSTILE = ["=1+2", "@SUM(1+1)", "=cmd|' -C calc'!A0", "+1", "-2+3", "\tx", "\rx"]


@pytest.mark.parametrize("text", HOSTILE)
def test_formula_cells_are_escaped(text):
    assert result_files.escape_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["ISIC_0024306", "a=b", "", 0.25, -1.5, 3, None])
def test_other_cells_are_kept(value):
    assert result_files.escape_cell(value) == value


def test_results_table_escapes_text_cells(tmp_path):
    """Today `=1+2` is written as it is: a spreadsheet evaluates it."""
    row = {"method": "=1+2", "seed": 0, "balanced_accuracy": 0.5}
    path = tmp_path / "results.csv"
    experiments.write_csv(path, [row])
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert rows[0]["method"] == "'=1+2"
    assert rows[0]["seed"] == "0" and rows[0]["balanced_accuracy"] == "0.5"
    assert rows[0]["macro_f1"] == ""  # n/a stays an empty cell


# Each writer, run in a child whose file size limit (`ulimit -f`) stops it halfway.
WRITERS = {
    "eval_json": "from spmix_jax import metrics\n"
    "metrics.write_eval_json(PATH, {'per_class': ['x' * 100] * 400})",
    "results_csv": "from spmix_jax import experiments\n"
    "experiments.write_csv(PATH, [{'method': 'm' * 100, 'seed': i} for i in range(400)])",
    "predict_csv": "from spmix_jax import result_files\n"
    "result_files.write_csv(PATH, ['image', 'p'], [['x' * 100, 0.5]] * 400)",
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_interrupted_write_keeps_the_previous_file(tmp_path, writer):
    """Today the previous file is replaced by its first 8 KiB."""
    path = tmp_path / "result.out"
    path.write_text("previous result\n")
    script = (
        textwrap.dedent(
            f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        PATH = {str(path)!r}
        """
        )
        + WRITERS[writer]
    )
    proc = subprocess.run(
        [helpers.python(), "-c", script],
        capture_output=True, text=True, env=helpers.subprocess_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr[-2000:]
    assert path.read_text() == "previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.out"]  # no temporary file left


def test_write_json_replaces_whole(tmp_path):
    path = result_files.write_json(tmp_path / "sub" / "a.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    result_files.write_json(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    (tmp_path / "plain").write_text("")  # the mode any other file gets
    assert os.stat(path).st_mode == os.stat(tmp_path / "plain").st_mode
