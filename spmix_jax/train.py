"""The training loop: data, state, the jitted step, logging, evaluation and checkpoints.

Reads top to bottom in phases. A run resumes from the last checkpoint in its workdir (state and
data iterator together), so a killed run continues with the batches it would have seen.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image

from input_pipeline import pipeline, sources
from spmix_jax import checkpointing, evaluate, figures, losses, optimizer, sharding
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.config_checks import check_config
from spmix_jax.models import make_model


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _preempted(step: int) -> bool:
    """True on every process at the same step once the cluster announced a preemption."""
    try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError:  # no distributed runtime (single process): nothing announces preemption
        return False


def _write_confusion(writer, workdir: epath.Path, step: int, result: dict, names) -> None:
    """Confusion matrix of a periodic evaluation, as a PNG in the workdir and in TensorBoard."""
    path = workdir / "figures" / f"confusion_validation_{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.confusion_matrix_figure(
        np.asarray(result["confusion_matrix"]),
        list(names),
        path,
        title=f"validation @ step {step}: balanced acc {result['balanced_accuracy']:.3f}",
    )
    with path.open("rb") as f:
        image = np.asarray(Image.open(f).convert("RGB"))
    writer.write_images(step, {"val/confusion_matrix": image[None]})


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    log_prior: np.ndarray,
    num_train: int,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> Any:
    """`step.train_step` bound to its static arguments and jitted.

    The state is donated (updated in place) and keeps its layout; batches are sharded over the
    data axis of `mesh`. Metrics come back replicated.
    """
    step_fn = functools.partial(
        step_lib.train_step,
        config=config,
        model=model,
        tx=tx,
        log_prior=log_prior,
        num_train=num_train,
    )
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, sharding.data_sharding(mesh)),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Trains (or resumes) to the configured number of steps.

    Returns True when training reached its last step, False when it stopped earlier
    (`train.max_steps_per_run`, or a preemption notice, after saving a checkpoint).
    """
    # --- Checks: refuse impossible configs before reading data or compiling -------------------
    check_config(config)
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0

    # --- Data ---------------------------------------------------------------------------------
    train_split = sources.get_split(config.data, config.data.train_split)
    eval_split = sources.get_split(config.data, config.data.eval_split)
    num_train = len(train_split.labels)
    if config.data.num_classes != len(train_split.class_counts):
        raise ValueError(
            f"data.num_classes={config.data.num_classes} but the dataset has "
            f"{len(train_split.class_counts)} classes."
        )
    train_iter = pipeline.make_train_iterator(
        train_split,
        global_batch_size=config.input.batch_size,
        image_size=config.data.image_size,
        seed=config.seed,
        balanced_q=config.input.balanced_q,
        primary=config.mix.primary,
        worker_count=config.input.worker_count,
        worker_buffer_size=config.input.worker_buffer_size,
    )
    logging.info("Train: %d examples, class counts %s", num_train, train_split.class_counts)

    # --- Model, optimizer and the state: shape first, then born sharded or restored ------------
    mesh = sharding.make_mesh()
    model = make_model(config)
    tx = optimizer.make_optimizer(config, num_train)
    num_steps = optimizer.total_steps(config, num_train)
    init = state_lib.initializer(config, model, tx)
    state_shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    state_shardings = state_lib.shardings(state_shape, mesh)
    ckpt = checkpointing.latest_manager(workdir, config.train.keep_checkpoints)
    best_ckpt = checkpointing.best_manager(workdir)
    if ckpt.latest_step() is not None:
        start = int(ckpt.latest_step())
        logging.info("Resuming from step %d in %s", start, workdir)
        abstract = state_lib.with_shardings(state_shape, state_shardings)
        state = checkpointing.restore(ckpt, start, abstract, train_iter)
    else:
        start = 0
        state = jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(config.seed))
        state = state_lib.load_pretrained(config, state, state_shardings)

    # --- The jitted steps: the state is donated, batches are sharded over the data axis -------
    log_prior = losses.class_log_prior(
        train_split.class_counts, primary=config.mix.primary, balanced_q=config.input.balanced_q
    )
    train_step = jit_train_step(config, model, tx, log_prior, num_train, state_shardings, mesh)
    eval_step = jax.jit(functools.partial(step_lib.eval_logits, config=config, model=model))

    # --- Loop ---------------------------------------------------------------------------------
    # TensorBoard on the chief only; the console gets the progress lines printed below.
    writer = metric_writers.MultiWriter(
        [metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))] if is_chief else []
    )
    if start == 0:
        writer.write_hparams(
            {k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str)}
        )
    report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
    stop_at = num_steps
    if config.train.max_steps_per_run > 0:
        stop_at = min(num_steps, start + config.train.max_steps_per_run)
    log_every, eval_every = config.train.log_every, config.train.eval_every
    ckpt_every = config.train.checkpoint_every
    acc = None
    t_last, step_last = time.time(), start
    print(
        f"Training steps {start}..{stop_at} of {num_steps} on {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}); workdir {workdir}",
        flush=True,
    )
    for step in range(start + 1, stop_at + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            batch = sharding.global_batch(next(train_iter), mesh)
            state, step_metrics = train_step(state, batch)
        acc = step_metrics if acc is None else acc.merge(step_metrics)
        report(step)
        preempted = _preempted(step)
        is_last = step == stop_at or preempted
        do_eval = step % eval_every == 0 or step == num_steps
        do_ckpt = step % ckpt_every == 0 or is_last
        if step % log_every == 0 or is_last or do_eval or do_ckpt:
            values = step_lib.metrics_to_host(acc)
            acc = None
            if not np.isfinite(values["loss"]):
                raise NonFiniteLossError(
                    f"Loss became {values['loss']} between steps {step - log_every} and {step}; "
                    f"stopping. The last good checkpoint in {workdir}/checkpoints is kept "
                    "(lower optim.base_lr, set optim.grad_clip, or use model.dtype=float32)."
                )
            writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
            now = time.time()
            rate = (step - step_last) / max(now - t_last, 1e-9)  # since the last line
            t_last, step_last = now, step
            eta = (num_steps - step) / max(rate, 1e-9)
            print(
                f"step {step:>6}/{num_steps} | loss {values['loss']:.4f} | acc "
                f"{values['accuracy']:.3f} | ratio {values['mix_ratio_mean']:.3f} | lr "
                f"{values['learning_rate']:.2e} | {rate:.2f} steps/s | ETA {_fmt_time(eta)}",
                flush=True,
            )
        if do_eval:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            last_eval = evaluate.evaluate_split(config, variables, eval_split, mesh, eval_step)
            scalars = {
                f"val/{k}": last_eval[k]
                for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro")
                if last_eval.get(k) is not None
            }
            writer.write_scalars(step, scalars)
            if is_chief:
                _write_confusion(writer, workdir_path, step, last_eval, eval_split.class_names)
            print(
                f"eval step {step}: " + " | ".join(f"{k[4:]} {v:.4f}" for k, v in scalars.items()),
                flush=True,
            )
            checkpointing.save(
                best_ckpt,
                step,
                state,
                metrics={checkpointing.BEST_METRIC: last_eval["balanced_accuracy"]},
            )
        if do_ckpt:
            checkpointing.save(ckpt, step, state, train_iter)
        if preempted:
            print(f"Preemption notice: saved step {step}; rerun the same command to resume.")
            break
    writer.flush()
    ckpt.wait_until_finished()
    best_ckpt.wait_until_finished()
    if hasattr(train_iter, "close"):
        train_iter.close()
    return int(jax.device_get(state.step)) >= num_steps
