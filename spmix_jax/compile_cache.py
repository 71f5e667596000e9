"""JAX's persistent compilation cache: compile the step once per machine, not once per start.

A restarted, resumed or re-evaluated run with the same shapes loads the compiled executables
from the cache instead of compiling them again (the SPMix step takes over a minute to compile on
a CPU). `train.compile_cache` says where: `auto` (default) is `$SPMIX_COMPILE_CACHE` when set (else
JAX's own `$JAX_COMPILATION_CACHE_DIR`), else `compile_cache/` in the workdir, next to
`checkpoints/`; any other path is used as given
(a local folder or a `gs://` path); an empty string turns the cache off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
from absl import logging
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV_VAR = "SPMIX_COMPILE_CACHE"
AUTO = "auto"
FOLDER = "compile_cache"
_bound: str | None = None  # the folder this process last pointed the cache at


def shared_folder(environ: Mapping[str, str] = os.environ) -> str:
    """The cache `environ` names for every run ($SPMIX_COMPILE_CACHE, else the one the user
    already gave JAX itself), or '' when it names none."""
    return environ.get(ENV_VAR) or environ.get("JAX_COMPILATION_CACHE_DIR") or ""


def resolve(setting: str, workdir: str) -> str:
    """The cache folder `train.compile_cache` = `setting` names for `workdir` ('' = off)."""
    if setting != AUTO:
        return setting
    return shared_folder() or os.path.join(workdir, FOLDER)


def enable(setting: str, workdir: str) -> str:
    """Points JAX's persistent cache at the resolved folder (or turns it off); returns it.

    Every executable is cached, however quick to compile or small: a run's start is many
    small jits besides the step, and each would be compiled again otherwise.
    """
    path = resolve(setting, workdir)
    global _bound
    if path != _bound:
        jax_cache.reset_cache()  # the cache binds its folder once per process; rebind it
        _bound = path
    if not path:
        jax.config.update("jax_enable_compilation_cache", False)
        return ""
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("Compilation cache: %s", path)
    return path
