"""CSV abuse: a quote opened and never closed, and a field beyond the csv module's size limit."""

import csv
import subprocess

import pytest

from input_pipeline.builders import csv_layout

from . import helpers


def _insert(source, line: int, text: str) -> None:
    """Puts `text` at `line` (1 = header) of labels.csv."""
    lines = (source / "labels.csv").read_text().splitlines()
    lines.insert(line - 1, text)
    (source / "labels.csv").write_text("\n".join(lines) + "\n")


def test_unclosed_quote_names_the_line_where_it_opens(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    _insert(source, 4, 'img_0_2,"NV')  # the quote swallows every later line (23 in all)
    with pytest.raises(csv_layout.DataError) as err:
        helpers.build(source, tmp_path / "out")
    message = str(err.value)
    assert "labels.csv, line 4: " in message
    assert 'a quote (") opened on this line is not closed before line 23' in message
    assert "line 23:" not in message


def test_quote_closed_lines_later_names_the_opening_line(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    _insert(source, 3, 'img_0_1,"MEL')
    _insert(source, 6, 'img_1_0",NV')
    with pytest.raises(csv_layout.DataError) as err:
        helpers.build(source, tmp_path / "out")
    assert 'labels.csv, line 3: a quote (") opened on this line is not closed before line 6' in (
        str(err.value)
    )


def test_huge_field_names_file_and_line_through_the_command(tmp_path):
    source = helpers.make_source(tmp_path / "src")
    _insert(source, 5, '"' + "x" * (csv.field_size_limit() + 10))
    done = subprocess.run(
        [
            helpers.python(),
            "-m",
            "input_pipeline.build",
            "--builder=folder_csv",
            f"--source={source}",
            f"--data_dir={tmp_path / 'out'}",
            "--metadata=none",
        ],
        env=helpers.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    error = done.stderr[done.stderr.index("error: ") :].strip()
    assert error.startswith(f"error: {source / 'labels.csv'}, line 5: the record starting here")
    assert "field larger than field limit" in error and "quote" in error
    assert len(error.splitlines()) == 1


def test_line_break_inside_a_quoted_ignored_column_is_valid_csv():
    rows, problems = csv_layout.parse_label_rows(
        ["image,label,note\n", 'a,NV,"two\n', 'lines"\n', "b,MEL,x\n"],
        "labels.csv",
        ("MEL", "NV"),
        ignore_columns=("note",),
    )
    assert problems == []
    assert [(r.image_id, r.label, r.line) for r in rows] == [("a", 1, 2), ("b", 0, 4)]
    lesions, problems = csv_layout.parse_lesion_rows(
        ["image_id,lesion_id,note\n", 'a,L1,"two\n', 'lines"\n', "b,L2,x\n"], "metadata.csv"
    )
    assert problems == [] and lesions == {"a": "L1", "b": "L2"}


def test_quote_open_in_an_unread_column_is_warned_naming_the_lines(capsys):
    # Valid CSV either way: the note of `a` runs over three lines (or a quote was left open and
    # swallowed `b`); the build cannot tell, so it reads the row and says which lines to check.
    lines = ["image,label,note\n", 'a,MEL,"open\n', "b,NV,x\n", 'c,NV,closed"\n', "d,NV,y\n"]
    rows, problems = csv_layout.parse_label_rows(
        lines, "labels.csv", ("MEL", "NV"), ignore_columns=("note",)
    )
    assert [r.image_id for r in rows] == ["a", "d"] and not problems
    assert "warning: labels.csv, lines 2-4 were read as one row" in capsys.readouterr().out
