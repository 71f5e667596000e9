"""Host input throughput: training pairs per second on real JPEGs, and where the time goes.

Reads the HAM10000 subset (a folder of JPEGs + the one-hot labels.csv) through a small
random-access source, or a built TFDS dataset with --tfds_dir, and runs the training iterator at
the model size with 0, 1 and 2 worker processes. Prints one JSON object: pairs/s per setting, the
same per busy core, and the split of one pair's serial host time into JPEG decode, resize and the
rest (file read, sampling, batching, grain). Usage:

    python benchmarks/input_pipeline.py [--data_dir DIR] [--image_size 224] [--batch 32]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from input_pipeline import host_images, pipeline  # noqa: E402
from input_pipeline.data_split import DataSplit  # noqa: E402

CLASS_NAMES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
DEFAULT_DIR = os.environ.get("SPMIX_HAM10000_DIR", "/work/shared/data/ham10000_subset")


class JpegFolderSource:
    """Random access to `images/<id>.jpg` with labels from a one-hot `labels.csv`."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        with open(self.root / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError(f"{self.root / 'labels.csv'} has no rows")
        self.image_ids = [row["image"] for row in rows]
        self.labels = np.array(
            [int(np.argmax([float(row[c]) for c in CLASS_NAMES])) for row in rows], np.int64
        )
        lesions: dict[str, str] = {}
        meta = self.root / "metadata.csv"
        if meta.exists():
            with open(meta, newline="") as f:
                lesions = {row["image_id"]: row["lesion_id"] for row in csv.DictReader(f)}
        self.lesion_ids = [lesions.get(i, i) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        return {
            "image": (self.root / "images" / f"{image_id}.jpg").read_bytes(),
            "label": int(self.labels[index]),
            "image_id": image_id,
            "lesion_id": self.lesion_ids[index],
        }


def make_jpegs(root: str | os.PathLike, count: int, hw: tuple[int, int] = (450, 600)) -> None:
    """Writes `count` lesion-like JPEGs of HAM10000's size (450 x 600) and a one-hot labels.csv.

    For machines without the data: 64 distinct images are drawn (`input_pipeline.synthetic`) and
    repeated under different names, which costs the decoder the same as distinct files.
    """
    from input_pipeline.synthetic import SyntheticSource

    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    source = SyntheticSource(max(count, 64), 150, 20.0, 0, "train")
    encoded = []
    for i in range(min(count, 64)):
        record = source[i]
        buf = io.BytesIO()
        Image.fromarray(record["image"]).resize((hw[1], hw[0]), Image.Resampling.BILINEAR).save(
            buf, format="JPEG", quality=90
        )
        encoded.append((buf.getvalue(), int(record["label"])))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *CLASS_NAMES])
        for i in range(count):
            data, label = encoded[i % len(encoded)]
            (root / "images" / f"SYN_{i:07d}.jpg").write_bytes(data)
            writer.writerow([f"SYN_{i:07d}", *(float(c == label) for c in range(len(CLASS_NAMES)))])


def upscale_jpegs(root: str | os.PathLike, source: str | os.PathLike, count: int) -> None:
    """Writes `count` 450 x 600 JPEGs (quality 90) upscaled (bicubic) from real images of
    `source` (a HAM10000-style folder with `images/` and a one-hot `labels.csv`), taken from the
    classes in turn, with their labels: full-size JPEGs with real lesion content where only a
    downscaled copy is at hand."""
    src = JpegFolderSource(source)
    root = pathlib.Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *CLASS_NAMES])
        by_class = [list(np.flatnonzero(src.labels == k)) for k in range(len(CLASS_NAMES))]
        order = [c[j] for j in range(len(src)) for c in by_class if j < len(c)]  # round robin
        for i in order[:count]:
            record = src[i]
            image = Image.open(io.BytesIO(record["image"])).convert("RGB")
            image.resize((600, 450), Image.Resampling.BICUBIC).save(
                root / "images" / f"{record['image_id']}.jpg", format="JPEG", quality=90
            )
            label = int(src.labels[i])
            writer.writerow(
                [record["image_id"], *(float(c == label) for c in range(len(CLASS_NAMES)))]
            )


def built_split(
    jpeg_dir: str, tfds_root: str, storage: str, image_size: int, image_aspect: float
) -> tuple[DataSplit, str]:
    """The train split of `jpeg_dir` built (folder_csv, all of it in train) with `storage`; a
    raw build stores the frame of `image_size` x `image_aspect`."""
    from configs.common import base_config
    from input_pipeline import build, sources

    with contextlib.redirect_stdout(sys.stderr):  # the build's report; stdout is the JSON
        path = build.build_dataset(
            "folder_csv",
            tfds_root,
            config=f"{storage}{image_size}",
            source=jpeg_dir,
            metadata="none",
            split_fractions="1",
            storage=storage,
            frame_size=image_size,
            frame_aspect=image_aspect,
        )
    cfg = base_config()
    cfg.data.name, cfg.data.data_dir = "tfds", path
    cfg.data.image_size = image_size
    return sources.get_split(cfg.data, "train"), path


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grain
    import PIL

    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "grain": getattr(grain, "__version__", "?"),
        "numpy": np.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _throughput(
    split: DataSplit,
    *,
    workers: int,
    read_threads: int,
    image_size: int,
    batch: int,
    batches: int,
    image_aspect: float = 1.0,
) -> dict[str, Any]:
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=batch,
        image_size=image_size,
        image_aspect=image_aspect,
        seed=0,
        balanced_q=1.0,
        primary="balanced",
        worker_count=workers,
        worker_buffer_size=2,
        process_index=0,
        process_count=1,
        read_threads=read_threads,
    )
    try:
        start = time.perf_counter()
        next(it)  # worker start-up and the first batch
        first = time.perf_counter() - start
        for _ in range(2):
            next(it)  # let the buffers fill
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        elapsed = time.perf_counter() - start
    finally:
        it.close()
    pairs_per_s = batches * batch / elapsed
    busy = min(os.cpu_count() or 1, max(1, workers))
    return {
        "workers": workers,
        "read_threads": read_threads,
        "pairs_per_s": round(pairs_per_s, 1),
        "pairs_per_s_per_core": round(pairs_per_s / busy, 1),
        "cores_assumed_busy": busy,
        "first_batch_s": round(first, 2),
        "batches_timed": batches,
    }


def _time_parts(
    split: DataSplit, image_size: int, pairs: int, image_aspect: float = 1.0
) -> dict[str, Any]:
    """Serial per-pair host time split into JPEG decode, resize and the rest.

    The whole pipeline (one thread, no prefetch) and the parts alone run in alternating rounds
    of one batch each, so that load from other processes weighs on both alike. Raw-pixel
    records (stored frames) have no decode or resize: only the whole is timed.
    """
    batch = 32
    rounds = max(1, pairs // batch)
    rng = np.random.default_rng(0)
    raw = "box" in split.source[0]
    it = pipeline.make_train_iterator(
        split,
        global_batch_size=batch,
        image_size=image_size,
        image_aspect=image_aspect,
        seed=1,
        balanced_q=1.0,
        primary="balanced",
        process_index=0,
        process_count=1,
        read_threads=0,
    )
    read = decode = resize = total = 0.0
    try:
        next(it)
        for _ in range(rounds):
            start = time.perf_counter()
            next(it)
            total += time.perf_counter() - start
            if raw:
                continue
            for i in rng.integers(0, len(split.source), size=2 * batch):
                t0 = time.perf_counter()
                record = split.source[int(i)]
                t1 = time.perf_counter()
                pixels = host_images.decode_image(record["image"], image_size, record["image_id"])
                t2 = time.perf_counter()
                host_images.resize_centre_square(pixels, image_size)  # includes the array copy
                t3 = time.perf_counter()
                read, decode, resize = read + t1 - t0, decode + t2 - t1, resize + t3 - t2
    finally:
        it.close()
    n = rounds * batch
    total, decode, resize, read = total / n, decode / n, resize / n, read / n
    rest = max(total - decode - resize, 0.0)
    return {
        "pair_ms_serial": round(total * 1e3, 3),
        "pairs_per_s_one_core": round(1.0 / total, 1),
        "decode_ms": round(decode * 1e3, 3),
        "resize_ms": round(resize * 1e3, 3),
        "rest_ms": round(rest * 1e3, 3),
        "of_which_file_read_ms": round(read * 1e3, 3),
        "decode_share": round(decode / total, 3),
        "resize_share": round(resize / total, 3),
        "rest_share": round(rest / total, 3),
        "pairs_timed": n,
    }


def _measure(
    split: DataSplit, args: argparse.Namespace, settings: list[tuple[int, int]]
) -> dict[str, Any]:
    """The serial per-pair split and the throughput per worker setting of one split."""
    return {
        "parts": _time_parts(split, args.image_size, args.parts_pairs, args.image_aspect),
        "throughput": [
            _throughput(
                split,
                workers=workers,
                read_threads=threads,
                image_size=args.image_size,
                batch=args.batch,
                batches=args.batches,
                image_aspect=args.image_aspect,
            )
            for workers, threads in settings
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir", default=DEFAULT_DIR, help="folder with images/*.jpg and labels.csv"
    )
    parser.add_argument(
        "--tfds_dir",
        default="",
        help="a built TFDS dataset directory, read through sources.get_split",
    )
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument(
        "--read_threads", default="1", help="decoding threads per process to try (comma-separated)"
    )
    parser.add_argument(
        "--parts_pairs", type=int, default=256, help="pairs timed for the decode/resize split"
    )
    parser.add_argument(
        "--make_jpegs",
        type=int,
        default=0,
        help="first write this many synthetic 450x600 JPEGs + labels.csv into --data_dir",
    )
    parser.add_argument(
        "--step_pairs_per_s",
        type=float,
        default=0.0,
        help="the train step's pairs/s (compare_step.py): reports the host cores it needs",
    )
    parser.add_argument(
        "--upscale_from",
        default="",
        help="first write --make_jpegs 450x600 JPEGs upscaled from this folder's real images "
        "(e.g. a downscaled HAM10000 copy) into --data_dir, instead of synthetic ones",
    )
    parser.add_argument(
        "--storages",
        default="",
        help="comma list of jpeg,raw: also build --data_dir with each storage (folder_csv, "
        "into --build_dir) and measure each built dataset the same way",
    )
    parser.add_argument("--build_dir", default="", help="TFDS root for --storages (default: temp)")
    parser.add_argument(
        "--image_aspect", type=float, default=1.0, help="training frame long side / short side"
    )
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    if args.make_jpegs and args.upscale_from:
        upscale_jpegs(args.data_dir, args.upscale_from, args.make_jpegs)
    elif args.make_jpegs:
        make_jpegs(args.data_dir, args.make_jpegs)

    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags
    if args.tfds_dir:
        from configs.common import base_config
        from input_pipeline import sources

        cfg = base_config()
        cfg.data.name = "tfds"
        cfg.data.data_dir = args.tfds_dir
        cfg.data.image_size = args.image_size
        split = sources.get_split(cfg.data, "train")
        dataset = args.tfds_dir
    else:
        source = JpegFolderSource(args.data_dir)
        split = DataSplit(
            source=source,
            class_counts=np.bincount(source.labels, minlength=len(CLASS_NAMES)),
            class_names=CLASS_NAMES,
            split="train",
            labels=source.labels,
        )
        dataset = args.data_dir
    settings = [
        (int(w), int(t)) for w in args.workers.split(",") for t in args.read_threads.split(",")
    ]
    probe = split.source[0]["image"]
    if isinstance(probe, bytes):
        source_shape = list(Image.open(io.BytesIO(probe)).size[::-1])
    else:
        source_shape = list(np.shape(probe))
    result = {
        "benchmark": "input_pipeline",
        "dataset": dataset,
        "examples": len(split.source),
        "source_image_hw": source_shape,
        "image_size": args.image_size,
        "batch": args.batch,
        "machine": _machine(),
        "image_aspect": args.image_aspect,
        **_measure(split, args, settings),
    }
    if args.storages:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="spmix_storages_") as scratch:
            result["storages"] = {}
            for storage in args.storages.split(","):
                built, path = built_split(
                    args.data_dir,
                    args.build_dir or scratch,
                    storage,
                    args.image_size,
                    args.image_aspect,
                )
                files = pathlib.Path(path).glob("*.array_record*")
                result["storages"][storage] = {
                    "dataset": path,
                    "stored_bytes": sum(f.stat().st_size for f in files),
                    **_measure(built, args, settings),
                }
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    if args.step_pairs_per_s > 0:
        per_core = result["parts"]["pairs_per_s_one_core"]
        need = args.step_pairs_per_s / per_core
        result["host_vs_step"] = {
            "step_pairs_per_s": args.step_pairs_per_s,
            "host_pairs_per_s_per_core": per_core,
            "host_cores_needed": round(need, 2),
            "host_keeps_up": bool(need <= result["machine"]["cpus_usable"]),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
