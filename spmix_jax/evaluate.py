"""Evaluation and prediction from any checkpoint, on whatever devices exist.

`evaluate_split` is shared by the training loop (periodic validation) and the `eval` / `predict`
modes of the entry point, which restore a checkpoint (latest, best or a step) first. Restoring
reads only the query encoder's parameters and batch statistics, and evaluating needs only the
evaluated split (a dataset built whole as `test` works): the training class counts that define
the many / medium / few groups come from the dataset when it has a training split, else from
the checkpoint's record of its run, else the groups are reported as n/a.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from input_pipeline import locate, pipeline, sources
from input_pipeline.builders import DEFAULT_CONFIGS
from input_pipeline.data_split import DataSplit
from spmix_jax import (
    checkpointing,
    figures,
    metrics,
    optimizer,
    result_files,
    run_config,
    sharding,
    summaries,
)
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.config_checks import check_config
from spmix_jax.errors import NotFoundError, UserError
from spmix_jax.models import make_model


def _to_host(x: jax.Array) -> np.ndarray:
    """Gathers a batch-sharded global array to every host as numpy."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def predict_split(
    config: ml_collections.ConfigDict,
    variables: Any,
    split: DataSplit,
    mesh: jax.sharding.Mesh,
    eval_fn: Any = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, labels and source indices of every example of `split` (each exactly once).

    `variables` are the query encoder's {"params", "batch_stats"}; `eval_fn` the jitted
    `step.eval_logits` when the caller has one already.
    """
    if eval_fn is None:
        model = make_model(config)
        eval_fn = jax.jit(functools.partial(step_lib.eval_logits, config=config, model=model))
    it = pipeline.make_eval_iterator(
        split,
        global_batch_size=config.input.eval_batch_size,
        image_size=config.data.image_size,
    )
    all_logits, all_labels, all_index = [], [], []
    for host_batch in it:
        batch = sharding.global_batch(host_batch, mesh)
        logits = _to_host(eval_fn(variables, batch))
        mask = _to_host(batch["mask"]).astype(bool)
        all_logits.append(logits[mask])
        all_labels.append(_to_host(batch["label"])[mask])
        all_index.append(_to_host(batch["index"])[mask])
    return np.concatenate(all_logits), np.concatenate(all_labels), np.concatenate(all_index)


def evaluate_split(
    config: ml_collections.ConfigDict,
    variables: Any,
    split: DataSplit,
    mesh: jax.sharding.Mesh,
    eval_fn: Any = None,
    train_class_counts: Any = "split",
) -> dict[str, Any]:
    """All metrics of docs/method.md section 10 for the classifier on one split.

    `train_class_counts` define the many / medium / few groups: by default those of `split`;
    None reports the groups as n/a.
    """
    logits, labels, _ = predict_split(config, variables, split, mesh, eval_fn)
    counts = split.class_counts if isinstance(train_class_counts, str) else train_class_counts
    result = metrics.classification_metrics(
        logits,
        labels,
        tuple(split.class_names),
        counts,
        many_threshold=config.eval.many_threshold,
        few_threshold=config.eval.few_threshold,
        from_logits=True,
    )
    result["loss"] = metrics.cross_entropy(logits, labels)  # plain CE: no prior, no mixing
    return result


def restore_variables(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[dict[str, Any], int]:
    """The query encoder's {"params", "batch_stats"} of the configured checkpoint, on `mesh`.

    Restores into the sharded layout of this process's devices, whatever the count it was saved
    with, and reads nothing else (no optimizer state, no key encoder, no queue). A config whose
    model does not fit the checkpoint raises a UserError naming the fields that differ.
    """
    manager, step = checkpointing.resolve_step(workdir, config.eval.checkpoint)
    model = make_model(config)
    abstract = state_lib.create(config, model, optimizer.make_optimizer(config, 1), mesh)
    target = {"params": abstract.params, "batch_stats": abstract.batch_stats}
    # Read first, compare shapes second (a damaged checkpoint is not a config mismatch). For
    # `latest` / `best` a damaged newest step falls back to the next older one of its folder;
    # an asked-for step number is that step or an error.
    steps = [step]
    if not str(config.eval.checkpoint).isdigit():
        steps += sorted((s for s in manager.all_steps() if s < step), reverse=True)
    found, restored, _ = checkpointing.restore_first_intact(
        manager,
        steps,
        lambda s: checkpointing.restore_partial(manager, s, target),
        lambda s: check_checkpoint_fits(config, manager, s, workdir, target),
    )
    return restored, found


def check_checkpoint_fits(
    config: ml_collections.ConfigDict,
    manager: Any,
    step: int,
    workdir: str,
    target: Any,
    hint: str = "",
) -> None:
    """Raises a UserError when the arrays of `target` (shapes) do not fit those stored at `step`.

    Checked from the checkpoint's metadata before any restore starts, so the user reads which
    config fields differ from the run's record ("this checkpoint was trained with
    model.variant=X; you asked for Y") instead of a tree diff. `hint` adds a way out.
    """
    problems = checkpointing.shape_mismatches(manager, step, target)
    if not problems:
        return
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    shown = "; ".join(problems[:3]) + more
    recorded = _recorded_config(manager, step, workdir)
    where = f"The checkpoint at step {step} in {workdir}"
    diffs = [] if recorded is None else run_config.differences(recorded, config)
    if diffs:
        fix = " ".join(f"--config.{name}={run_config.show_value(old)}" for name, old, _ in diffs)
        raise UserError(
            f"{where} does not fit the config:\n{run_config.describe_differences(diffs)}\n"
            f"Drop those overrides, or pass {fix}{hint}."
        )
    raise UserError(
        f"{where} does not fit the config (model.variant={config.model.variant}, "
        f"model.image_size={config.model.image_size}, data.num_classes="
        f"{config.data.num_classes}): {shown}.\nPass the config it was trained with{hint}."
    )


def _recorded_run(manager: Any, step: int) -> dict[str, Any] | None:
    try:
        return checkpointing.read_run(manager, step)
    except (OSError, ValueError) as error:  # unreadable record: treat the checkpoint as bare
        logging.warning("Could not read the run record of step %d: %s", step, error)
        return None


def _recorded_config(manager: Any, step: int, workdir: str) -> dict[str, Any] | None:
    """The config recorded with the checkpoint, else the workdir's config.json, else None."""
    run = _recorded_run(manager, step)
    if run is not None and "config" in run:
        return run["config"]
    return run_config.read_config_file(workdir)


def with_recorded_config(
    config: ml_collections.ConfigDict, workdir: str, overrides: dict[str, Any] | None = None
) -> ml_collections.ConfigDict:
    """`config` with the model / data / view settings the run in `workdir` recorded.

    `overrides` (the `--config.*` flags given) win over the record. Without a checkpoint the
    workdir's config.json is used; without either, `config` is returned as it is. A missing
    dataset is built only from a `data.source_dir` given in `overrides`: neither the training
    folder the run recorded nor a config's default may stand in for a mistyped `data_dir`.
    """
    overrides = dict(overrides or {})
    if "data.source_dir" not in overrides:
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.source_dir = ""
        overrides["data.source_dir"] = ""
    try:
        manager, step = checkpointing.resolve_step(workdir, config.eval.checkpoint)
        recorded = _recorded_config(manager, step, workdir)
    except NotFoundError:
        recorded = run_config.read_config_file(workdir)
    if recorded is None:
        return config
    new, changed = run_config.apply_recorded(config, recorded, overrides)
    if changed and jax.process_index() == 0:
        shown = ", ".join(changed[:12]) + (
            f" and {len(changed) - 12} more" if len(changed) > 12 else ""
        )
        print(
            f"Using the settings the run in {workdir} was trained with for {shown} "
            "(override any with --config.<field>=...).",
            flush=True,
        )
    return new


def _with_model_classes(
    config: ml_collections.ConfigDict, workdir: str, split_name: str
) -> ml_collections.ConfigDict:
    """`config` with the model's classes when `data.num_classes` is unset: those its run
    recorded, else those of the split evaluated (the dataset owns its class list)."""
    if config.data.num_classes:
        return config
    try:
        run = _recorded_run(*checkpointing.resolve_step(workdir, config.eval.checkpoint))
    except NotFoundError:
        run = None
    names = (run or {}).get("class_names")
    if not names:
        names = sources.get_split(config.data, split_name, require_train=False).class_names
    return run_config.with_classes(config, names)


def restore_for_figures(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
    """(variables, model) of the configured checkpoint, for figures that need a trained model."""
    config = _with_model_classes(config, workdir, config.data.eval_split)
    variables, _ = restore_variables(config, workdir, sharding.make_mesh())
    return variables, make_model(config)


def dataset_identity(data_cfg: Any) -> dict[str, str] | None:
    """Where the built dataset `data_cfg` reads lies, and a fingerprint of its content (its
    recorded source fingerprint, class names and split labels); None for synthetic data.

    Two builds that share a builder config name (two sources built into two `data_dir`s, or one
    `data_dir` rebuilt from another source) differ here, so their results are named apart.
    """
    if data_cfg.name == "synthetic":
        return None
    path = locate.dataset_dir(data_cfg)  # found (the split was read already), never built here
    meta = locate.build_metadata(path)
    if meta is not None:
        basis = json.dumps(
            {k: meta.get(k) for k in ("source_fingerprint", "class_names", "splits")},
            sort_keys=True,
            default=str,
        )
    else:  # a dataset built elsewhere: its TFDS description (splits, sizes, checksums)
        basis = (epath.Path(path) / "dataset_info.json").read_text()
    location = path if "://" in path else os.path.abspath(path)
    return {"location": location, "fingerprint": hashlib.sha256(basis.encode()).hexdigest()[:16]}


def dataset_label(data_cfg: Any, identity: dict[str, str] | None = None) -> str:
    """A short file-name-safe name of the dataset `data_cfg` reads (e.g. `folder_csv-default`,
    with `-<8 hex digits>` of its `identity` (location and fingerprint) for a built one)."""
    if data_cfg.name == "synthetic":
        label = f"synthetic-s{data_cfg.synthetic.seed}"
    elif data_cfg.name == "tfds":
        label = "tfds-" + "-".join(str(data_cfg.data_dir).rstrip("/").split("/")[-2:])
    else:
        config_name = data_cfg.builder_config or DEFAULT_CONFIGS.get(data_cfg.name, "")
        label = f"{data_cfg.name}-{config_name}"
    if identity is not None:
        key = f"{identity['location']}\n{identity['fingerprint']}".encode()
        label += "-" + hashlib.sha256(key).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "dataset"


def output_name(
    data_cfg: Any,
    kind: str,
    split_name: str,
    step: int,
    ext: str,
    identity: dict[str, str] | None = None,
) -> str:
    """`<kind>_<dataset>_<split>_<step>.<ext>`: outputs of different datasets (`identity`: see
    `dataset_identity`), splits or checkpoints never overwrite each other."""
    return f"{kind}_{dataset_label(data_cfg, identity)}_{split_name}_{step}.{ext}"


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    mode: str = "eval",
    split_name: str = "",
    role: str = "",
) -> dict[str, Any]:
    """`eval`: metrics JSON + report + confusion PNG; `predict`: CSV of class probabilities.

    `split_name` defaults to `eval.split`, else `data.eval_split`; `role` labels the report
    (e.g. "held-out test split"). Every process takes part in the computation (the eval batches
    are sharded over all hosts); only process 0 writes files and prints.
    """
    check_config(config)
    mesh = sharding.make_mesh()
    if not split_name and not config.eval.split and mode == "predict" and config.data.test_split:
        split_name = config.data.test_split  # predictions are for held-out images
        if jax.process_index() == 0:
            print(
                f"Predicting the {split_name} split (--config.eval.split=NAME for another).",
                flush=True,
            )
    split_name = split_name or config.eval.split or config.data.eval_split
    config = _with_model_classes(config, workdir, split_name)
    variables, step = restore_variables(config, workdir, mesh)
    split = sources.get_split(config.data, split_name, require_train=False)
    run_record = _recorded_run(checkpointing.resolve_step(workdir, step)[0], step)
    _check_model_classes(run_record, workdir, step, split)
    out_dir = epath.Path(workdir)
    chief = jax.process_index() == 0
    identity = dataset_identity(config.data)
    if mode == "predict":
        logits, _, index = predict_split(config, variables, split, mesh)
        if not chief:
            return {"num_examples": int(len(index))}
        probs = metrics.softmax(logits)
        path = out_dir / output_name(config.data, "predict", split_name, step, "csv", identity)
        result_files.write_csv(
            path,
            ["image", *split.class_names],
            (
                [split.source[int(i)]["image_id"], *(f"{p:.6f}" for p in row)]
                for i, row in zip(index, probs, strict=True)
            ),
        )
        logging.info("Wrote %d predictions to %s", len(index), path)
        print(f"Wrote {len(index)} predictions to {path}")
        return {"path": str(path), "num_examples": int(len(index))}
    counts = _train_class_counts(config, run_record)
    result = evaluate_split(config, variables, split, mesh, train_class_counts=counts)
    result["step"] = step
    result["split"] = split_name
    result["dataset"] = dataset_label(config.data, identity)
    if identity is not None:  # which build was read: results of two builds never mix
        result["dataset_location"] = identity["location"]
        result["dataset_fingerprint"] = identity["fingerprint"]
    result["checkpoint"] = str(config.eval.checkpoint)
    if role:
        result["role"] = role
    # The counts that define the shot groups; summaries pick the rarest classes by them.
    result["train_class_counts"] = None if counts is None else [int(n) for n in counts]
    if counts is None:
        result["shot_groups_note"] = (
            "n/a: the dataset has no training split and the checkpoint records no class counts"
        )
    if not chief:
        return result
    json_path = metrics.write_eval_json(
        out_dir / output_name(config.data, "eval", split_name, step, "json", identity), result
    )
    png = out_dir / output_name(config.data, "confusion", split_name, step, "png", identity)
    figures.confusion_matrix_figure(
        np.asarray(result["confusion_matrix"]),
        list(split.class_names),
        png,
        title=f"{split_name} @ step {step}: balanced acc {result['balanced_accuracy']:.3f}",
    )
    heading = (
        f"== {split_name} split" + (f" ({role})" if role else "") + f", checkpoint step {step}"
    )
    print(f"\n{heading} ==\n{metrics.classification_report(result)}")
    print(f"Wrote {json_path} and {png}")
    return result


def _check_model_classes(
    run: dict[str, Any] | None, workdir: str, step: int, split: DataSplit
) -> None:
    """Refuses a dataset whose classes differ (in names or order) from those the model learnt
    (per the checkpoint's run record `run`): its logits would be read against the wrong names
    without any error."""
    names = None if run is None else run.get("class_names")
    if names and list(names) != list(split.class_names):
        raise UserError(
            f"The checkpoint at step {step} in {workdir} was trained on the classes\n"
            f"  {list(names)}\nbut the {split.split!r} split has the classes\n"
            f"  {list(split.class_names)}\n(names and order must match). Evaluate on a dataset "
            "with the model's classes, in that order."
        )
    if names and jax.process_index() == 0:
        counts = run.get("train_class_counts") if run else None
        shown = ", ".join(
            f"{n} ({c})" for n, c in zip(names, counts or ["?"] * len(names), strict=True)
        )
        print(f"Model classes (training images): {shown}", flush=True)


def check_resume_classes(manager: Any, step: int, workdir: str, split: DataSplit) -> None:
    """Refuses to resume on a dataset whose classes differ (in names or order) from those the
    checkpoint at `step` was trained on: label k would silently change meaning mid-run."""
    run = _recorded_run(manager, step)
    names = None if run is None else run.get("class_names")
    if names and list(names) != list(split.class_names):
        raise UserError(
            f"The checkpoint at step {step} in {workdir} was trained on the classes\n"
            f"  {list(names)}\nbut the dataset's {split.split!r} split has the classes\n"
            f"  {list(split.class_names)}\n(names and order must match). Resume on the dataset "
            "the run started with (or one built with its --class_names), or train in another "
            "--workdir."
        )


def _train_class_counts(
    config: ml_collections.ConfigDict, run: dict[str, Any] | None
) -> np.ndarray | None:
    """Training class counts for the many / medium / few groups: the model's own (from the
    checkpoint's run record `run`), else the dataset's training split, else None when unknown."""
    if run is not None and run.get("train_class_counts"):
        return np.asarray(run["train_class_counts"], np.int64)
    return sources.train_class_counts(config.data)


def final_report(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """After training: the checkpoint chosen on validation, evaluated on the test split.

    The validation numbers are reported too, labelled as the selection split (they chose the
    checkpoint, so they overstate what to expect on new data). Without a test split in the
    dataset only validation is reported, with a note.
    """
    results: dict[str, Any] = {}
    selection = config.data.eval_split
    results[selection] = run(config, workdir, "eval", selection, "selection split")
    test = config.data.test_split
    chief = jax.process_index() == 0
    if test and test != selection:
        try:
            results[test] = run(config, workdir, "eval", test, "held-out test split")
        except UserError as error:
            if chief:
                print(f"No test evaluation: {error}")
    if chief:
        sel = results[selection]
        _write_final_scalars(workdir, results)
        line = f"Checkpoint step {sel['step']} (chosen by {selection} balanced accuracy): "
        if test in results:
            line += f"test balanced accuracy {results[test]['balanced_accuracy']:.4f}; "
        line += f"{selection} (selection split) {sel['balanced_accuracy']:.4f}"
        print(line, flush=True)
    return results


FINAL_SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "loss")


def _write_final_scalars(workdir: str, results: dict[str, dict[str, Any]]) -> None:
    """The final report in TensorBoard too: `final_<split>/<metric>` at the chosen step."""
    writer = summaries.open_writer(workdir, asynchronous=False)
    for split_name, result in results.items():
        scalars = {
            f"final_{split_name}/{k}": result[k] for k in FINAL_SCALARS if result.get(k) is not None
        }
        writer.write_scalars(int(result["step"]), scalars)
    writer.close()
