"""Data worker processes end when the process that started them dies.

grain starts its prefetch workers with the `spawn` method and stops them when the iterator is
closed or collected, but a parent killed with SIGKILL (the out-of-memory killer, `kill -9`, a
scheduler's hard stop) runs no cleanup: the workers, each holding a copy of the pipeline, would
live on, and with them multiprocessing's resource tracker, whose pipe they keep open.

`exit_with_parent` (grain's `worker_init_fn`) starts a daemon thread in each worker that
watches the parent's pid and ends the worker within `POLL_S` once the parent is gone (the
worker is re-parented, so `os.getppid()` changes). It works the same on Linux and macOS. Linux's
`PR_SET_PDEATHSIG` is not used: it fires when the *thread* that started the child ends, and
grain starts its workers from a thread pool, so it could stop workers of a living parent. Once
the last worker is gone the resource tracker reads end-of-file on its pipe, frees the shared
memory the workers left, and exits too.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable

POLL_S = 0.5


def exit_with_parent(worker_index: int = 0, worker_count: int = 1, parent: int = 0) -> None:
    """Runs in each worker (grain's `worker_init_fn(index, count)`, with `parent` the pid of
    the process that started it, bound there): exits the worker when that process dies, also
    when it died before the worker got this far."""
    del worker_index, worker_count
    parent = parent or os.getppid()
    if os.getppid() != parent:
        os._exit(1)
    thread = threading.Thread(target=_watch, args=(parent,), name="exit-with-parent", daemon=True)
    thread.start()


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)  # no cleanup to run: the data this worker read has nobody to go to
        time.sleep(POLL_S)


def worker_init_fn() -> Callable[[int, int], None]:
    """grain's `worker_init_fn` for workers started by this process."""
    return functools.partial(exit_with_parent, parent=os.getpid())
