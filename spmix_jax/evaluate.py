"""Evaluation and prediction from any checkpoint, on whatever devices exist.

`evaluate_split` is shared by the training loop (periodic validation) and the `eval` / `predict`
modes of the entry point, which restore a checkpoint (latest, best or a step) first.
"""

from __future__ import annotations

import csv
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from input_pipeline import pipeline, sources
from input_pipeline.data_split import DataSplit
from spmix_jax import checkpointing, figures, metrics, optimizer, sharding
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.config_checks import check_config
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
) -> dict[str, Any]:
    """All metrics of docs/method.md section 10 for the classifier on one split."""
    logits, labels, _ = predict_split(config, variables, split, mesh, eval_fn)
    return metrics.classification_metrics(
        logits,
        labels,
        tuple(split.class_names),
        split.class_counts,
        many_threshold=config.eval.many_threshold,
        few_threshold=config.eval.few_threshold,
        from_logits=True,
    )


def restore_variables(
    config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh
) -> tuple[dict[str, Any], int]:
    """The query encoder's {"params", "batch_stats"} of the configured checkpoint, on `mesh`.

    Restores into the sharded layout of this process's devices, whatever the count it was saved
    with. The optimizer's state shapes do not depend on the dataset size, hence `num_train=1`.
    """
    manager, step = checkpointing.resolve_step(workdir, config.eval.checkpoint)
    model = make_model(config)
    abstract = state_lib.create(config, model, optimizer.make_optimizer(config, 1), mesh)
    restored = checkpointing.restore(manager, step, abstract)
    return {"params": restored.params, "batch_stats": restored.batch_stats}, step


def restore_for_figures(config: ml_collections.ConfigDict, workdir: str) -> tuple[Any, Any]:
    """(variables, model) of the configured checkpoint, for figures that need a trained model."""
    variables, _ = restore_variables(config, workdir, sharding.make_mesh())
    return variables, make_model(config)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "eval") -> dict[str, Any]:
    """`eval`: metrics JSON + report + confusion PNG; `predict`: CSV of class probabilities.

    Every process takes part in the computation (the eval batches are sharded over all hosts);
    only process 0 writes files and prints.
    """
    check_config(config)
    mesh = sharding.make_mesh()
    split_name = config.eval.split or config.data.eval_split
    split = sources.get_split(config.data, split_name)
    variables, step = restore_variables(config, workdir, mesh)
    out_dir = epath.Path(workdir)
    chief = jax.process_index() == 0
    if mode == "predict":
        logits, _, index = predict_split(config, variables, split, mesh)
        if not chief:
            return {"num_examples": int(len(index))}
        probs = metrics.softmax(logits)
        path = out_dir / f"predict_{split_name}_{step}.csv"
        with path.open("w") as f:
            w = csv.writer(f)
            w.writerow(["image", *split.class_names])
            for i, row in zip(index, probs, strict=True):
                w.writerow([split.source[int(i)]["image_id"], *(f"{p:.6f}" for p in row)])
        logging.info("Wrote %d predictions to %s", len(index), path)
        print(f"Wrote {len(index)} predictions to {path}")
        return {"path": str(path), "num_examples": int(len(index))}
    result = evaluate_split(config, variables, split, mesh)
    result["step"] = step
    result["split"] = split_name
    if not chief:
        return result
    json_path = metrics.write_eval_json(out_dir / f"eval_{split_name}_{step}.json", result)
    png = out_dir / f"confusion_{split_name}_{step}.png"
    figures.confusion_matrix_figure(
        np.asarray(result["confusion_matrix"]),
        list(split.class_names),
        png,
        title=f"{split_name} @ step {step}: balanced acc {result['balanced_accuracy']:.3f}",
    )
    print(metrics.classification_report(result))
    print(f"Wrote {json_path} and {png}")
    return result
