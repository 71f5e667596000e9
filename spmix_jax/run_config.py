"""What a training run records about itself, and how later modes reuse it.

A run writes its resolved config to `<workdir>/config.json` and its command line to
`<workdir>/command.txt` when it starts, and stores both (with the class names and training class
counts) next to every checkpoint as the JSON item `run`. `eval`, `predict` and `visualize` on a
workdir then take the model, data, view, saliency and mix settings from that record, so the
command that evaluates a run need not repeat every override it was trained with; fields given
on the command line (`--config.model.variant=...`) still win.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from spmix_jax import result_files

CONFIG_FILE = "config.json"
COMMAND_FILE = "command.txt"
# Sections that describe the trained model and what it was trained on; eval modes reuse them.
RECORDED_SECTIONS = ("data", "model", "augment", "saliency", "mix")
# Single fields outside those sections that eval modes also reuse: the shot groups of the run.
RECORDED_FIELDS = ("eval.many_threshold", "eval.few_threshold")
# Fields whose value fixes the shapes of the saved parameters.
SHAPE_FIELDS = ("data.num_classes",)


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a config value (tuples become lists, ConfigDicts dicts)."""
    if isinstance(value, ml_collections.ConfigDict | ml_collections.FrozenConfigDict):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as plain JSON-serialisable nested dicts."""
    return _plain(config)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, quoted so that it can be pasted into a shell.

    `python -m spmix_jax.main ...` is recorded as such (sys.argv would name the module's file).
    """
    if argv is None:
        orig = list(getattr(sys, "orig_argv", []))
        argv = orig if "-m" in orig[1:3] else sys.argv
    argv = list(argv)
    return " ".join(shlex.quote(a) for a in argv)


def run_info(
    config: ml_collections.ConfigDict,
    class_names: Iterable[str],
    train_class_counts: Iterable[int],
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a checkpoint records about the run that wrote it."""
    return {
        "config": config_dict(config),
        "command": command_line(argv),
        "class_names": [str(n) for n in class_names],
        "train_class_counts": [int(c) for c in train_class_counts],
    }


def with_classes(
    config: ml_collections.ConfigDict, class_names: Iterable[str]
) -> ml_collections.ConfigDict:
    """`config` with `data.num_classes` and `data.class_names` those of the data: the built
    dataset owns its class list. Values set in the config were checked against it when the
    data was read (`input_pipeline.sources`), so here they are only filled in."""
    names = tuple(str(n) for n in class_names)
    new = ml_collections.ConfigDict(config.to_dict())
    new.data.num_classes = len(names)
    with new.data.ignore_type():
        new.data.class_names = names
    return new


def write_run_files(
    config: ml_collections.ConfigDict, workdir: str, argv: Sequence[str] | None = None
) -> None:
    """`config.json` (the resolved config) and `command.txt` (the command line) in `workdir`."""
    root = epath.Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    result_files.write_json(root / CONFIG_FILE, config_dict(config))
    result_files.write_text(root / COMMAND_FILE, command_line(argv) + "\n")


def read_config_file(workdir: str) -> dict[str, Any] | None:
    """The config recorded in `<workdir>/config.json`, or None when there is none."""
    path = epath.Path(workdir) / CONFIG_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def hparams(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """Every scalar field under its dotted name (TensorBoard hparams); sequences as text."""
    out: dict[str, bool | int | float | str] = {}
    for name, value in flatten(config_dict(config)).items():
        if isinstance(value, bool | int | float | str):
            out[name] = value
        elif isinstance(value, list):
            out[name] = ",".join(str(v) for v in value)
    return out


def _like(current: Any, recorded: Any) -> Any:
    """`recorded` converted to the type of the current field (JSON turns tuples into lists)."""
    if isinstance(current, tuple) and isinstance(recorded, list):
        return tuple(recorded)
    if isinstance(current, float) and isinstance(recorded, int) and not isinstance(recorded, bool):
        return float(recorded)
    return recorded


def apply_recorded(
    config: ml_collections.ConfigDict,
    recorded: Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ml_collections.ConfigDict, list[str]]:
    """`config` with the recorded `RECORDED_SECTIONS` and `RECORDED_FIELDS`, except `overrides`.

    `overrides` are the dotted fields given on the command line (absl's `--config.x.y=`), which
    win. Returns the new config and the dotted names whose value changed. Fields the recorded
    config lacks (added to the schema later) keep their current value.
    """
    overrides = dict(overrides or {})
    new = ml_collections.ConfigDict(config.to_dict())
    current = flatten(config_dict(config))
    changed = []
    for name, value in flatten(recorded).items():
        recorded_field = name.split(".")[0] in RECORDED_SECTIONS or name in RECORDED_FIELDS
        if not recorded_field or name in overrides:
            continue
        if name not in current:
            continue
        node = new
        *parents, leaf = name.split(".")
        for part in parents:
            node = node[part]
        old = node[leaf]
        value = _like(old, value)
        if _plain(old) == _plain(value):
            continue
        with node.ignore_type():
            node[leaf] = value
        changed.append(name)
    return new, changed


def differences(
    recorded: Mapping[str, Any],
    config: ml_collections.ConfigDict,
    prefixes: Sequence[str] = ("model.", *SHAPE_FIELDS),
) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, current value) for the fields that differ under `prefixes`."""
    current = flatten(config_dict(config))
    out = []
    for name, value in sorted(flatten(recorded).items()):
        selected = any(name.startswith(p) if p.endswith(".") else name == p for p in prefixes)
        if selected and name in current and _plain(current[name]) != _plain(value):
            out.append((name, value, current[name]))
    return out


def describe_differences(diffs: Sequence[tuple[str, Any, Any]]) -> str:
    """'this checkpoint was trained with model.variant=mu/8; you asked for nano/8' per field."""
    return "\n".join(
        f"this checkpoint was trained with {name}={show_value(old)}; you asked for "
        f"{show_value(new)}"
        for name, old, new in diffs
    )


def show_value(value: Any) -> str:
    """A config value as it is typed on the command line (tuples as `('a','b')`)."""
    value = _plain(value)
    if isinstance(value, list):
        return "(" + ",".join(repr(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)
