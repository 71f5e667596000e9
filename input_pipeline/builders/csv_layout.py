"""Parsing and validation of label CSVs (ISIC one-hot or `image,label`) and lesion CSVs.

Everything here is pure: functions take file contents and return parsed rows plus a list of
`Problem`s, so the dataset builders and the tests share one source of truth for what counts as bad
input. Problems that concern a single item (one CSV row, one image) can be skipped with
`--skip_bad`; problems with the file as a whole (a missing or unknown class column) always raise.
Line numbers are those a text editor shows: the header is line 1, the first data row line 2.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from absl import logging

from input_pipeline.errors import DataError

# Extensions recognised as images; an id in a CSV may carry one of them (it is stripped).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Names of the image-id column, in order of preference (ISIC uses `image`, HAM10000 `image_id`).
IMAGE_COLUMNS = ("image", "image_id")
LESION_COLUMN = "lesion_id"
LABEL_COLUMN = "label"
# Problems printed in full in an error message; the rest are counted.
MAX_PROBLEMS_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad input item (a CSV row or an image), skippable with `skip_bad`."""

    kind: str  # missing_image | corrupt_image | not_one_hot | bad_label | duplicate_id | ...
    file: str  # the file the problem was found in (CSV or image)
    line: int  # CSV line (1 = header); 0 when the problem is not tied to a CSV line
    image_id: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" if self.line else self.file
        return f"{where}: {self.message}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LabelRow:
    """One parsed label row; `lesion_id` is '' when the CSV has no lesion column."""

    image_id: str
    label: int
    lesion_id: str
    file: str
    line: int


def image_id_from_value(value: str) -> str:
    """`'dir/ISIC_001.jpg'` -> `'ISIC_001'`; ids are file stems without an image extension.

    Ids are Unicode NFC (as `image_files.index_images` keys files), so an accented id typed in
    one normalisation form matches a file named in the other (macOS writes NFD names).
    """
    value = unicodedata.normalize("NFC", value.strip().replace("\\", "/"))
    base = value.rsplit("/", 1)[-1]
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_EXTENSIONS else base


def _find_image_column(header: Sequence[str], source: str) -> int:
    for name in IMAGE_COLUMNS:
        if name in header:
            return header.index(name)
    raise DataError(
        f"{source}, line 1: no image-id column; expected one named "
        f"{' or '.join(repr(c) for c in IMAGE_COLUMNS)}, got columns {list(header)}"
    )


def _read_header(reader: Any, source: str) -> list[str]:
    """The stripped header fields; an empty file has none and is refused."""
    for _, fields in _records(reader, source):
        return [h.strip() for h in fields]
    raise DataError(f"{source}: the CSV file is empty (expected a header line)")


def _records(reader: Any, source: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) for each record of a `csv.reader`.

    A record spans several lines when a quoted field holds line breaks; an unbalanced quote
    makes one field swallow the rest of the file (or more than the csv module's field limit),
    so problems are reported at the line where the record, and that quote, starts.
    """
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(
                f"{source}, line {start}: the record starting here cannot be read ({e}); "
                'probably a quote (") opened on this line is never closed. Close or remove '
                "it (a quote inside a field is written as two quotes)."
            ) from None
        yield start, fields


def _warn_if_spanning(fields: Sequence[str], source: str, start: int, end: int) -> None:
    """Warns about a record whose unread columns hold line breaks: legitimate CSV (a quoted
    note over several lines), but also what a quote left open in such a column does to the
    rows after it, which are then read as part of that field."""
    if end > start and any("\n" in f or "\r" in f for f in fields):
        message = (
            f"{source}, lines {start}-{end} were read as one row: a quoted field in a column "
            'the build does not use runs over line breaks. If a quote (") was left open there, '
            "the rows in between are missing from the dataset; check those lines."
        )
        logging.warning("%s", message)
        print(f"warning: {message}", flush=True)


def _unclosed_quote(fields: Sequence[str], start: int, end: int) -> str:
    """Why a record that runs over line breaks is bad ('' when it does not): in a label or
    lesion CSV that means a quote opened on its first line and closed lines later, or never."""
    if end > start and any("\n" in f or "\r" in f for f in fields):
        return (
            f'a quote (") opened on this line is not closed before line {end}, so lines '
            f"{start}-{end} were read as one row; close or remove it (a quote inside a field "
            'is written as "")'
        )
    return ""


def _is_blank(fields: Sequence[str]) -> bool:
    return not fields or all(not f.strip() for f in fields)


def _duplicate_row(
    source: str, line: int, image_id: str, first_line: int, first_id: str = ""
) -> Problem:
    """A later row repeating an image id (also one differing only in letter case: on a
    case-insensitive file system both name one file); the row on `first_line` is kept."""
    if first_id and first_id != image_id:
        detail = (
            f"image id {image_id} differs only in case from {first_id} (line {first_line}); "
            "ids must differ when case is ignored"
        )
    else:
        detail = f"duplicate image id {image_id} (first on line {first_line})"
    return Problem("duplicate_id", source, line, image_id, f"{detail}; expected each image once")


def id_key(image_id: str) -> str:
    """The key two ids must not share: ids equal when case is ignored name one file on
    case-insensitive file systems (macOS, Windows), so they count as the same id."""
    return image_id.casefold()


def _check_header_unique(header: Sequence[str], source: str) -> None:
    seen = set()
    for name in header:
        if name in seen:
            raise DataError(f"{source}, line 1: column {name!r} appears more than once")
        seen.add(name)


def _parse_one_hot(values: Sequence[str], class_names: Sequence[str]) -> tuple[int | None, str]:
    """Returns (label, '') for a valid one-hot row, else (None, reason)."""
    numbers = []
    for name, text in zip(class_names, values, strict=True):
        try:
            number = float(text)
        except ValueError:
            return None, f"column {name} is {text!r}, not a number"
        if not math.isfinite(number):
            return None, f"column {name} is {text!r}, not a finite number"
        numbers.append(number)
    ones = [i for i, v in enumerate(numbers) if v == 1.0]
    zeros = sum(v == 0.0 for v in numbers)
    if len(ones) == 1 and zeros == len(numbers) - 1:
        return ones[0], ""
    shown = ", ".join(f"{n}={t}" for n, t in zip(class_names, values, strict=True))
    return None, (
        f"expected one-hot class values (exactly one 1 and the rest 0 in columns "
        f"{','.join(class_names)}), got {shown}"
    )


def _parse_label_value(text: str, class_names: Sequence[str]) -> tuple[int | None, str]:
    """`label` column: a class name (case-insensitive) or an integer index."""
    text = text.strip()
    lowered = [c.lower() for c in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower()), ""
    try:
        index = int(text)
    except ValueError:
        return None, (
            f"label {text!r} is neither a class name ({','.join(class_names)}) nor an index"
        )
    if not 0 <= index < len(class_names):
        return None, f"label index {index} is outside [0, {len(class_names) - 1}]"
    return index, ""


def parse_label_rows(
    lines: Iterable[str],
    source: str,
    class_names: Sequence[str],
    *,
    ignore_columns: Sequence[str] = (),
) -> tuple[list[LabelRow], list[Problem]]:
    """Parses a label CSV in the ISIC one-hot layout or the `image,label` layout.

    One-hot: `image,MEL,NV,...` (columns in any order, each class exactly once). Label layout:
    `image,label` with a class name or index. Both may carry a `lesion_id` column; columns in
    `ignore_columns` are skipped. Header problems raise `DataError`; row problems (not one-hot,
    bad label, empty id, wrong field count, duplicate id) come back as `Problem`s. Of rows
    repeating an id, the first is kept and each later one is a `duplicate_id` problem.
    """
    reader = csv.reader(lines)
    header = _read_header(reader, source)
    _check_header_unique(header, source)
    image_col = _find_image_column(header, source)
    lesion_col = header.index(LESION_COLUMN) if LESION_COLUMN in header else None
    known = {header[image_col], LESION_COLUMN, *ignore_columns}
    label_col = header.index(LABEL_COLUMN) if LABEL_COLUMN in header else None
    expected_one_hot = f"{header[image_col]},{','.join(class_names)}"
    if label_col is not None:
        extra = [h for h in header if h not in known and h != LABEL_COLUMN]
        if extra:
            raise DataError(
                f"{source}, line 1: unexpected column(s) {extra} beside 'label'; expected "
                f"'{header[image_col]},label' (optionally with lesion_id)"
            )
        class_cols = []
    else:
        candidates = [h for h in header if h not in known]
        unknown = [h for h in candidates if h not in class_names]
        if unknown:
            raise DataError(
                f"{source}, line 1: unknown class column(s) {unknown}; expected the one-hot "
                f"layout '{expected_one_hot}' or '{header[image_col]},label'"
            )
        missing = [c for c in class_names if c not in candidates]
        if missing:
            raise DataError(
                f"{source}, line 1: missing class column(s) {missing}; expected the one-hot "
                f"layout '{expected_one_hot}' or '{header[image_col]},label'"
            )
        class_cols = [header.index(c) for c in class_names]
    # Columns read; a line break inside another (ignored) quoted column is legitimate CSV.
    used = [image_col, *class_cols, *(c for c in (label_col, lesion_col) if c is not None)]

    rows: list[LabelRow] = []
    problems: list[Problem] = []
    first_line: dict[str, tuple[int, str]] = {}  # id_key -> (line, id as written)
    for line, fields in _records(reader, source):
        if _is_blank(fields):
            continue
        read = fields if len(fields) != len(header) else [fields[i] for i in used]
        quote = _unclosed_quote(read, line, reader.line_num)
        if not quote:
            _warn_if_spanning(fields, source, line, reader.line_num)
        if quote or len(fields) != len(header):
            problems.append(
                Problem(
                    "malformed_row",
                    source,
                    line,
                    fields[0].strip() if fields else "",
                    quote
                    or f"expected {len(header)} fields ({','.join(header)}), got {len(fields)}",
                )
            )
            continue
        image_id = image_id_from_value(fields[image_col])
        if not image_id:
            problems.append(Problem("malformed_row", source, line, "", "empty image id"))
            continue
        if label_col is not None:
            label, reason = _parse_label_value(fields[label_col], class_names)
            kind = "bad_label"
        else:
            label, reason = _parse_one_hot([fields[i] for i in class_cols], class_names)
            kind = "not_one_hot"
        if label is None:
            problems.append(Problem(kind, source, line, image_id, f"{image_id}: {reason}"))
            continue
        key = id_key(image_id)
        if key in first_line:
            first, first_id = first_line[key]
            problems.append(_duplicate_row(source, line, image_id, first, first_id))
            continue
        first_line[key] = (line, image_id)
        lesion = fields[lesion_col].strip() if lesion_col is not None else ""
        rows.append(LabelRow(image_id, label, lesion, source, line))
    return rows, problems


def class_names_in_rows(
    lines: Iterable[str], source: str, *, ignore_columns: Sequence[str] = ()
) -> tuple[str, ...]:
    """The classes a label CSV names, for a build not given a class list.

    One-hot layout: the class columns in the header's order. `image,label` layout: the distinct
    label values, sorted (case-insensitively distinct; the first spelling in sorted order is
    kept). Integer labels (class indices) name no classes: the class list must then be given.
    """
    reader = csv.reader(lines)
    header = _read_header(reader, source)
    _check_header_unique(header, source)
    image_col = _find_image_column(header, source)
    known = {header[image_col], LESION_COLUMN, *ignore_columns}
    if LABEL_COLUMN not in header:
        columns = tuple(h for h in header if h not in known)
        if not columns:
            raise DataError(
                f"{source}, line 1: no class columns; expected '{header[image_col]},label' or "
                f"one-hot '{header[image_col]},CLASS1,CLASS2,...'"
            )
        return columns
    label_col = header.index(LABEL_COLUMN)
    values = {
        f[label_col].strip()
        for _, f in _records(reader, source)
        if len(f) > label_col and f[label_col].strip()
    }
    if not values:
        raise DataError(f"{source}: no labels in column 'label' (expected class names)")
    indices = sorted(v for v in values if v.lstrip("-").isdigit())
    if indices:
        raise DataError(
            f"{source}: labels such as {', '.join(indices[:5])} are class indices, which name "
            "no classes; give the class names in label order with --class_names=NAME0,NAME1,..."
        )
    names: dict[str, str] = {}
    for value in sorted(values):
        names.setdefault(value.lower(), value)
    return tuple(names.values())


def parse_label_csv(
    path: str | os.PathLike, class_names: Sequence[str], *, ignore_columns: Sequence[str] = ()
) -> tuple[list[LabelRow], list[Problem]]:
    """`parse_label_rows` on a file (UTF-8, a byte-order mark is allowed)."""
    return parse_label_rows(
        read_text(path), os.fspath(path), class_names, ignore_columns=ignore_columns
    )


def parse_lesion_rows(lines: Iterable[str], source: str) -> tuple[dict[str, str], list[Problem]]:
    """Reads `image_id -> lesion_id` from a CSV with an image column and a `lesion_id` column.

    Accepts HAM10000's `metadata.csv` (`lesion_id,image_id,...`) and ISIC's
    `ISIC2018_Task3_Training_LesionGroupings.csv` (`image,lesion_id,...`); other columns are
    ignored. A repeated image id is a `duplicate_id` problem (the first row is kept).
    """
    reader = csv.reader(lines)
    header = _read_header(reader, source)
    image_col = _find_image_column(header, source)
    if LESION_COLUMN not in header:
        raise DataError(
            f"{source}, line 1: no 'lesion_id' column; expected columns "
            f"'{header[image_col]},lesion_id', got {header}"
        )
    lesion_col = header.index(LESION_COLUMN)
    lesions: dict[str, str] = {}
    first_line: dict[str, tuple[int, str]] = {}  # id_key -> (line, id as written)
    problems: list[Problem] = []
    for line, fields in _records(reader, source):
        if _is_blank(fields):
            continue
        short = len(fields) <= max(image_col, lesion_col)
        whole = short or len(fields) != len(header)  # then any field may hold the quote
        read = fields if whole else [fields[image_col], fields[lesion_col]]
        quote = _unclosed_quote(read, line, reader.line_num)
        if not quote:
            _warn_if_spanning(fields, source, line, reader.line_num)
        if quote or short:
            problems.append(
                Problem(
                    "malformed_row",
                    source,
                    line,
                    "",
                    quote or f"expected {len(header)} fields, got {len(fields)}",
                )
            )
            continue
        image_id = image_id_from_value(fields[image_col])
        key = id_key(image_id)
        if key in first_line:
            first, first_id = first_line[key]
            problems.append(_duplicate_row(source, line, image_id, first, first_id))
            continue
        first_line[key] = (line, image_id)
        lesions[image_id] = fields[lesion_col].strip()
    return lesions, problems


def parse_lesion_csv(path: str | os.PathLike) -> tuple[dict[str, str], list[Problem]]:
    """`parse_lesion_rows` on a file."""
    return parse_lesion_rows(read_text(path), os.fspath(path))


def read_text(path: str | os.PathLike) -> io.StringIO:
    """A CSV file as a text stream; text that is not UTF-8 is refused naming the file and line."""
    with open(path, "rb") as f:
        return text_lines(f.read(), os.fspath(path))


def text_lines(data: bytes, source: str = "the CSV") -> io.StringIO:
    """CSV bytes (e.g. read from a zip) as a text stream, dropping a byte-order mark.

    Bytes that are not UTF-8 (a CSV saved as Latin-1 or Windows-1252) raise `DataError` with
    the line and column, instead of a decoding error that names neither.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        shown = data[e.start : e.start + 4]
        raise DataError(
            f"{source}, line {line}: not UTF-8 text (bytes {shown!r} at column {column}); save "
            "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in.csv > out.csv)"
        ) from None
    return io.StringIO(text, newline="")


def format_problems(problems: Sequence[Problem], limit: int = MAX_PROBLEMS_SHOWN) -> str:
    """Up to `limit` problems, one a line, and a count of the rest."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def raise_unless_skipping(problems: Sequence[Problem], skip_bad: bool, what: str) -> None:
    """Raises `DataError` listing `problems` unless `skip_bad` (then the caller drops them)."""
    if problems and not skip_bad:
        raise DataError(
            f"{len(problems)} bad input item(s) in {what}:\n{format_problems(problems)}\n"
            "Fix the data, or pass --skip_bad to leave these items out (they are counted in "
            "the build report)."
        )


def check_no_empty_class(
    labels: Sequence[int] | np.ndarray, class_names: Sequence[str], where: str
) -> np.ndarray:
    """Returns the class counts of `labels`; raises if a class has no example.

    Every class needs training examples: class-balanced sampling draws each class equally often
    and the loss uses log class frequencies.
    """
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))[: len(class_names)]
    empty = [name for name, n in zip(class_names, counts, strict=True) if n == 0]
    if empty:
        shown = ", ".join(f"{n}={c}" for n, c in zip(class_names, counts, strict=True))
        raise DataError(
            f"{where}: class(es) {empty} have 0 training images (counts: {shown}); every class "
            "needs at least one. Check the CSV, or change the class list / split fractions."
        )
    return counts.astype(np.int64)
