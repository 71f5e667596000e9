"""The training loop: data, state, the jitted step, logging, evaluation and checkpoints.

Reads top to bottom in phases. A run resumes from the last checkpoint in its workdir (state and
data iterator together), so a killed run continues with the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from PIL import Image

from input_pipeline import pipeline, sources
from spmix_jax import (
    checkpointing,
    compile_cache,
    evaluate,
    figures,
    optimizer,
    run_config,
    sharding,
    summaries,
    workdir_lock,
)
from spmix_jax import state as state_lib
from spmix_jax import step as step_lib
from spmix_jax.config_checks import check_config
from spmix_jax.data_wait import DataWaitMeter
from spmix_jax.errors import UserError
from spmix_jax.models import make_model


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss or the update became NaN or Inf; the last good checkpoint is kept."""


def _fmt_time(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# Set by SIGTERM / SIGINT in a single-process run: save a checkpoint after this step and stop.
_STOP_REQUESTED = threading.Event()


def _request_stop(signum: int, frame: Any) -> None:
    del frame
    _STOP_REQUESTED.set()
    signal.signal(signum, signal.SIG_DFL)  # a second signal stops at once
    print(
        f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
        "(send it again to stop at once).",
        flush=True,
    )


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM (how Cloud TPU and most schedulers preempt) and SIGINT (Ctrl-C) end the loop at
    the next step with a checkpoint and a closed data iterator (no grain workers left behind).

    Single-process runs only: a multi-process run learns of preemption through
    `reached_preemption_sync_point`, at the same step on every process.
    """
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP_REQUESTED.clear()
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _preempted(step: int) -> bool:
    """True on every process at the same step once the cluster announced a preemption (or, in
    a single-process run, once SIGTERM / SIGINT asked to stop)."""
    if _STOP_REQUESTED.is_set():
        return True
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


def _detail_scalars(result: dict) -> dict[str, float]:
    """Per-class recall and many / medium / few-shot accuracy of a periodic evaluation."""
    out = {f"val_recall/{name}": m["recall"] for name, m in result["per_class"].items()}
    for group in ("many", "medium", "few"):
        if result.get(f"{group}_accuracy") is not None:
            out[f"val/{group}_accuracy"] = result[f"{group}_accuracy"]
    return out


def _write_pairs(config, writer, workdir: epath.Path, step: int, variables, model) -> None:
    """The figure of mixed training pairs (images, saliency, per-patch ratios, mix) at `step`."""
    path = workdir / "figures" / f"pairs_{step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.make_pair_figure(config, str(workdir), variables, model, path=path)
    with path.open("rb") as f:
        image = np.asarray(Image.open(f).convert("RGB"))
    writer.write_images(step, {"train/pairs": image[None]})


class _ProfileWindow:
    """A profiler trace of `steps` training steps from step `first` on, for TensorBoard."""

    def __init__(self, first: int, steps: int, logdir: str):
        self.first, self.last, self.logdir = first, first + steps - 1, logdir
        self.active = False

    def __call__(self, step: int) -> None:
        """Called after `step` was dispatched: the trace covers steps first+1..last+1."""
        if step == self.first and self.last >= self.first:
            jax.profiler.start_trace(self.logdir)
            self.active = True
        elif self.active and step > self.last:
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity
class TrainStep:
    """The jitted step, called as `step(state, batch)`, with the run's base key bound.

    The key (`PRNGKey(config.seed)`, replicated) is an input of the compiled program rather than
    a constant in it, so runs that differ only in their seed compile the same program and a seed
    sweep sharing a compilation cache compiles the step once. `lower` takes the same two
    arguments; the program it lowers (and its compiled form) takes `base_key` third.
    """

    jitted: Any
    base_key: jax.Array

    def __call__(self, state: Any, batch: dict[str, jax.Array]) -> tuple[Any, Any]:
        return self.jitted(state, batch, self.base_key)

    def lower(self, state: Any, batch: dict[str, jax.Array]) -> Any:
        return self.jitted.lower(state, batch, self.base_key)


def jit_train_step(
    config: ml_collections.ConfigDict,
    model: Any,
    tx: optax.GradientTransformation,
    log_prior: np.ndarray,
    num_train: int,
    state_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> TrainStep:
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
    replicated = sharding.replicated(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, sharding.data_sharding(mesh), replicated),
        out_shardings=(state_shardings, None),
        donate_argnums=(0,),
    )
    key = np.asarray(jax.random.PRNGKey(config.seed))
    base_key = jax.make_array_from_callback(key.shape, replicated, lambda index: key[index])
    return TrainStep(jitted, base_key)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Trains (or resumes) to the configured number of steps.

    Returns True when training reached its last step, False when it stopped earlier
    (`train.max_steps_per_run`, or a preemption notice, after saving a checkpoint). Holds the
    workdir's lock meanwhile, so a second run on the same workdir stops at once.
    """
    check_config(config)
    if "://" not in workdir:
        try:
            os.makedirs(workdir, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create the workdir {workdir}: {e.strerror}") from e
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise UserError(f"the workdir {workdir} is not writable; choose another --workdir.")
    with (
        workdir_lock.hold(workdir, enabled=jax.process_index() == 0),
        _stop_on_signals(),
        checkpointing.disk_full_stops_the_run(epath.Path(workdir)),
    ):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> bool:
    # --- Checks: refuse impossible configs before reading data or compiling -------------------
    check_config(config)
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    is_chief = jax.process_index() == 0
    compile_cache.enable(config.train.get("compile_cache", compile_cache.AUTO), workdir)

    # --- Data ---------------------------------------------------------------------------------
    train_split = sources.get_split(config.data, config.data.train_split)
    eval_split = sources.get_split(config.data, config.data.eval_split)
    num_train = len(train_split.labels)
    config = run_config.with_classes(config, train_split.class_names)  # the dataset's classes
    train_iter = pipeline.make_train_iterator(
        train_split,
        global_batch_size=config.input.batch_size,
        image_size=config.data.image_size,
        image_aspect=config.data.image_aspect,
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
        # The newest checkpoint that restores (a truncated or incomplete one is set aside); an
        # intact one that does not fit the config is named as such, not taken for damage.
        def check_fits(step: int) -> None:
            evaluate.check_checkpoint_fits(
                config,
                ckpt,
                step,
                workdir,
                {"params": state_shape.params, "batch_stats": state_shape.batch_stats},
                hint=", or train this config in another --workdir",
            )

        abstract = state_lib.with_shardings(state_shape, state_shardings)
        start, state = checkpointing.restore_newest_intact(ckpt, abstract, train_iter, check_fits)
        evaluate.check_resume_classes(ckpt, start, workdir, train_split)
        logging.info("Resuming from step %d in %s", start, workdir)
    else:
        start = 0
        state = jax.jit(init, out_shardings=state_shardings)(jax.random.PRNGKey(config.seed))
        state = state_lib.load_pretrained(config, state, state_shardings)

    if is_chief:  # what this run is: config.json and command.txt (also stored with checkpoints)
        run_config.write_run_files(config, workdir)

    # --- The jitted steps: the state is donated, batches are sharded over the data axis -------
    log_prior = step_lib.loss_log_prior(config, train_split.class_counts)
    train_step = jit_train_step(config, model, tx, log_prior, num_train, state_shardings, mesh)
    eval_step = jax.jit(functools.partial(step_lib.eval_logits, config=config, model=model))

    # --- Loop ---------------------------------------------------------------------------------
    # TensorBoard on the chief only; the console gets the progress lines printed below.
    writer = summaries.open_writer(workdir, enabled=is_chief)
    if start == 0:
        writer.write_hparams(run_config.hparams(config))
    run = run_config.run_info(config, train_split.class_names, train_split.class_counts)
    profile = _ProfileWindow(
        first=start + min(10, max(1, num_steps - start - 1)),
        steps=config.train.profile_steps if is_chief else 0,
        logdir=workdir,
    )
    stop_at = num_steps
    if config.train.max_steps_per_run > 0:
        stop_at = min(num_steps, start + config.train.max_steps_per_run)
    log_every = config.train.log_every
    eval_every = optimizer.eval_every_steps(config, num_train)
    ckpt_every = config.train.checkpoint_every
    acc = None
    t_last, step_last = time.time(), start
    data_wait = DataWaitMeter()
    print(
        f"Training steps {start}..{stop_at} of {num_steps} on {jax.device_count()} device(s) "
        f"({jax.devices()[0].platform}); workdir {workdir}",
        flush=True,
    )
    if (note := optimizer.scaling_note(config)) is not None:
        print(note, flush=True)
    for step in range(start + 1, stop_at + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            batch = sharding.global_batch(data_wait.fetch(lambda: next(train_iter)), mesh)
            state, step_metrics = train_step(state, batch)
        if step == start + 1:  # the first step compiles: steps/s and ETA time the ones after it
            jax.block_until_ready(state.step)
            t_last, step_last = time.time(), step
        acc = step_metrics if acc is None else acc.merge(step_metrics)
        profile(step)
        preempted = _preempted(step)
        is_last = step == stop_at or preempted
        do_eval = step % eval_every == 0 or step == num_steps
        do_ckpt = step % ckpt_every == 0 or is_last
        if step % log_every == 0 or is_last or do_eval or do_ckpt:
            values = step_lib.metrics_to_host(acc)
            acc = None
            if not np.isfinite(values["loss"]):
                # A non-finite step leaves the state as it was, so its step counter names the
                # first step whose loss, gradients or updated parameters were not finite.
                bad = int(jax.device_get(state.step)) + 1
                ckpt.wait_until_finished()  # the good checkpoints still being written
                raise NonFiniteLossError(
                    f"Step {bad}: the loss, gradients or updated parameters became "
                    f"{values['loss']} (loss); stopping without saving. The last good "
                    f"checkpoint in {workdir}/checkpoints is kept (lower optim.base_lr, set "
                    "optim.grad_clip, or use model.dtype=float32)."
                )
            values["data_wait_fraction"] = waited = data_wait.take()
            now = time.time()
            timed = step - step_last
            rate = timed / max(now - t_last, 1e-9)  # since the last line
            if timed:
                values["steps_per_sec"] = rate
            writer.write_scalars(step, {f"train/{k}": v for k, v in values.items()})
            first_line = step_last == start + 1  # holds the workers' start-up
            t_last, step_last = now, step
            eta = (num_steps - step) / max(rate, 1e-9)
            speed = (
                f"{rate:.2f} steps/s | data wait {waited:.0%} | ETA {_fmt_time(eta)}"
                if timed
                else "compiled"
            )
            print(
                f"step {step:>6}/{num_steps} | loss {values['loss']:.4f} | acc "
                f"{values['accuracy']:.3f} | ratio {values['mix_ratio_mean']:.3f} | lr "
                f"{values['learning_rate']:.2e} | {speed}",
                flush=True,
            )
            hint = None if first_line else data_wait.hint(waited, config)
            if hint and is_chief:
                print(hint, flush=True)
        if do_eval:
            variables = {"params": state.params, "batch_stats": state.batch_stats}
            last_eval = evaluate.evaluate_split(config, variables, eval_split, mesh, eval_step)
            scalars = {
                f"val/{k}": last_eval[k]
                for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "loss")
                if last_eval.get(k) is not None
            }
            writer.write_scalars(step, {**scalars, **_detail_scalars(last_eval)})
            if is_chief:
                _write_confusion(writer, workdir_path, step, last_eval, eval_split.class_names)
                if config.train.pairs_every_eval and config.mix.method == "spmix":
                    _write_pairs(config, writer, workdir_path, step, variables, model)
            print(
                f"eval step {step}: " + " | ".join(f"{k[4:]} {v:.4f}" for k, v in scalars.items()),
                flush=True,
            )
            data_wait.take()  # the evaluation's time is no step's
            checkpointing.save(
                best_ckpt,
                step,
                state,
                metrics={checkpointing.BEST_METRIC: last_eval["balanced_accuracy"]},
                run=run,
                wait=False,  # written in the background; training goes on
            )
        if do_ckpt:
            checkpointing.save(ckpt, step, state, train_iter, run=run, wait=False)
        if preempted:
            print(
                f"Stopped early (preemption notice or signal): saved step {step}; rerun the "
                "same command to resume.",
                flush=True,
            )
            break
    profile.close()
    writer.flush()
    checkpointing.wait(ckpt)  # a full disk stops here with a UserError, the last step kept
    checkpointing.wait(best_ckpt)
    if hasattr(train_iter, "close"):
        train_iter.close()
    return int(jax.device_get(state.step)) >= num_steps
