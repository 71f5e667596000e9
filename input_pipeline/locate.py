"""Where a built dataset lives, and building it when it is missing.

`dataset_dir(config.data)` finds `<data_dir>/<name>/<builder_config>/<newest version>` (or a
plain TFDS directory for `data.name='tfds'`). A missing folder_csv / isic2018 dataset is built
first when `data.source_dir` is set; in a multi-process run only process 0 builds while the others
wait for it through jax's distributed runtime (`data.data_dir` must then be a folder every host
sees). A dataset whose source changed since its build is reported with the rebuild command, and
an old build a newer builder cannot read is refused with it.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from input_pipeline.builders import DEFAULT_CONFIGS, MANUAL_DIR_BUILDERS, METADATA_KEY
from input_pipeline.errors import NotFoundError, UserError

BUILT_NAMES = ("folder_csv", "isic2018", "isic2019", "pad_ufes20")
_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")


def _subdirs(path: epath.Path) -> list[epath.Path]:
    if not path.is_dir():
        return []
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _version_key(path: epath.Path) -> tuple[int, ...]:
    return tuple(int(x) for x in path.name.split("."))


def _newest_version(config_dir: epath.Path) -> epath.Path | None:
    versions = [
        p
        for p in _subdirs(config_dir)
        if _VERSION_DIR.match(p.name) and (p / "dataset_info.json").exists()
    ]
    return max(versions, key=_version_key) if versions else None


def describe_built(data_dir: str | os.PathLike, max_depth: int = 3) -> list[str]:
    """Relative paths of the built datasets under `data_dir` with their splits."""
    root = epath.Path(data_dir)
    found: list[str] = []

    def walk(path: epath.Path, depth: int) -> None:
        if (path / "dataset_info.json").exists():
            try:
                splits = ", ".join(tfds.builder_from_directory(os.fspath(path)).info.splits)
            except Exception:  # listing only; an unreadable directory is still worth naming
                splits = "unreadable"
            rel = os.path.relpath(os.fspath(path), os.fspath(root))
            found.append(f"{rel} (splits: {splits})")
            return
        if depth < max_depth:
            for sub in _subdirs(path):
                walk(sub, depth + 1)

    walk(root, 0)
    return found


def build_command(name: str, data_dir: str, builder_config: str, source_dir: str = "") -> str:
    """The command that builds the dataset a config asks for."""
    config = builder_config or DEFAULT_CONFIGS.get(name, "")
    if name in MANUAL_DIR_BUILDERS:
        src = f"--manual_dir={source_dir or f'DIR_WITH_{name.upper()}_DOWNLOADS'}"
    else:
        src = f"--source={source_dir or 'DIR_WITH_IMAGES_AND_labels.csv'}"
    return (
        f"python -m input_pipeline.build --builder={name} {src} --data_dir={data_dir} "
        f"--config={config}"
    )


def _missing_error(data_cfg: Any, looked_at: epath.Path, why: str) -> NotFoundError:
    existing = describe_built(data_cfg.data_dir) if epath.Path(data_cfg.data_dir).is_dir() else []
    listing = "\n".join(f"  {e}" for e in existing) or "  (nothing)"
    hint = ""
    if data_cfg.name in BUILT_NAMES:
        command = build_command(
            data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
        )
        hint = (
            f"\nBuild it with:\n  {command}\nor pass --config.data.source_dir=DIR (the raw "
            "folder) to build it automatically; configs/ham10000.py, isic2019.py and "
            "pad_ufes20.py also read that folder from the environment variables "
            "SPMIX_HAM10000_DIR, SPMIX_ISIC2019_DIR and SPMIX_PAD_UFES20_DIR."
        )
    return NotFoundError(
        f"No dataset for data.name={data_cfg.name!r}, builder_config="
        f"{data_cfg.builder_config!r} at {looked_at}: {why}.\n"
        f"Built datasets under {data_cfg.data_dir}:\n{listing}{hint}"
    )


def _refuse_outdated(data_cfg: Any, version: epath.Path) -> None:
    """Refuses a build older than its config's content (e.g. isic2018 `released` before it
    used the released code's split lists), with the command that rebuilds it."""
    if data_cfg.name != "isic2018":
        return
    from input_pipeline.builders import isic2018

    needed = isic2018.required_version(data_cfg.builder_config or DEFAULT_CONFIGS["isic2018"])
    if needed is None or _version_key(version) >= needed:
        return
    command = build_command(
        data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
    )
    raise UserError(
        f"{version} was built by an older isic2018 builder (version {version.name}); config "
        f"{data_cfg.builder_config!r} now needs version {'.'.join(map(str, needed))} or later "
        f"(its split changed). Rebuild it with:\n  {command} --overwrite"
    )


# The JSON files TFDS and the builders write beside the records.
_DATASET_JSON = ("dataset_info.json", "features.json", "metadata.json")


def damaged_error(data_cfg: Any, path: str, why: str) -> UserError:
    """The one message for a built dataset with an unreadable file: which, and the rebuild."""
    if data_cfg.name not in BUILT_NAMES:
        return UserError(f"{path}: {why}; the dataset is damaged. Prepare it again.")
    command = build_command(
        data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
    )
    return UserError(
        f"{path}: {why}; the built dataset is damaged. Rebuild it with (and the options it was "
        f"built with):\n  {command} --overwrite"
    )


def open_builder(data_cfg: Any, path: str) -> tfds.core.DatasetBuilder:
    """The (cached) TFDS builder of the dataset at `path`; one that cannot open is damaged."""
    try:
        return _builder(path)
    except Exception as e:  # TFDS raises many types for files it cannot interpret
        raise damaged_error(data_cfg, path, f"TFDS cannot open it ({type(e).__name__}: {e})") from e


@functools.cache
def _shard_problem(path: str, stamp: int, split: str) -> tuple[str, str] | None:
    """(record file of `split`, why it cannot be read whole: truncated, overwritten) or None.

    Opening a file reads its footer, and the record count must match the one TFDS recorded;
    a damaged file otherwise fails only when a data worker reaches a broken record.
    """
    del stamp  # part of the cache key only
    from array_record.python import array_record_module

    info = _builder(path).info.splits[split]
    for filepath, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        file = os.fspath(filepath)
        try:
            reader = array_record_module.ArrayRecordReader(file)
            try:
                count = reader.num_records()
            finally:
                reader.close()
        except Exception as e:  # array_record raises RuntimeError/ValueError for broken files
            reason = (str(e).splitlines() or [type(e).__name__])[0]
            return file, f"not a readable record file ({reason})"
        if count != expected:
            return file, f"holds {count} readable records, the dataset recorded {expected}"
    return None


def check_records(data_cfg: Any, path: str, split: str) -> None:
    """Refuses a split whose record files are truncated or damaged, naming the file."""
    problem = _shard_problem(path, _stamp(path), split)
    if problem is not None:
        raise damaged_error(data_cfg, *problem)


def _refuse_damaged(data_cfg: Any, path: str) -> None:
    """Refuses a dataset whose JSON files do not parse, naming the file."""
    for name in _DATASET_JSON:
        file = os.path.join(path, name)
        try:
            with open(file, "rb") as f:
                json.loads(f.read())
        except FileNotFoundError:
            continue  # a dataset not built by input_pipeline.build has no metadata.json
        except (OSError, ValueError) as e:
            raise damaged_error(data_cfg, file, f"not readable JSON ({e})") from None


def _recorded_block(path: str) -> dict[str, Any] | None:
    """The `spmix` block of the dataset's `metadata.json`, read as JSON without opening the
    dataset in TFDS (whose damage is reported where a split is opened); None without one."""
    try:
        recorded = json.loads((epath.Path(path) / "metadata.json").read_text())
    except FileNotFoundError:
        return None
    block = recorded.get(METADATA_KEY) if isinstance(recorded, dict) else None
    return block if isinstance(block, dict) else None


_stale_warned: dict[tuple[str, int, str], str] = {}


def _warn_if_stale(data_cfg: Any, path: str) -> None:
    """Warns when the dataset's source changed since the dataset was built from it: training
    would silently use the old images or labels. The same finding is reported once.

    The source is the folder the dataset recorded when built (another dataset's folder, e.g.
    the training folder of a run evaluated on a new one, says nothing about it); only when that
    folder is gone is `data.source_dir` taken as the source moved elsewhere."""
    meta = _recorded_block(path)
    stored = None if meta is None else meta.get("source_fingerprint")
    if not stored:  # built before fingerprints were recorded
        return
    source_dir = stored.get("source_dir") or ""
    if not os.path.isdir(source_dir):
        source_dir = data_cfg.source_dir
    if not source_dir or not os.path.isdir(source_dir):
        return
    open_builder(data_cfg, path)  # a damaged dataset is refused, naming the rebuild
    from input_pipeline.builders import fingerprint

    changed = fingerprint.changes(stored, source_dir)
    key = (path, _stamp(path), os.path.abspath(source_dir))
    if changed is None or _stale_warned.get(key) == changed:
        return
    _stale_warned[key] = changed
    command = build_command(data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, source_dir)
    message = (
        f"the dataset at {path} is older than its source {source_dir}, which changed since the "
        f"build ({changed}). Training uses the dataset as built. Rebuild it with (and the "
        f"options it was built with, see its metadata.json):\n  {command} --overwrite"
    )
    logging.warning("%s", message)
    print(f"warning: {message}", flush=True)


def dataset_dir(data_cfg: Any) -> str:
    """The version directory of the dataset `data_cfg` names, building it if allowed."""
    if not data_cfg.data_dir:
        raise UserError(
            f"config.data.data_dir is empty; data.name={data_cfg.name!r} reads a dataset built "
            "there (python -m input_pipeline.build ... --data_dir=DIR)"
        )
    root = epath.Path(data_cfg.data_dir)
    if data_cfg.name == "tfds":
        return os.fspath(_find_tfds_dir(data_cfg, root))
    config_dir = root / data_cfg.name / (data_cfg.builder_config or DEFAULT_CONFIGS[data_cfg.name])
    index, count = _processes()
    if count == 1:
        return _find_or_build(data_cfg, config_dir)
    return _find_or_build_coordinated(data_cfg, config_dir, index)


# How long the other processes of a multi-process run wait for process 0 to build a dataset.
BUILD_WAIT_S = 6 * 3600


def _processes() -> tuple[int, int]:
    import jax  # only here: reading datasets needs no accelerator runtime otherwise

    return jax.process_index(), jax.process_count()


def _coordination_client() -> Any:
    """The key-value store of jax's distributed runtime (multi-process runs), or None."""
    from jax._src import distributed

    return distributed.global_state.client


def _find_or_build_coordinated(data_cfg: Any, config_dir: epath.Path, index: int) -> str:
    """Several processes: process 0 finds or builds the dataset and tells the others, which
    wait for it instead of building the same folder at once (data_dir must be shared)."""
    client = _coordination_client()
    key = f"spmix_dataset_ready:{os.path.abspath(os.fspath(config_dir))}"
    if index == 0:
        try:
            path = _find_or_build(data_cfg, config_dir)
        except Exception as error:
            if client is not None:
                client.key_value_set(key, f"failed: {error}", allow_overwrite=True)
            raise
        if client is not None:
            client.key_value_set(key, "ok", allow_overwrite=True)
        return path
    version = _newest_version(config_dir)
    if version is not None or not data_cfg.source_dir or not os.path.isdir(data_cfg.source_dir):
        return _find_or_build(data_cfg, config_dir, build=False)  # found, or the missing error
    command = build_command(
        data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
    )
    if client is None:
        raise UserError(
            f"process {index}: the dataset at {config_dir} is missing and only process 0 may "
            f"build it, but this run has no distributed runtime to wait on. Build it before the "
            f"multi-process job:\n  {command}"
        )
    print(
        f"process {index}: waiting for process 0 to build the dataset at {config_dir}", flush=True
    )
    try:
        status = str(client.blocking_key_value_get(key, BUILD_WAIT_S * 1000))
    except Exception as error:  # the runtime raises its own error type on a timeout
        raise UserError(
            f"process {index}: process 0 did not finish building {config_dir} within "
            f"{BUILD_WAIT_S} s ({error}). Build it before the multi-process job:\n  {command}"
        ) from error
    if status != "ok":
        raise UserError(
            f"process {index}: process 0 could not build the dataset at {config_dir} "
            f"({status.removeprefix('failed: ')}). Fix that, or build it before the "
            f"multi-process job:\n  {command}"
        )
    return _find_or_build(data_cfg, config_dir, build=False)


def _find_or_build(data_cfg: Any, config_dir: epath.Path, build: bool = True) -> str:
    """The newest version in `config_dir`; else builds it from `data.source_dir` (`build`)."""
    version = _newest_version(config_dir)
    if version is not None:
        _refuse_damaged(data_cfg, os.fspath(version))
        _refuse_outdated(data_cfg, version)
        _warn_if_stale(data_cfg, os.fspath(version))
        return os.fspath(version)
    if not build:
        raise _missing_error(
            data_cfg,
            config_dir,
            "not built yet; in a multi-process run process 0 builds it, and data.data_dir must "
            "be a folder every process sees",
        )
    if not data_cfg.source_dir:
        raise _missing_error(data_cfg, config_dir, "not built yet and data.source_dir is empty")
    if not os.path.isdir(data_cfg.source_dir):
        raise _missing_error(
            data_cfg,
            config_dir,
            f"not built yet, and data.source_dir={data_cfg.source_dir} (to build it from) is "
            "not a folder",
        )
    from input_pipeline import build as build_lib  # the writer side; only when building

    logging.info(
        "Dataset %s not found; building it from %s: %s",
        config_dir,
        data_cfg.source_dir,
        build_command(
            data_cfg.name, data_cfg.data_dir, data_cfg.builder_config, data_cfg.source_dir
        ),
    )
    source_key = "manual_dir" if data_cfg.name in MANUAL_DIR_BUILDERS else "source"
    return build_lib.build_dataset(
        data_cfg.name,
        data_cfg.data_dir,
        config=data_cfg.builder_config,
        **{source_key: data_cfg.source_dir},
    )


def _find_tfds_dir(data_cfg: Any, root: epath.Path) -> epath.Path:
    if (root / "dataset_info.json").exists():
        return root
    path = root / data_cfg.builder_config if data_cfg.builder_config else root
    for _ in range(3):  # <dataset>/<config>/<version>
        if (path / "dataset_info.json").exists():
            return path
        version = _newest_version(path)
        if version is not None:
            return version
        subdirs = _subdirs(path)
        if len(subdirs) != 1:
            break
        path = subdirs[0]
    raise _missing_error(
        data_cfg,
        root,
        "expected a TFDS dataset directory (holding dataset_info.json) or a parent with exactly "
        "one dataset in it",
    )


# ------------------------------------------------------------------------------------------
# Opening a split
# ------------------------------------------------------------------------------------------


def _stamp(path: str) -> int:
    """Changes when a dataset is rebuilt in place, so caches never serve a stale one."""
    try:
        return os.stat(os.path.join(path, "dataset_info.json")).st_mtime_ns
    except OSError:  # remote file systems: the path alone is the key
        return 0


@functools.cache
def _cached_builder(path: str, stamp: int) -> tfds.core.DatasetBuilder:
    del stamp  # part of the cache key only
    return tfds.builder_from_directory(path)


def _builder(path: str) -> tfds.core.DatasetBuilder:
    return _cached_builder(path, _stamp(path))


def build_metadata(path: str) -> dict[str, Any] | None:
    """The `spmix` block of a dataset built by this package, or None for other datasets."""
    metadata = _builder(path).info.metadata
    if metadata is None:
        return None
    return metadata.get(METADATA_KEY)
