r"""Builds this project's datasets as TFDS ArrayRecord directories.

Examples:
  # Any folder of images plus a label CSV (HAM10000 layout: labels.csv + metadata.csv):
  python -m input_pipeline.build --builder=folder_csv \
      --source=/data/ham10000_subset --data_dir=/data/tfds --split_fractions=0.8,0.1,0.1
  # Raw-pixel storage (no decode or resize per sample when training; about 0.26 MB an image
  # for the default 256 x 341 frame, reported before writing):
  python -m input_pipeline.build --builder=folder_csv --storage=raw \
      --source=/data/ham10000_subset --data_dir=/data/tfds --config=raw256
  # ISIC 2018 Task 3 from the official downloads:
  python -m input_pipeline.build --builder=isic2018 --manual_dir=/data/isic2018_downloads \
      --data_dir=/data/tfds --config=short256        # or original | released

The result lands in `<data_dir>/<builder>/<config>/1.0.0/`; train with
`--config.data.name=<builder> --config.data.data_dir=<data_dir>
 --config.data.builder_config=<config>`. Every image is decoded once at build time: a corrupt
file, a CSV row without image, a row that is not one-hot, a duplicate id stop the build with the
file and line, unless `--skip_bad` (then the item is left out and counted in the report, which is
stored in `metadata.json` and printed at the end). Installed as the `spmix-build-data` command.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import app, flags, logging
from etils import epath

from input_pipeline import build_lock, builders, command_line
from input_pipeline.builders import base, folder_csv, image_files, isic2018, isic2019, pad_ufes20
from input_pipeline.builders.csv_layout import DataError

_SPLIT_ORDER = ("train", "validation", "test")
# The frame a raw-pixel build stores by default: that of the 224 px configs (data.image_size
# 256, data.image_aspect 4/3, e.g. configs/ham10000.py:full), 256 x 341.
DEFAULT_FRAME_SIZE = 256
DEFAULT_FRAME_ASPECT = 4.0 / 3.0


def make_builder(
    builder: str,
    data_dir: str,
    *,
    config: str = "",
    source: str = "",
    manual_dir: str = "",
    csv: str = "labels.csv",
    metadata: str = "auto",
    images: str = "",
    class_names: Sequence[str] = (),
    split_fractions: str | Sequence[float] = folder_csv.DEFAULT_FRACTIONS,
    seed: int | None = None,
    short_side: int = 0,
    holdout_per_class: int | None = None,
    skip_bad: bool = False,
    num_threads: int = 0,
    max_image_mb: int = image_files.DEFAULT_MAX_IMAGE_MB,
    storage: str = "jpeg",
    frame_size: int = DEFAULT_FRAME_SIZE,
    frame_aspect: float = DEFAULT_FRAME_ASPECT,
) -> tfds.core.DatasetBuilder:
    """The (not yet prepared) builder for these parameters; `builder.data_dir` is its target.

    `storage='raw'` stores each image decoded in the training frame of `frame_size` x
    `frame_aspect` (`data.image_size` x `data.image_aspect` of the runs that read it).
    """
    config = config or builders.DEFAULT_CONFIGS.get(builder, "")
    stored: dict[str, Any] = {"storage": storage}
    if storage == "raw":
        stored["frame"] = base.raw_frame(frame_size, frame_aspect)
    if builder == "folder_csv":
        if not source:
            raise ValueError("folder_csv needs a source folder (--source)")
        cfg: Any = folder_csv.folder_csv_config(
            source,
            name=config,
            csv=csv,
            metadata=metadata,
            images=images,
            class_names=class_names,
            split_fractions=split_fractions,
            seed=0 if seed is None else seed,
            short_side=short_side,
        )
        return folder_csv.FolderCsv(
            config=cfg,
            data_dir=data_dir,
            skip_bad=skip_bad,
            num_threads=num_threads,
            max_image_mb=max_image_mb,
            **stored,
        )
    if builder == "isic2018":
        if short_side:
            raise ValueError("isic2018 takes its image size from the config name (short<N>)")
        cfg = isic2018.isic2018_config(config, holdout_per_class=holdout_per_class, seed=seed)
        return isic2018.Isic2018(
            config=cfg,
            data_dir=data_dir,
            skip_bad=skip_bad,
            num_threads=num_threads,
            max_image_mb=max_image_mb,
            **stored,
        )
    split_builders = {
        "isic2019": (isic2019.isic2019_config, isic2019.Isic2019),
        "pad_ufes20": (pad_ufes20.pad_ufes20_config, pad_ufes20.PadUfes20),
    }
    if builder in split_builders:
        if short_side or holdout_per_class is not None:
            raise ValueError(
                f"{builder} takes its image size from the config name (short<N>) and has no "
                "hold-out"
            )
        make_config, builder_class = split_builders[builder]
        return builder_class(
            config=make_config(config, seed=seed),
            data_dir=data_dir,
            skip_bad=skip_bad,
            num_threads=num_threads,
            max_image_mb=max_image_mb,
            **stored,
        )
    raise ValueError(f"unknown builder {builder!r}; expected one of {sorted(builders.BUILDERS)}")


def _read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The whole `metadata.json` of a dataset directory, or None when it has none."""
    meta = epath.Path(path) / "metadata.json"
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError as e:  # truncated or overwritten: rebuilding is the only fix
        raise DataError(
            f"{meta}: not readable JSON ({e}); the built dataset is damaged. Rebuild it by "
            "running the same build command with --overwrite."
        ) from None


def _stored_params(path: epath.Path) -> dict[str, Any] | None:
    meta = _read_metadata(path)
    if meta is None:
        return None
    return meta.get(base.METADATA_KEY, {}).get("params")


def _without_skip(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "skip_bad"}


def build_dataset(
    builder: str,
    data_dir: str,
    *,
    manual_dir: str = "",
    overwrite: bool = False,
    **kwargs: Any,
) -> str:
    """Builds (or reuses) a dataset and returns its directory (`.../<config>/<version>`).

    `kwargs` are those of `make_builder`. An existing dataset built with different parameters
    is refused unless `overwrite` (then it is rebuilt).
    """
    manual_ok = os.path.isdir(manual_dir or "") and bool(os.listdir(manual_dir))
    if builder in builders.MANUAL_DIR_BUILDERS and not manual_ok:
        raise DataError(
            f"{builder} needs --manual_dir, a folder with the official downloads; got "
            f"{manual_dir!r} (missing or empty).\n"
            f"{builders.BUILDERS[builder].MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    ds_builder = make_builder(builder, data_dir, manual_dir=manual_dir, **kwargs)
    # A second build of the same dataset waits here, then reuses the first one's result.
    with build_lock.hold(os.fspath(ds_builder.data_dir)):
        return _build_or_reuse(ds_builder, builder, data_dir, manual_dir, overwrite, kwargs)


def _build_or_reuse(
    ds_builder: tfds.core.DatasetBuilder,
    builder: str,
    data_dir: str,
    manual_dir: str,
    overwrite: bool,
    kwargs: dict[str, Any],
) -> str:
    target = epath.Path(ds_builder.data_dir)
    _recover_interrupted_swap(target)
    if target.exists() and not overwrite:
        stored = _stored_params(target)
        wanted = ds_builder.recorded_params()
        if stored is not None and _without_skip(stored) != _without_skip(wanted):
            raise DataError(
                f"{target} already holds a dataset built with other parameters:\n"
                f"  stored:    {stored}\n  requested: {wanted}\n"
                "Pass --overwrite to rebuild it, or choose another --config name."
            )
        logging.info("Reusing the dataset at %s", target)
        return os.fspath(target)
    if not target.exists():
        logging.info("Building %s into %s", ds_builder.info.full_name, target)
        _prepare(ds_builder, manual_dir)  # TFDS writes to a temporary folder, then renames
        try:
            validate_dataset(target)
        except DataError:
            target.rmtree()
            raise
        return os.fspath(target)
    # Rebuild next to the target and swap it in only once it is complete and valid: a failed or
    # killed rebuild leaves the old dataset as it was.
    staging = epath.Path(data_dir) / f"{_STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        staging.rmtree()
    staged_builder = make_builder(builder, os.fspath(staging), manual_dir=manual_dir, **kwargs)
    staged = epath.Path(staged_builder.data_dir)
    logging.info("Rebuilding %s into %s before replacing it", target, staged)
    try:
        _prepare(staged_builder, manual_dir)
        validate_dataset(staged)
        backup = target.parent / f".{target.name}{_BACKUP_INFIX}{os.getpid()}"
        target.rename(backup)
        staged.rename(target)
        backup.rmtree()
    finally:
        if staging.exists():
            staging.rmtree()
    return os.fspath(target)


_STAGING_PREFIX = ".spmix_rebuild_"
_BACKUP_INFIX = ".replaced_by_"


def _prepare(ds_builder: tfds.core.DatasetBuilder, manual_dir: str) -> None:
    with tempfile.TemporaryDirectory(prefix="spmix_build_") as scratch:
        download_config = tfds.download.DownloadConfig(
            manual_dir=manual_dir or None,
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
            try_download_gcs=False,
        )
        ds_builder.download_and_prepare(download_dir=scratch, download_config=download_config)
    if ds_builder.recorded_params().get("storage") == "raw":
        base.store_uncompressed(ds_builder.data_dir)


def _recover_interrupted_swap(target: epath.Path) -> None:
    """Puts back a dataset moved aside by a rebuild that was killed between its two renames,
    and removes staging folders of rebuilds that died."""
    if not target.parent.is_dir():
        return
    if not target.exists():
        backups = sorted(target.parent.glob(f".{target.name}{_BACKUP_INFIX}*"))
        if backups:
            logging.warning("Restoring %s from an interrupted rebuild (%s)", target, backups[-1])
            backups[-1].rename(target)
    for path in target.parent.glob(f".{target.name}{_BACKUP_INFIX}*"):
        path.rmtree()
    data_dir = target.parent.parent.parent  # <data_dir>/<builder>/<config>/<version>
    for staging in data_dir.glob(f"{_STAGING_PREFIX}*"):
        pid = staging.name[len(_STAGING_PREFIX) :]
        if pid.isdigit() and not _alive(int(pid)):
            staging.rmtree()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def validate_dataset(path: str | os.PathLike) -> None:
    """Refuses a built dataset whose splits, counts or metadata do not agree with each other.

    Checks that the metadata names every split TFDS wrote, that each split's stored labels, its
    `num_examples` and the records actually readable have the same length, and that the class
    names agree with the label feature.
    """
    meta = load_build_metadata(path)
    built = tfds.builder_from_directory(os.fspath(path))
    if set(meta["splits"]) != set(built.info.splits):
        raise DataError(
            f"{path}: metadata lists splits {sorted(meta['splits'])} but TFDS wrote "
            f"{sorted(built.info.splits)}"
        )
    names = list(built.info.features["label"].names)
    if names != list(meta["class_names"]):
        raise DataError(f"{path}: class names {names} differ from metadata {meta['class_names']}")
    for split, info in meta["splits"].items():
        readable = len(built.as_data_source(split))
        counts = {
            "metadata num_examples": info["num_examples"],
            "stored labels": len(info["labels"]),
            "TFDS split info": built.info.splits[split].num_examples,
            "readable records": readable,
        }
        if len(set(counts.values())) != 1 or sum(info["class_counts"]) > readable:
            raise DataError(f"{path}: split {split!r} is inconsistent: {counts}")


def load_build_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `spmix` metadata block of a built dataset (labels, counts, parameters, report)."""
    meta = _read_metadata(path)
    if meta is None:
        raise DataError(f"{path}: no metadata.json; not a dataset built by input_pipeline.build")
    return meta[base.METADATA_KEY]


def summary_table(meta: dict[str, Any]) -> str:
    """Class counts per split, then skipped items and warnings, as printable text."""
    names = meta["class_names"]
    splits = sorted(
        meta["splits"],
        key=lambda s: (_SPLIT_ORDER.index(s) if s in _SPLIT_ORDER else len(_SPLIT_ORDER), s),
    )
    width = max(8, *(len(n) for n in names))
    columns = [max(10, len(s) + 2) for s in splits]
    pairs = list(zip(splits, columns, strict=True))
    header = "class".ljust(width) + "".join(s.rjust(w) for s, w in pairs)
    lines = [header, "-" * len(header)]
    for k, name in enumerate(names):
        cells = []
        for s, w in pairs:
            info = meta["splits"][s]
            cells.append((str(info["class_counts"][k]) if info["has_labels"] else "-").rjust(w))
        lines.append(name.ljust(width) + "".join(cells))
    lines.append("-" * len(header))
    lines.append(
        "total".ljust(width)
        + "".join(str(meta["splits"][s]["num_examples"]).rjust(w) for s, w in pairs)
    )
    unlabelled = [s for s in splits if not meta["splits"][s]["has_labels"]]
    if unlabelled:
        lines.append(f"(no ground truth in {', '.join(unlabelled)}: stored with label -1)")
    report = meta["report"]
    if report["skipped"]:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(report["skipped_counts"].items()))
        lines.append(f"skipped {len(report['skipped'])} bad item(s) ({counts}):")
        lines.extend(
            f"  {p['file']}{', line ' + str(p['line']) if p['line'] else ''}: {p['message']}"
            for p in report["skipped"][:20]
        )
        if len(report["skipped"]) > 20:
            lines.append(f"  ... and {len(report['skipped']) - 20} more (see metadata.json)")
    else:
        lines.append("skipped: none")
    lines.append(f"re-encoded images: {report['reencoded']}")
    if report.get("turned_upright"):
        lines.append(f"turned upright (EXIF orientation): {report['turned_upright']}")
    lines.extend(f"warning: {w}" for w in report["warnings"])
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
FLAGS = flags.FLAGS
_FOLDER_ONLY = (
    "source",
    "csv",
    "metadata",
    "images",
    "class_names",
    "split_fractions",
    "short_side",
)
_ISIC_ONLY = ("manual_dir", "holdout_per_class")


def define_flags() -> None:
    """Defines the command-line flags (only when run as a program, so importing this module
    never clashes with other programs' flags)."""
    if "builder" in FLAGS:
        return
    flags.DEFINE_enum("builder", None, sorted(builders.BUILDERS), "Which dataset to build.")
    flags.DEFINE_string(
        "data_dir",
        None,
        "Output root; the dataset goes to <data_dir>/<builder>/<config>/1.0.0/.",
    )
    flags.DEFINE_string(
        "config",
        "",
        "Config name. folder_csv: any name for this build (default 'default'). isic2018: "
        "short256 (default), original, released, short<N>, released_original, "
        "released_short<N>. isic2019, pad_ufes20: short256 (default), original, short<N>, "
        "optionally with _seed<S>.",
    )
    flags.DEFINE_string(
        "source",
        None,
        "folder_csv: folder with the images (searched "
        "recursively) and, by default, labels.csv and metadata.csv.",
    )
    flags.DEFINE_string(
        "csv",
        "labels.csv",
        "folder_csv: label CSV, relative to --source or absolute. One-hot "
        "'image,MEL,NV,...' or 'image,label' (label = class name or index); an optional "
        "lesion_id column groups the split.",
    )
    flags.DEFINE_string(
        "metadata",
        "auto",
        "folder_csv: CSV with image_id (or image) and lesion_id columns, e.g. HAM10000's "
        "metadata.csv. 'auto': <source>/metadata.csv if present; 'none': no lesion ids (each "
        "image is its own group).",
    )
    flags.DEFINE_string(
        "images", "", "folder_csv: image folder relative to --source (default: all of --source)."
    )
    flags.DEFINE_list(
        "class_names",
        [],
        "folder_csv: class names in label order. Default: those the CSV names (the sorted "
        "labels of an image,label CSV, or the one-hot columns in order).",
    )
    flags.DEFINE_string(
        "split_fractions",
        ",".join(str(f) for f in folder_csv.DEFAULT_FRACTIONS),
        "folder_csv: fractions of train[,validation[,test]]; lesion-grouped, stratified by "
        "class. '1' keeps everything in train; a 0 leaves that split out; '0,0,1' keeps the "
        "whole folder as a test split (to evaluate a trained model on it).",
    )
    flags.DEFINE_integer(
        "seed",
        None,
        "folder_csv, isic2019, pad_ufes20: split seed (default 0). isic2018 released configs: "
        "hold-out seed (default 0).",
    )
    flags.DEFINE_integer(
        "short_side",
        0,
        "folder_csv: downscale images whose shorter side "
        "exceeds this to it (JPEG q95); 0 keeps the original bytes.",
    )
    flags.DEFINE_string(
        "manual_dir",
        None,
        "isic2018, isic2019, pad_ufes20: folder with the official downloads (zips or extracted "
        "folders).",
    )
    flags.DEFINE_integer(
        "holdout_per_class",
        None,
        "isic2018 released configs: images per class held out as validation (default 46).",
    )
    flags.DEFINE_bool(
        "skip_bad",
        False,
        "Leave bad items (corrupt images, bad rows, "
        "duplicates, missing files) out and count them in the report instead of "
        "stopping.",
    )
    flags.DEFINE_integer(
        "max_image_mb",
        image_files.DEFAULT_MAX_IMAGE_MB,
        "Largest image file read, in MiB; a bigger file (or one that is not a regular file: a "
        "named pipe, a device) is a bad item.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "storage",
        "jpeg",
        list(base.STORAGES),
        "jpeg: images as encoded files (the reader decodes and resizes each sample). raw: each "
        "image decoded once into its training frame (--frame_size x --frame_aspect) with its "
        "valid region, so the reader only copies; about frame pixels x 3 bytes an image, "
        "reported (and checked against the free disk) before writing.",
    )
    flags.DEFINE_integer(
        "frame_size",
        DEFAULT_FRAME_SIZE,
        "raw storage: short side of the stored frame; the data.image_size of the runs that "
        "read it (another size is framed anew from the stored pixels, slower).",
    )
    flags.DEFINE_float(
        "frame_aspect",
        DEFAULT_FRAME_ASPECT,
        "raw storage: long side / short side of the stored frame (data.image_aspect).",
    )
    flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset exists.")
    flags.DEFINE_integer(
        "num_threads", 0, "Threads for decoding/encoding (0: CPU count, at most 16)."
    )
    flags.mark_flags_as_required(["builder", "data_dir"])


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    name = FLAGS.builder
    wrong = [f for f in (_ISIC_ONLY if name == "folder_csv" else _FOLDER_ONLY) if FLAGS[f].present]
    if wrong:
        raise app.UsageError(f"--{', --'.join(wrong)} do(es) not apply to --builder={name}")
    if FLAGS.storage != "raw" and (FLAGS["frame_size"].present or FLAGS["frame_aspect"].present):
        raise app.UsageError("--frame_size / --frame_aspect apply to --storage=raw only")
    if name == "folder_csv" and not FLAGS.source:
        raise app.UsageError("--builder=folder_csv needs --source")
    if name in builders.MANUAL_DIR_BUILDERS and not FLAGS.manual_dir:
        raise app.UsageError(f"--builder={name} needs --manual_dir")
    kwargs: dict[str, Any] = dict(
        config=FLAGS.config,
        skip_bad=FLAGS.skip_bad,
        overwrite=FLAGS.overwrite,
        num_threads=FLAGS.num_threads,
        max_image_mb=FLAGS.max_image_mb,
        storage=FLAGS.storage,
        frame_size=FLAGS.frame_size,
        frame_aspect=FLAGS.frame_aspect,
    )
    if name == "folder_csv":
        kwargs.update(
            source=FLAGS.source,
            csv=FLAGS.csv,
            metadata=FLAGS.metadata,
            images=FLAGS.images,
            class_names=tuple(FLAGS.class_names),
            split_fractions=FLAGS.split_fractions,
            seed=FLAGS.seed,
            short_side=FLAGS.short_side,
        )
    else:
        released = (FLAGS.config or "").startswith("released")
        if name != "isic2018" and FLAGS.holdout_per_class is not None:
            raise app.UsageError(f"--holdout_per_class does not apply to --builder={name}")
        if (
            name == "isic2018"
            and not released
            and (FLAGS.seed is not None or FLAGS.holdout_per_class is not None)
        ):
            raise app.UsageError("--seed / --holdout_per_class apply to released configs only")
        kwargs.update(
            manual_dir=FLAGS.manual_dir,
            seed=FLAGS.seed,
            holdout_per_class=FLAGS.holdout_per_class,
        )
    try:
        path = build_dataset(name, FLAGS.data_dir, **kwargs)
    except ValueError as e:  # DataError / UserError, and the builders' checks of their options
        if command_line.verbose():
            raise
        sys.exit(f"error: {e}")
    meta = load_build_metadata(path)
    print(f"\nDataset at {path}\n")
    given = name == "folder_csv" and FLAGS["class_names"].present
    origin = "as given" if given else "as the data names them"
    print(f"Classes ({origin}, in label order): {', '.join(meta['class_names'])}\n")
    print(summary_table(meta))
    print(
        f"\nTrain with: --config.data.name={name} --config.data.data_dir={FLAGS.data_dir} "
        f"--config.data.builder_config={meta['config']}"
    )


def run() -> None:
    """Console-script entry point (`spmix-build-data`)."""
    define_flags()
    command_line.show_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
