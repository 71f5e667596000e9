"""One build of a dataset at a time: an exclusive `flock` on a lock file beside the dataset.

Two builds of the same missing dataset (two commands, or a command and a trainer building it on
first use) would both write everything and the second would fail when it renames its result onto
the first's. The second now waits for the first and then reuses what it built. The lock belongs
to the open file, so a killed build leaves no stale lock; the holder's leftovers (TFDS's
`incomplete.*` folders) are removed by the next build, which holds the lock and so knows that no
other build of that dataset is running. Data dirs on object stores (`gs://...`) are not locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator

from absl import logging

from input_pipeline.builders.csv_layout import DataError

# TFDS writes a dataset into `<config_dir>/incomplete.<random>/` and renames it when complete.
INCOMPLETE_PREFIX = "incomplete."


def lock_path(target: str) -> str:
    """The lock file of the dataset at `target` (`.../<config>/<version>`): `.<version>.lock`."""
    parent, name = os.path.split(os.path.abspath(target))
    return os.path.join(parent, f".{name}.lock")


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"process {info['pid']} on host {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def hold(target: str) -> Iterator[None]:
    """Holds the build lock of `target` for a `with` block, waiting (with a message) while
    another process builds it; on entry, removes `incomplete.*` folders of killed builds."""
    if "://" in target:
        yield
        return
    path = lock_path(target)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"cannot create the build lock file {path}: {e.strerror}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            message = (
                f"waiting for {_holder(fd)}, which is building the dataset at {target} "
                f"(lock file {path})"
            )
            logging.info("%s", message)
            print(message, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        remove_incomplete(os.path.dirname(path))
        yield
    finally:
        os.close(fd)  # releases the lock


def remove_incomplete(config_dir: str) -> None:
    """Deletes the `incomplete.*` folders TFDS left in `config_dir` (builds that were killed)."""
    for name in sorted(os.listdir(config_dir)):
        folder = os.path.join(config_dir, name)
        if name.startswith(INCOMPLETE_PREFIX) and os.path.isdir(folder):
            logging.warning("Removing %s, left by a build that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)
