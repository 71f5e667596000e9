"""Writing result files (metrics JSON, prediction CSVs, results tables): whole or not at all.

Every result file the project writes goes through here, for two reasons:

- Atomic: the text goes to a temporary file in the same folder, is flushed to disk, and is
  renamed over the target. A run killed while writing leaves the previous file (or none), never
  half of one; readers never see a partial file. (On object stores, where rename is not atomic,
  the file is written directly.)
- Safe in spreadsheets: a CSV cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage
  return is read as a formula by Excel, LibreOffice and Google Sheets (an image id such as
  `=cmd|' -C calc'!A0` would run). `escape_cell` prefixes such text cells with `'`, which those
  programs show as text; numbers (int, float) are written as they are.

Public functions: `write_text`, `write_json`, `write_csv`, `escape_cell`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

from etils import epath

# First characters that make spreadsheet programs evaluate a cell (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """`value` as a CSV cell no spreadsheet evaluates: text starting with one of
    `FORMULA_STARTS` gets a leading `'`; numbers, None and other text are returned as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


@contextlib.contextmanager
def atomic_stream(path: str | os.PathLike) -> Iterator[IO[str]]:
    """A text stream (UTF-8) that becomes the file `path` only when the block ends without an
    error: written to a temporary file beside it, then renamed, so a killed writer never leaves
    half a file. Parent folders are created."""
    out = epath.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "://" in os.fspath(path):  # object stores: a single upload is what they offer
        buffer = io.StringIO()
        yield buffer
        out.write_text(buffer.getvalue())
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=os.fspath(out.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; open() would honour the umask
        os.replace(tmp, os.fspath(out))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> epath.Path:
    """Writes `text` (UTF-8) to `path` atomically, creating parent folders; returns the path."""
    with atomic_stream(path) as f:
        f.write(text)
    return epath.Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, value: Any, default: Any = None) -> epath.Path:
    """`value` as strict, indented JSON (NaN refused; `default` converts other types),
    written atomically."""
    return write_text(path, json.dumps(value, indent=2, allow_nan=False, default=default) + "\n")


def write_csv(
    path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> epath.Path:
    """A CSV with `header` and `rows`, every text cell escaped (`escape_cell`), written
    atomically. None is an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([escape_cell(h) for h in header])
    for row in rows:
        writer.writerow(["" if v is None else escape_cell(v) for v in row])
    return write_text(path, buffer.getvalue())
