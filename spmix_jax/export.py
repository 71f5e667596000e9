"""Write a trained model as a self-contained folder: `spmix-export --workdir=W --out=DIR`.

The evaluation forward (preprocessed uint8 squares in, probabilities out) is serialised with
`jax.export` for a symbolic batch size, its weights go to `params.npz` and the class names,
input size and normalisation to `model.json`. `spmix_jax.exported.load(DIR)` runs it with jax,
numpy and PIL only (no flax, no model code, no configs).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from spmix_jax import cli, exported  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs (the trainer has a --workdir too)."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run (its checkpoints and record).")
    flags.DEFINE_string("checkpoint", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string("out", None, "Folder to write the exported model into.")
    flags.mark_flags_as_required(["workdir", "out"])


# Lowered for each of these so that one export runs on CPU and GPU; others are tried too.
PLATFORMS = ("cpu", "cuda", "tpu")


def export_classifier(classifier: Any, out_dir: str | os.PathLike) -> str:
    """Writes `classifier` (a `spmix_jax.inference.Classifier`) into `out_dir`; returns it."""
    from jax import export

    from spmix_jax import augment, inference

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    leaves, treedef = jax.tree.flatten(classifier.variables)
    host_leaves = [np.asarray(jax.device_get(x)) for x in leaves]
    forward = inference.probabilities_fn(classifier.config, classifier.model)

    def flat_forward(*args: Any) -> jax.Array:
        *params, images = args
        return forward(jax.tree.unflatten(treedef, params), images)

    (batch,) = export.symbolic_shape("batch")
    size = classifier.image_size
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in host_leaves]
    specs.append(jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8))
    try:
        exp = export.export(jax.jit(flat_forward), platforms=PLATFORMS)(*specs)
    except Exception as error:  # a platform this jax cannot lower for: the running one only
        logging.warning("Export for %s failed (%s); exporting for this one", PLATFORMS, error)
        exp = export.export(jax.jit(flat_forward))(*specs)
    with open(os.path.join(out_dir, exported.MODEL_FILE), "wb") as f:
        f.write(exp.serialize())
    arrays: dict[str, Any] = {f"arg{i}": x for i, x in enumerate(host_leaves)}
    np.savez(os.path.join(out_dir, exported.PARAMS_FILE), **arrays)
    settings = augment.ViewSettings.from_config(classifier.config.augment)
    info = {
        "class_names": list(classifier.class_names),
        "image_size": size,
        "input": "uint8 (batch, image_size, image_size, 3) RGB: short side resized to image_size, "
        "centre square",
        "model_image_size": int(classifier.config.model.image_size),
        "eval_resize_ratio": float(settings.eval_resize_ratio),
        "mean": list(settings.mean),
        "std": list(settings.std),
        "model_variant": str(classifier.config.model.variant),
        "checkpoint_step": int(classifier.step),
        "platforms": list(exp.platforms),
    }
    with open(os.path.join(out_dir, exported.INFO_FILE), "w") as info_file:
        json.dump(info, info_file, indent=2)
        info_file.write("\n")
    return out_dir


def main(argv: list[str]) -> None:
    from spmix_jax import inference
    from spmix_jax.errors import UserError

    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    classifier = inference.Classifier.from_workdir(FLAGS.workdir, FLAGS.checkpoint)
    out = export_classifier(classifier, FLAGS.out)
    print(
        f"Exported checkpoint step {classifier.step} of {FLAGS.workdir} to {out} "
        f"({len(classifier.class_names)} classes, {classifier.image_size}-px input). Use it "
        f"with: from spmix_jax import exported; exported.load({out!r})(['image.jpg'])",
        file=sys.stderr,
    )


def run() -> None:
    """Console-script entry point (`spmix-export`)."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
