"""Entry point: `python -m spmix_jax.main --config=demo --workdir=DIR --mode=train`.

Modes: train (then evaluate the best checkpoint and draw figures), eval, predict, visualize.
Config overrides: `--config.input.batch_size=64`, and arguments: `--config=configs/x.py:a=1`.
A config is a file path or the name of a shipped config (`demo`, `ham10000:method=ce`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from spmix_jax import cli  # noqa: E402

MODES = ("train", "eval", "predict", "visualize")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file or shipped config name, optionally with an argument: configs/x.py:arg, demo, "
    "ham10000:method=ce. Override any field with --config.FIELD=VALUE (e.g. "
    "--config.input.batch_size=64); --verbosity=1 shows logs and tracebacks of errors.",
    lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, metrics and figures.")
flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (multi-host TPU/GPU)."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.distributed:
        jax.distributed.initialize()
    if not FLAGS["verbosity"].present:
        # Progress goes to stdout; orbax and tfds log many INFO lines per save/read otherwise.
        logging.set_verbosity(logging.WARNING)
    config = FLAGS.config
    workdir = FLAGS.workdir
    from spmix_jax import evaluate, train

    if FLAGS.mode == "train":
        finished = train.train_and_evaluate(config, workdir)
        if finished:
            # The checkpoint chosen on validation, reported on test (all processes: eval
            # batches are sharded).
            evaluate.final_report(config, workdir)
            if jax.process_index() == 0 and config.mix.method == "spmix":
                _pair_figure(config, workdir)
        return
    # Other modes take the model and data settings the run recorded; command-line
    # --config.* overrides win.
    overrides = config_flags.get_override_values(FLAGS["config"])
    config = evaluate.with_recorded_config(config, workdir, overrides)
    if FLAGS.mode in ("eval", "predict"):
        evaluate.run(config, workdir, FLAGS.mode)
    elif jax.process_index() == 0:
        _pair_figure(config, workdir)


def _pair_figure(config, workdir: str) -> None:
    """`pairs.png`; gradient saliency needs the trained model, static saliency does not."""
    from spmix_jax import evaluate, figures

    variables = model = None
    if config.saliency.method == "gradient":
        variables, model = evaluate.restore_for_figures(config, workdir)
    print(f"Wrote {figures.make_pair_figure(config, workdir, variables, model)}")


def run() -> None:
    """Console-script entry point (`spmix-train`); user errors print as one message."""
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
