"""Image files of a build: finding them (folders, zip archives), reading, checking, preparing.

Every image is decoded once before anything is written (in threads; PIL releases the GIL), so a
corrupt or truncated file is reported with the CSV line that names it instead of failing the write
halfway. `prepare_image` decides what bytes are stored: the original ones whenever they already
decode to uint8 RGB, so an unchanged dataset keeps its exact pixels.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import functools
import io
import os
import stat
import threading
import time
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence

from absl import logging
from PIL import Image

from input_pipeline import image_modes
from input_pipeline.builders import csv_layout
from input_pipeline.builders.csv_layout import DataError, Problem

JPEG_QUALITY = 95


def default_num_threads() -> int:
    """Threads for decoding and encoding; PIL releases the GIL while it does either."""
    return max(1, min(16, os.cpu_count() or 1))


# ------------------------------------------------------------------------------------------
# Image stores
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageRef:
    """Where an image's bytes live: a file, or a member of a zip archive at `path`."""

    path: str
    member: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path


_thread_state = threading.local()


def _open_zip(path: str) -> zipfile.ZipFile:
    """One open handle per archive and thread (ZipFile reads are not safe to interleave)."""
    zips = getattr(_thread_state, "zips", None)
    if zips is None:
        zips = _thread_state.zips = {}
    if path not in zips:
        zips[path] = zipfile.ZipFile(path)
    return zips[path]


# Errors of a source read that may pass (network file systems, flaky disks), and the pauses
# before each retry; anything else, or the same error once more, is final.
_TRANSIENT_ERRNOS = (errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ESTALE, errno.EINTR)
RETRY_DELAYS_S = (0.2, 1.0, 5.0)


# Largest image file read (`--max_image_mb`); dermoscopy images are a few MB, so a bigger file
# is a mistake (a disk image, a video, a link to /dev/zero) that would otherwise fill memory.
DEFAULT_MAX_IMAGE_MB = 64


class ImageFileError(OSError):
    """An image path that is not a regular file, or one above the size limit; not retried."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _file_kind(mode: int) -> str:
    kinds = {
        stat.S_ISDIR: "a folder",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def _too_large(ref: ImageRef, size: int, limit: int) -> ImageFileError:
    return ImageFileError(
        "image_too_large",
        f"{ref} has {size} bytes, more than the limit of {limit} bytes; expected an image file "
        "(raise the limit with --max_image_mb if it really is one)",
    )


def _read_regular_file(ref: ImageRef, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Opened without blocking, so a
    named pipe cannot hang the build, and checked before reading, so a link to a device (e.g.
    /dev/zero) is refused instead of read until memory runs out."""
    fd = os.open(ref.path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageFileError(
                "unreadable_image",
                f"{ref} is {_file_kind(info.st_mode)}, not a regular file; expected an image file",
            )
        if info.st_size > limit:
            raise _too_large(ref, info.st_size, limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
        if len(data) > limit:  # the file grew since fstat
            raise _too_large(ref, len(data), limit)
        return data
    finally:
        os.close(fd)


def read_image_bytes(ref: ImageRef, limit: int = DEFAULT_MAX_IMAGE_MB << 20) -> bytes:
    """The stored bytes of `ref` (at most `limit`), unchanged; a transient I/O error is retried
    with a message."""
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        try:
            if ref.member:
                archive = _open_zip(ref.path)
                size = archive.getinfo(ref.member).file_size
                if size > limit:
                    raise _too_large(ref, size, limit)
                return archive.read(ref.member)
            return _read_regular_file(ref, limit)
        except OSError as e:
            if e.errno not in _TRANSIENT_ERRNOS or attempt == len(RETRY_DELAYS_S):
                raise
            delay = RETRY_DELAYS_S[attempt]
            logging.warning(
                "Reading %s failed (%s); retry %d of %d in %.1f s",
                ref,
                e,
                attempt + 1,
                len(RETRY_DELAYS_S),
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def _is_image_name(name: str) -> bool:
    parts = name.replace("\\", "/").split("/")
    if any(p == "__MACOSX" or p.startswith(".") for p in parts):
        return False  # macOS archive metadata and hidden files are not images
    return os.path.splitext(parts[-1])[1].lower() in csv_layout.IMAGE_EXTENSIONS


@dataclasses.dataclass
class ImageIndex:
    """Image id (file stem) -> location, for one folder tree or zip archive."""

    root: str
    refs: dict[str, ImageRef]
    problems: list[Problem]
    duplicates: set[str]  # ids found more than once; reported in `problems`, left out of `refs`


def index_images(root: str | os.PathLike) -> ImageIndex:
    """Indexes every image file under a folder (recursively) or inside a `.zip` archive.

    Ids are file stems (`ISIC_0024306.jpg` -> `ISIC_0024306`) in Unicode NFC, whatever form the
    file system stores. An id found twice (two extensions, two sub-folders, two normalisation
    forms, or two spellings that differ only in letter case) is ambiguous: it becomes a
    `duplicate_id` problem.
    """
    root = os.fspath(root)
    found: dict[str, list[ImageRef]] = collections.defaultdict(list)
    if os.path.isfile(root) and zipfile.is_zipfile(root):
        with zipfile.ZipFile(root) as zf:
            for info in zf.infolist():
                if not info.is_dir() and _is_image_name(info.filename):
                    stem = os.path.splitext(info.filename.rsplit("/", 1)[-1])[0]
                    found[unicodedata.normalize("NFC", stem)].append(ImageRef(root, info.filename))
    elif os.path.isdir(root):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith("."))
            for name in sorted(filenames):
                if _is_image_name(name):
                    stem = unicodedata.normalize("NFC", os.path.splitext(name)[0])
                    found[stem].append(ImageRef(os.path.join(dirpath, name)))
    else:
        raise DataError(f"{root}: not a folder or zip archive of images")
    refs: dict[str, ImageRef] = {}
    problems: list[Problem] = []
    duplicates: set[str] = set()
    by_key: dict[str, list[str]] = collections.defaultdict(list)
    for image_id in sorted(found):
        by_key[csv_layout.id_key(image_id)].append(image_id)
    for ids in by_key.values():
        if len(ids) > 1:  # one file on a case-insensitive file system: which is meant?
            duplicates.update(ids)
            shown = ", ".join(str(r) for i in ids for r in found[i])
            problems.append(
                Problem(
                    "duplicate_id",
                    str(found[ids[1]][0]),
                    0,
                    ids[1],
                    f"image ids {' and '.join(ids)} differ only in case ({shown}); expected "
                    "ids that differ when case is ignored (rename one file)",
                )
            )
    for image_id in sorted(found):
        locations = found[image_id]
        if image_id in duplicates:
            continue
        if len(locations) == 1:
            refs[image_id] = locations[0]
        else:
            duplicates.add(image_id)
            problems.append(_duplicate_files(image_id, locations))
    return ImageIndex(root, refs, problems, duplicates)


# ------------------------------------------------------------------------------------------
# Items: one future example
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Item:
    """An example to write: label -1 means no ground truth; `file`/`line` say where it came from."""

    image_id: str
    label: int
    lesion_id: str
    ref: ImageRef
    file: str = ""
    line: int = 0

    @property
    def origin(self) -> str:
        if self.line:
            return f"{self.file}, line {self.line}"
        return self.file or str(self.ref)


def match_rows(
    rows: Sequence[csv_layout.LabelRow],
    index: ImageIndex,
    lesions: Mapping[str, str] | None = None,
) -> tuple[list[Item], list[Problem]]:
    """Pairs each labelled row with its image file; a row without a file is `missing_image`."""
    lesions = lesions or {}
    items: list[Item] = []
    problems: list[Problem] = []
    extensions = "/".join(csv_layout.IMAGE_EXTENSIONS)
    for row in rows:
        if row.image_id in index.duplicates:
            continue  # already reported by the index
        ref = index.refs.get(row.image_id)
        if ref is None:
            problems.append(
                Problem(
                    "missing_image",
                    row.file,
                    row.line,
                    row.image_id,
                    f"no image file for {row.image_id}; expected {row.image_id}"
                    f"{{{extensions}}} under {index.root}",
                )
            )
            continue
        lesion = row.lesion_id or lesions.get(row.image_id, "")
        items.append(Item(row.image_id, row.label, lesion, ref, row.file, row.line))
    return items, problems


# ------------------------------------------------------------------------------------------
# Images: check and prepare
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mode: str
    format: str


def inspect_image(data: bytes) -> ImageInfo:
    """Decodes `data` completely; raises ValueError if it is not a whole, readable image.

    A full decode (not just the header) is what catches truncated JPEGs.
    """
    if not data:
        raise ValueError("the file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode = im.format or "", im.mode
            im.load()
            if mode != "RGB":
                image_modes.to_rgb(im)  # refuses modes without an 8-bit reading
            width, height = image_modes.upright(im).size  # as stored: EXIF orientation applied
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        raise ValueError(f"{type(e).__name__}: {e}") from None
    if width < 1 or height < 1:
        raise ValueError(f"image has size {width}x{height}")
    return ImageInfo(width, height, mode, fmt)


def short_side_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) scaled so the shorter side is `short_side`, rounding half up."""
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, int(height * scale + 0.5))
    return max(1, int(width * scale + 0.5)), short_side


def _is_8bit_png(data: bytes) -> bool:
    # IHDR is the first chunk: 8-byte signature, 4 length, 4 type, 4 width, 4 height, bit depth.
    return len(data) > 24 and data[24] == 8


def prepare_image(data: bytes, short_side: int = 0) -> tuple[bytes, bool]:
    """The bytes to store for an image and whether they differ from `data`.

    `short_side == 0`: RGB JPEGs and 8-bit RGB PNGs are kept byte for byte unless their EXIF
    orientation says they are turned (then they are stored upright); other modes or
    formats are converted to RGB (JPEG stays JPEG at quality 95, anything else becomes PNG) so
    every stored image decodes to uint8 (H, W, 3). `short_side > 0`: images whose shorter side
    exceeds it are downscaled (bicubic, antialiased) to that short side and stored as JPEG
    quality 95; smaller images are not upscaled.
    """
    with Image.open(io.BytesIO(data)) as im:
        fmt, mode = im.format, im.mode
        turn = image_modes.needs_turning(im)  # an EXIF orientation tag 2-8: stored upright
        width, height = image_modes.upright(im).size if turn else im.size
        keep = mode == "RGB" and (fmt == "JPEG" or (fmt == "PNG" and _is_8bit_png(data)))
        resize = short_side > 0 and min(width, height) > short_side
        if keep and not resize and not turn:
            return data, False
        rgb = image_modes.to_rgb(image_modes.upright(im))  # 16-bit, float samples scaled
    if resize:
        size = short_side_size(width, height, short_side)
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if resize or fmt == "JPEG":
        rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        rgb.save(buffer, format="PNG")
    return buffer.getvalue(), True


def is_turned(data: bytes) -> bool:
    """True when the image `data` carries an EXIF orientation that `prepare_image` applies."""
    with Image.open(io.BytesIO(data)) as im:
        return image_modes.needs_turning(im)


def describe_storage(short_side: int) -> str:
    """How `prepare_image` stores images for `short_side`, for dataset descriptions."""
    return "original bytes" if short_side == 0 else f"short side {short_side}, JPEG q{JPEG_QUALITY}"


def _check_item(item: Item, limit: int) -> Problem | None:
    try:
        data = read_image_bytes(item.ref, limit)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        return Problem(
            e.kind if isinstance(e, ImageFileError) else "unreadable_image",
            item.file or str(item.ref),
            item.line,
            item.image_id,
            f"image {item.ref} for {item.image_id} cannot be read: {e}",
        )
    try:
        inspect_image(data)
    except ValueError as e:
        return Problem(
            "corrupt_image",
            item.file or str(item.ref),
            item.line,
            item.image_id,
            f"image {item.ref} for {item.image_id} cannot be decoded ({e}); expected a "
            "complete JPEG or PNG file",
        )
    return None


def _progress(iterable, total: int, desc: str):
    """A tqdm bar on terminals; silent in logs and tests."""
    try:
        from tqdm import auto as tqdm_auto
    except ImportError:  # pragma: no cover - tqdm comes with tensorflow-datasets
        return iterable
    return tqdm_auto.tqdm(iterable, total=total, desc=desc, unit=" img", disable=None)


def _duplicate_files(image_id: str, locations: Sequence[object]) -> Problem:
    """The problem of an image id found in several files (folders, zips or both)."""
    shown = ", ".join(str(r) for r in locations)
    return Problem(
        "duplicate_id",
        str(locations[1]),
        0,
        image_id,
        f"image id {image_id} has {len(locations)} files ({shown}); expected one file per id",
    )


def check_images(
    items: Sequence[Item],
    desc: str = "Checking images",
    num_threads: int = 0,
    max_bytes: int = DEFAULT_MAX_IMAGE_MB << 20,
) -> tuple[list[Item], list[Problem]]:
    """Decodes every item's image; returns the readable items and a problem per bad one
    (files that are not regular files or exceed `max_bytes` included)."""
    good: list[Item] = []
    problems: list[Problem] = []
    workers = num_threads or default_num_threads()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(functools.partial(_check_item, limit=max_bytes), items)
        for item, problem in _progress(zip(items, results, strict=True), len(items), desc):
            if problem is None:
                good.append(item)
            else:
                problems.append(problem)
    return good, problems


# ------------------------------------------------------------------------------------------
# Official downloads: inputs shipped as a folder or a zip, possibly in several parts
# ------------------------------------------------------------------------------------------
def find_folder_or_zip(parent: str, names: Sequence[str]) -> str | None:
    """`<parent>/<name>` as an extracted folder or as `<name>.zip`, for the first name present."""
    for name in names:
        folder = os.path.join(parent, name)
        if os.path.isdir(folder):
            return folder
        archive = folder + ".zip"
        if os.path.isfile(archive):
            return archive
    return None


def merge_indexes(indexes: Sequence[ImageIndex]) -> ImageIndex:
    """One index of several stores (a download in parts); an id in two parts is a
    `duplicate_id` problem and left out, as within one store."""
    refs: dict[str, list[ImageRef]] = collections.defaultdict(list)
    problems: list[Problem] = []
    duplicates: set[str] = set()
    for index in indexes:
        problems += index.problems
        duplicates |= index.duplicates
        for image_id, ref in index.refs.items():
            refs[image_id].append(ref)
    merged: dict[str, ImageRef] = {}
    for image_id in sorted(refs):
        locations = refs[image_id]
        if len(locations) == 1 and image_id not in duplicates:
            merged[image_id] = locations[0]
        elif image_id not in duplicates:
            duplicates.add(image_id)
            problems.append(_duplicate_files(image_id, locations))
    return ImageIndex(", ".join(i.root for i in indexes), merged, problems, duplicates)


def unlabelled_images(index: ImageIndex, listed: set[str], source: str) -> list[Problem]:
    """A `no_label_row` problem for every image of `index` that the label CSV `source` does
    not list: an official download labels every image it ships."""
    return [
        Problem(
            "no_label_row",
            str(index.refs[image_id]),
            0,
            image_id,
            f"image {image_id} has no row in {source}; expected every image of {index.root} to "
            "have ground truth",
        )
        for image_id in sorted(set(index.refs) - listed)
    ]
