"""One training run per workdir: an exclusive `flock` on `<workdir>/.lock` while a run trains.

Two runs writing the same checkpoints would overwrite each other's steps without either noticing.
The lock belongs to the open file, so the kernel releases it when its holder exits for any reason
(a crash or SIGKILL leaves no stale lock to clean up); the file itself stays and names the last
holder. Only process 0 of a multi-process run takes it. Workdirs on object stores (`gs://...`)
have no `flock`; they are not locked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator

from spmix_jax.errors import UserError

LOCK_NAME = ".lock"


class WorkdirInUseError(UserError):
    """Another living process holds the workdir's lock."""


class WorkdirLock:
    """A held lock; `release()` (or leaving its `with` block) frees it."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            info = json.load(f)
        return f"process {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def acquire(workdir: str) -> WorkdirLock:
    """Takes the lock or raises `WorkdirInUseError` naming the holder (pid, host, start time)."""
    path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot create the lock file {path}: {e.strerror}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise WorkdirInUseError(
                f"workdir {workdir} is in use by {_holder(path)}; wait for that run to finish "
                "(or stop it), or use another --workdir."
            ) from None
        raise
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return WorkdirLock(path, fd)


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True) -> Iterator[WorkdirLock | None]:
    """`acquire` for the duration of a `with` block; a no-op when disabled or on object stores."""
    if not enabled or "://" in str(workdir):
        yield None
        return
    lock = acquire(workdir)
    try:
        yield lock
    finally:
        lock.release()
