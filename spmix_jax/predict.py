"""Classify image files with a trained run: `spmix-predict --workdir=W [--out=p.csv] PATH...`.

Each PATH is an image file or a folder (searched recursively for JPEG and PNG files of any
mode). No dataset is built. Writes one CSV row per image (`image`, one probability column per
class as in an ISIC submission, then `predicted` and `confidence`) to `--out` or stdout; a file
that cannot be read is named on stderr and left out, the others are still classified.
`--explain=DIR` also writes per image the gradient saliency of the predicted class over the
image, with the top-3 classes in the title.
"""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from spmix_jax import cli, result_files  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined when it runs (the trainer has a --workdir too)."""
    flags.DEFINE_string("workdir", None, "Workdir of a trained run (its checkpoints and record).")
    flags.DEFINE_string("checkpoint", "best", "Checkpoint: best, latest or a step number.")
    flags.DEFINE_string("out", "", "CSV file to write; default: stdout.")
    flags.DEFINE_string("explain", "", "Folder for one saliency overlay PNG per image.")
    flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
    flags.mark_flags_as_required(["workdir"])


def csv_header(class_names: Sequence[str]) -> list[str]:
    return ["image", *class_names, "predicted", "confidence"]


def csv_row(image: str, probs: np.ndarray, class_names: Sequence[str]) -> list[str]:
    best = int(np.argmax(probs))
    return [image, *(f"{p:.6f}" for p in probs), class_names[best], f"{probs[best]:.6f}"]


def write_csv(stream: IO[str], header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Every CSV row this command writes goes through here: text cells a spreadsheet would
    evaluate as a formula (an image named `=1+2.jpg`) are escaped (`result_files.escape_cell`)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([result_files.escape_cell(h) for h in header])
    writer.writerows([result_files.escape_cell(v) for v in row] for row in rows)


def overlay_name(path: str, index: int) -> str:
    """A file name for the overlay of `path`, unique within one run."""
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{index:05d}_{stem}.png"


def write_overlay(
    out_dir: str, name: str, view: np.ndarray, sal: np.ndarray, top: list[tuple[str, float]]
) -> str:
    """The image with its saliency map blended over it, titled with the top classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from spmix_jax import figures

    fig = Figure(figsize=(3.2, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(figures.saliency_overlay(view, sal, alpha=0.45))
    ax.set_axis_off()
    ax.set_title("\n".join(f"{n} {p:.3f}" for n, p in top), fontsize=8)
    fig.tight_layout()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.savefig(path, format="png", dpi=100)
    return path


def predict_files(
    classifier: Any,
    files: Sequence[str],
    out: IO[str],
    explain_dir: str = "",
    progress: IO[str] | None = None,
) -> tuple[int, list[str]]:
    """Classifies `files` in batches and writes the CSV; returns (count, unreadable files)."""
    from spmix_jax import inference

    names = classifier.class_names
    rows: list[list[str]] = []
    failed: list[str] = []
    step = classifier.batch_size
    for k, part in enumerate(inference.batches(len(files), step)):
        squares, kept, numbers = [], [], []
        for number, path in enumerate(files[part], part.start):
            try:
                squares.append(inference.read_image(path, classifier.image_size))
                kept.append(path)
                numbers.append(number)
            except ValueError as error:
                failed.append(path)
                print(f"warning: skipped {path}: {error}", file=sys.stderr, flush=True)
        if squares:
            batch = np.stack(squares)
            probs = classifier.probabilities(batch)
            rows += [csv_row(p, row, names) for p, row in zip(kept, probs, strict=True)]
            if explain_dir:
                maps, views = classifier.explain(batch, np.argmax(probs, axis=-1))
                for j, path in enumerate(kept):
                    top = inference.top_classes(probs[j], names)
                    name = overlay_name(path, numbers[j])
                    write_overlay(explain_dir, name, views[j], maps[j], top)
        if progress is not None and len(files) > step:
            done = min(len(files), (k + 1) * step)
            print(f"{done}/{len(files)} images", file=progress, flush=True)
    write_csv(out, csv_header(names), rows)
    return len(rows), failed


def main(argv: list[str]) -> None:
    from spmix_jax import inference
    from spmix_jax.errors import UserError

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    paths = argv[1:]
    if not paths:
        raise UserError("give image files or folders to classify: spmix-predict --workdir=W PATH")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be >= 1")
    files = inference.find_images(paths)
    if not files:
        raise UserError(f"no .jpg, .jpeg or .png files in {', '.join(paths)}")
    classifier = inference.Classifier.from_workdir(
        FLAGS.workdir, FLAGS.checkpoint, FLAGS.batch_size
    )
    print(
        f"Classifying {len(files)} images with checkpoint step {classifier.step} of "
        f"{FLAGS.workdir}",
        file=sys.stderr,
        flush=True,
    )
    if FLAGS.out:
        with result_files.atomic_stream(FLAGS.out) as f:  # a killed run leaves no half CSV
            count, failed = predict_files(classifier, files, f, FLAGS.explain, sys.stderr)
        print(f"Wrote {count} predictions to {FLAGS.out}", file=sys.stderr)
    else:
        count, failed = predict_files(classifier, files, sys.stdout, FLAGS.explain, sys.stderr)
    if FLAGS.explain:
        print(f"Wrote {count} saliency overlays to {FLAGS.explain}", file=sys.stderr)
    if failed:
        print(
            f"warning: {len(failed)} of {len(files)} files could not be read and are not in the "
            f"CSV: {', '.join(failed[:5])}" + (" ..." if len(failed) > 5 else ""),
            file=sys.stderr,
            flush=True,
        )
        if not count:
            sys.exit(cli.USER_ERROR_EXIT_CODE)


def run() -> None:
    """Console-script entry point (`spmix-predict`)."""
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    run()
