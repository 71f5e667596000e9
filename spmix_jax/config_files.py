"""Config files by path or by name: `--config=configs/demo.py:steps=9` or `--config=demo:steps=9`.

The configs ship with the package (the `configs` package), so the installed commands work from
any folder: a spec whose file does not exist is looked up by its bare name (`demo`, `demo.py`)
among the shipped configs. Loading a config runs its `get_config`; anything that goes wrong there
(a wrong path, an unknown or invalid config argument) is one `UserError` naming the spec.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Sequence

import ml_collections

from spmix_jax.errors import NotFoundError, UserError

CONFIG_FLAG = "--config"


def shipped_dir() -> pathlib.Path:
    """The folder of the configs installed with the package."""
    spec = importlib.util.find_spec("configs")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError("the configs package is not installed; reinstall spmix_jax")
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def shipped_names() -> list[str]:
    """Names of the shipped configs (`demo`, `ham10000`, ...), without the shared `common`."""
    return sorted(
        p.stem
        for p in shipped_dir().glob("*.py")
        if not p.stem.startswith("_") and p.stem != "common"
    )


def split_spec(spec: str) -> tuple[str, str]:
    """`path[:arg]` -> (path, arg); the argument follows the first colon after the file name."""
    path, sep, arg = spec.partition(":")
    return path, arg if sep else ""


def resolve(spec: str) -> str:
    """`spec` with its file as an existing path: as given, else the shipped config of that name
    (for a bare name or `configs/<name>.py`, so the README's commands work from any folder).

    Raises NotFoundError listing the shipped configs when neither exists.
    """
    path, arg = split_spec(spec)
    if os.path.isfile(path):
        return spec
    name = os.path.basename(path)
    name = name[:-3] if name.endswith(".py") else name
    shipped = shipped_dir() / f"{name}.py"
    # `demo`, `demo.py` and the repository's `configs/demo.py`; another folder is not searched.
    if name in shipped_names() and os.path.dirname(os.path.normpath(path)) in ("", "configs"):
        return str(shipped) + (f":{arg}" if arg else "")
    raise NotFoundError(
        f"config file {path!r} not found (from {os.getcwd()}); give a path to a config file "
        f"or the name of a shipped config: {', '.join(shipped_names())} (e.g. --config=demo)"
    )


def load(spec: str) -> ml_collections.ConfigDict:
    """The ConfigDict of `spec` (path or name, with its argument); errors as one UserError."""
    resolved = resolve(spec)
    path, arg = split_spec(resolved)
    module_spec = importlib.util.spec_from_file_location("_spmix_config", path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"config {spec!r}: {path} is not a Python file")
    try:
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    except UserError:
        raise
    except Exception as error:  # a config's own checks raise ValueError, TypeError, ...
        raise UserError(f"config {spec!r}: {error}") from error
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"config {spec!r}: get_config returned {type(config).__name__}")
    return config


def flag_value(argv: Sequence[str]) -> tuple[int, str] | None:
    """(index, value) of the `--config=...` (or `--config VALUE`) in `argv`, or None."""
    for i, item in enumerate(argv):
        if item.startswith(CONFIG_FLAG + "="):
            return i, item[len(CONFIG_FLAG) + 1 :]
        if item == CONFIG_FLAG and i + 1 < len(argv):
            return i + 1, argv[i + 1]
    return None


def resolve_in_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with its config spec resolved to a path and checked by loading it once.

    Raises UserError for a missing config or one whose `get_config` fails, before absl parses
    the flags (absl would show two chained tracebacks).
    """
    argv = list(argv)
    found = flag_value(argv)
    if found is None:
        return argv
    index, spec = found
    resolved = resolve(spec)
    load(spec)
    argv[index] = argv[index].replace(spec, resolved) if argv[index] != spec else resolved
    return argv
