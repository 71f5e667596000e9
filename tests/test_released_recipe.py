"""`configs/isic2018.py:recipe=released` holds every value of docs/method.md's released-run table.

The test reads the table itself, so the documentation and the recipe cannot drift apart: a row
whose config field is missing or whose value differs fails.
"""

from __future__ import annotations

import ast
import operator
import pathlib
import re

import pytest

from configs import isic2018
from spmix_jax import optimizer

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADING = "### The released run, field by field"
_FIELD = re.compile(r"`([a-z_]+(?:\.[a-z_]+)?)`")


def _table_rows() -> list[tuple[str, str, str]]:
    """(released line, config field, value cell) for each row of the released-run table."""
    text = (ROOT / "docs" / "method.md").read_text()
    assert HEADING in text, f"docs/method.md lacks the section {HEADING!r}"
    rows = []
    for line in text.split(HEADING, 1)[1].splitlines():
        if line.startswith("## "):
            break
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not _FIELD.fullmatch(cells[2]):
            continue  # the header row
        rows.append((cells[0], cells[2].strip("`"), cells[3]))
    return rows


_OPS = {ast.Div: operator.truediv, ast.Mult: operator.mul, ast.USub: operator.neg}


def _value(cell: str):
    """A cell's Python literal, allowing `a / b` so that 256 / 224 need not be spelled out."""
    assert cell.startswith("`") and cell.endswith("`"), f"value cell {cell!r} is not `code`"

    def ev(node: ast.AST):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Tuple):
            return tuple(ev(e) for e in node.elts)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise AssertionError(f"value cell {cell!r} is not a literal")

    return ev(ast.parse(cell.strip("`"), mode="eval").body)


ROWS = _table_rows()


def test_the_table_covers_the_released_script():
    fields = {field for _, field, _ in ROWS}
    assert len(ROWS) >= 40, len(ROWS)
    for field in (
        "input.batch_size",
        "optim.base_lr",
        "data.builder_config",
        "loss.key_logits_from_query",
        "model.bn_group_size",
        "train.eval_every_epochs",
        "saliency.source",
        "saliency.fill",
        "model.init",
    ):
        assert field in fields, field


@pytest.mark.parametrize(("line", "field", "cell"), ROWS, ids=[r[1] for r in ROWS])
def test_recipe_holds_the_released_value(line, field, cell):
    config = isic2018.get_config("recipe=released")
    node = config
    for part in field.split("."):
        assert part in node, f"docs/method.md row {line!r} names {field}, not a config field"
        node = node[part]
    expected = _value(cell)
    message = (
        f"docs/method.md row {line!r}: {field} is {node!r} in recipe=released, the table says "
        f"{expected!r}"
    )
    if isinstance(expected, (str, bool)):
        assert type(node) is type(expected) and node == expected, message
    else:
        assert node == pytest.approx(expected), message


def test_batch_scales_the_released_run_out_and_says_so():
    base = isic2018.get_config("recipe=released")
    assert optimizer.peak_lr(base) == pytest.approx(5e-6)
    assert optimizer.scaling_note(base) is None
    wide = isic2018.get_config("recipe=released,batch=128")
    assert optimizer.peak_lr(wide) == pytest.approx(4e-5)  # 5e-6 x 128 / 16
    assert wide.model.bn_group_size == 16  # groups of 16, as 8 devices of 16 images
    note = optimizer.scaling_note(wide)
    assert note is not None and "4e-05" in note and "groups of 16" in note


def test_evaluation_every_epoch_counts_steps_per_epoch():
    config = isic2018.get_config("recipe=released")
    assert optimizer.eval_every_steps(config, 9886) == 9886 // 16  # 617 steps an epoch
    config.train.eval_every_epochs = 0.5
    assert optimizer.eval_every_steps(config, 9886) == 308
    config.train.eval_every_epochs = 0.0
    assert optimizer.eval_every_steps(config, 9886) == config.train.eval_every
