"""A fingerprint of the files a dataset was built from, to notice training on a stale build.

Recorded in the `spmix` metadata block at build time: every image, CSV and zip file under the
roots the builder read (relative path, size, modification time), a SHA-256 of each CSV's
contents, and the builder version and options. Paths are stored relative to the source folder,
so a folder moved elsewhere but otherwise unchanged still matches. Other files (e.g. a dataset
built into a sub-folder of the source) are not part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from typing import Any

from input_pipeline.builders import csv_layout

FORMAT = 1
_EXTENSIONS = (*csv_layout.IMAGE_EXTENSIONS, ".csv", ".zip")


def _listed(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in _EXTENSIONS


def _files(root: str) -> list[str]:
    if os.path.isfile(root):
        return [root]
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX" and not d.startswith("."))
        found.extend(os.path.join(dirpath, n) for n in sorted(filenames) if _listed(n))
    return found


def _stat(path: str) -> os.stat_result:
    """The file's status; for a broken or looping symbolic link (which the build cannot read,
    and leaves out unless the CSV lists it) that of the link itself, so it still counts."""
    try:
        return os.stat(path)
    except OSError:
        return os.lstat(path)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scan(base_dir: str, relative_roots: Sequence[str]) -> dict[str, Any]:
    entries: dict[str, tuple[int, int]] = {}
    csv_hashes: dict[str, str] = {}
    for rel_root in relative_roots:
        root = os.path.normpath(os.path.join(base_dir, rel_root))
        if not os.path.exists(root):
            continue
        for path in _files(root):
            rel = os.path.relpath(path, base_dir)
            if rel in entries:
                continue
            info = _stat(path)
            entries[rel] = (info.st_size, info.st_mtime_ns)
            if path.lower().endswith(".csv") and stat.S_ISREG(info.st_mode):
                csv_hashes[rel] = _sha256(path)
    listing = json.dumps(sorted(entries.items()), separators=(",", ":")).encode()
    return {
        "files": len(entries),
        "bytes": sum(size for size, _ in entries.values()),
        "files_sha256": hashlib.sha256(listing).hexdigest(),
        "csv_sha256": csv_hashes,
    }


def compute(
    base_dir: str, roots: Sequence[str], builder_version: str, params: dict[str, Any]
) -> dict[str, Any]:
    """The fingerprint of `roots` (files or folders, under `base_dir` or not), JSON-ready."""
    base_dir = os.path.abspath(base_dir)
    relative = sorted({os.path.relpath(os.path.abspath(r), base_dir) for r in roots if r})
    scan = _scan(base_dir, relative)
    options = json.dumps(params, sort_keys=True, default=str).encode()
    return {
        "format": FORMAT,
        "source_dir": base_dir,
        "roots": relative,
        **scan,
        "builder_version": str(builder_version),
        "options_sha256": hashlib.sha256(options).hexdigest(),
    }


def changes(stored: dict[str, Any], source_dir: str) -> str | None:
    """What differs between `stored` and the files under `source_dir` now, or None if nothing."""
    now = _scan(os.path.abspath(source_dir), stored["roots"])
    if now["files_sha256"] == stored["files_sha256"] and now["csv_sha256"] == stored["csv_sha256"]:
        return None
    parts = [
        f"{stored['files']} files ({stored['bytes']} bytes) when built, {now['files']} files "
        f"({now['bytes']} bytes) now"
    ]
    old_csv, new_csv = stored["csv_sha256"], now["csv_sha256"]
    edited = sorted(n for n in old_csv.keys() & new_csv.keys() if old_csv[n] != new_csv[n])
    if edited:
        parts.append(f"changed CSV(s): {', '.join(edited)}")
    if (
        now["files_sha256"] != stored["files_sha256"]
        and not edited
        and (now["files"] == stored["files"])
    ):
        parts.append("files were replaced or modified")
    return "; ".join(parts)
