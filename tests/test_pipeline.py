"""grain train/eval iterators: contents, determinism across workers, resume, host sharding."""

import dataclasses
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from input_pipeline import host_images, iterator_state, pipeline, sampling, synthetic
from input_pipeline.data_split import DataSplit

SIZE = 16


def _split(num: int = 96, imbalance: float = 10.0, split: str = "train") -> DataSplit:
    source = synthetic.SyntheticSource(num, SIZE, imbalance, 0, split)
    return DataSplit(
        source=source,
        class_counts=source.class_counts,
        class_names=synthetic.CLASS_NAMES,
        split=split,
        labels=source.labels,
    )


def _train(split: DataSplit, **kw) -> pipeline.PairBatchIterator:
    args = dict(
        global_batch_size=8,
        image_size=SIZE,
        seed=5,
        balanced_q=1.0,
        primary="balanced",
        process_index=0,
        process_count=1,
    )
    args.update(kw)
    return pipeline.make_train_iterator(split, **args)


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _smooth_image(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            128 + 100 * np.sin(xx / 9.0),
            128 + 100 * np.cos(yy / 7.0),
            (xx + yy) / (height + width) * 255,
        ],
        -1,
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def _centre_square_reference(img: np.ndarray, size: int) -> np.ndarray:
    """OpenCV reference: crop the centre square, then area (down) / linear (up) resampling."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = img[top : top + s, left : left + s]
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


# --- image preparation ------------------------------------------------------------------------


def test_prepare_image_resizes_short_side_and_crops_centre():
    img = _smooth_image(150, 200)
    out = host_images.prepare_image(img, 64, "a")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    diff = np.abs(out.astype(np.float32) - _centre_square_reference(img, 64))
    assert diff.mean() < 0.75 and diff.max() < 6
    up = host_images.prepare_image(img, 224, "a")
    diff = np.abs(up.astype(np.float32) - _centre_square_reference(img, 224))
    assert diff.mean() < 0.75
    # Same size: returned untouched; grayscale and RGBA become RGB.
    square = _smooth_image(32, 32)
    np.testing.assert_array_equal(host_images.prepare_image(square, 32), square)
    gray = square[..., 0]
    np.testing.assert_array_equal(
        host_images.prepare_image(gray, 32), np.repeat(gray[..., None], 3, -1)
    )
    rgba = np.concatenate([square, np.full((32, 32, 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(host_images.prepare_image(rgba, 32), square)


def test_prepare_image_decodes_png_and_jpeg_bytes():
    img = _smooth_image(60, 90)
    png = io.BytesIO()
    Image.fromarray(img).save(png, format="PNG")
    # PNG is lossless: decoding the bytes gives exactly what the array gives.
    np.testing.assert_array_equal(
        host_images.prepare_image(png.getvalue(), 40, "p"), host_images.prepare_image(img, 40, "p")
    )
    jpg = io.BytesIO()
    Image.fromarray(img).save(jpg, format="JPEG", quality=95)
    decoded = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(jpg.getvalue(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    out = host_images.prepare_image(np.bytes_(jpg.getvalue()), 40, "j")
    assert np.abs(out.astype(np.float32) - _centre_square_reference(decoded, 40)).mean() < 2.0


def test_prepare_image_errors_name_the_image():
    with pytest.raises(ValueError, match="ISIC_bad"):
        host_images.prepare_image(b"\xff\xd8 not really a jpeg", 32, "ISIC_bad")
    with pytest.raises(ValueError, match="ISIC_f"):
        host_images.prepare_image(np.zeros((8, 8, 3), np.float32), 32, "ISIC_f")
    with pytest.raises(ValueError, match="ISIC_s"):
        host_images.prepare_image(np.zeros((8, 8, 2), np.uint8), 32, "ISIC_s")


def test_prepare_image_on_real_ham10000_jpeg(ham10000_dir):
    path = sorted((ham10000_dir / "images").glob("*.jpg"))[0]
    ref = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    for size in (64, 224):
        out = host_images.prepare_image(path.read_bytes(), size, path.stem)
        diff = np.abs(out.astype(np.float32) - _centre_square_reference(ref, size))
        assert out.shape == (size, size, 3) and diff.mean() < 3.0, (size, diff.mean())


# --- training frames: the whole image, a fixed shape, a valid box ------------------------------


def test_frame_keeps_a_landscape_image_whole():
    """600x450 (W x H) into a 256 x 341 frame: the whole image, resized once, no padding."""
    img = _smooth_image(450, 600)
    assert host_images.frame_shape(256, 4.0 / 3.0) == (256, 341)
    frame, box = host_images.resize_to_frame(img, 256, 341)
    assert frame.shape == (256, 341, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(box, [0, 0, 256, 341])
    # Scale 256 / 450 keeps the aspect exactly: 341 columns cover 599.4 of the 600 (0.3 each side).
    cover = 341 * 450 / 256
    box = ((600 - cover) / 2, 0, (600 + cover) / 2, 450)
    whole = np.asarray(Image.fromarray(img).resize((341, 256), Image.Resampling.BILINEAR, box=box))
    np.testing.assert_array_equal(frame, whole)
    # The old square crop would have lost a quarter of the width; the frame keeps both edges.
    np.testing.assert_allclose(frame[:, 0].mean(), whole[:, 0].mean(), atol=1)


def test_frame_pads_or_crops_to_one_shape_and_records_the_valid_box():
    # Wider than 4:3: short side to 256, the long side centre-cropped to 341, box = frame.
    wide, box = host_images.resize_to_frame(_smooth_image(300, 900), 256, 341)
    assert wide.shape == (256, 341, 3)
    np.testing.assert_array_equal(box, [0, 0, 256, 341])
    # Square: short side 256, width padded on both sides by repeating the edge columns.
    square, box = host_images.resize_to_frame(_smooth_image(300, 300), 256, 341)
    np.testing.assert_array_equal(box, [0, 42, 256, 256])
    assert square.shape == (256, 341, 3)
    np.testing.assert_array_equal(square[:, :42], np.repeat(square[:, 42:43], 42, axis=1))
    np.testing.assert_array_equal(square[:, 298:], np.repeat(square[:, 297:298], 43, axis=1))
    # Portrait: the short side (width) to 256, height centre-cropped to 256, width padded.
    tall, box = host_images.resize_to_frame(_smooth_image(400, 300), 256, 341)
    assert tall.shape == (256, 341, 3)
    np.testing.assert_array_equal(box, [0, 42, 256, 256])
    # A square frame is the centre square of `prepare_image`, box = the frame.
    img = _smooth_image(45, 60)
    framed, box = host_images.resize_to_frame(img, 32, 32)
    np.testing.assert_array_equal(framed, host_images.resize_centre_square(img, 32))
    np.testing.assert_array_equal(box, [0, 0, 32, 32])
    with pytest.raises(ValueError, match="image_aspect"):
        host_images.frame_shape(256, 0.75)


class _Frames:
    """A source of 60 x 45 (W x H) landscape images, the shape of HAM10000 / 10."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = _smooth_image(45, 60)
        img[..., 0] = (img[..., 0].astype(int) + 7 * i) % 256
        return {"image": img, "label": int(self.labels[i]), "image_id": f"im{i}"}


def test_train_batches_carry_whole_frames_and_their_boxes():
    labels = np.arange(32) % 7
    split = DataSplit(
        source=_Frames(labels),
        class_counts=np.bincount(labels, minlength=7),
        class_names=synthetic.CLASS_NAMES,
        split="train",
        labels=labels,
    )
    it = _train(split, image_aspect=4.0 / 3.0)
    batch = next(it)
    state = it.get_state()
    it.close()
    assert batch["primary_image"].shape == (8, SIZE, 21, 3)
    for who in ("primary", "secondary"):
        assert batch[f"{who}_box"].dtype == np.int32
        np.testing.assert_array_equal(batch[f"{who}_box"], np.tile([0, 0, SIZE, 21], (8, 1)))
        for slot in range(8):
            index = batch[f"{who}_index"][slot]
            want, _ = host_images.resize_to_frame(split.source[index]["image"], SIZE, 21)
            np.testing.assert_array_equal(batch[f"{who}_image"][slot], want)
    assert state["image_aspect"] == pytest.approx(4.0 / 3.0)
    # A state saved with square frames is refused.
    square = _train(split)
    with pytest.raises(ValueError, match="image_aspect"):
        square.set_state(state)
    square.close()


# --- training iterator ------------------------------------------------------------------------


def test_train_batches_hold_the_sampled_pairs():
    split = _split()
    it = _train(split)
    batches = _take(it, 2)
    it.close()
    sampler = sampling.PairSampler(split.labels, seed=5, balanced_q=1.0, num_classes=7)
    for step, batch in enumerate(batches):
        assert batch["primary_image"].shape == (8, SIZE, SIZE, 3)
        assert batch["primary_image"].dtype == np.uint8
        for key in ("primary_label", "secondary_label", "primary_index", "secondary_index"):
            assert batch[key].dtype == np.int32 and batch[key].shape == (8,)
        for slot in range(8):
            instance, balanced = sampler.pair(step * 8 + slot)
            assert batch["primary_index"][slot] == balanced  # 'balanced' is primary
            assert batch["secondary_index"][slot] == instance
            assert batch["primary_label"][slot] == split.labels[balanced]
            assert batch["secondary_label"][slot] == split.labels[instance]
            np.testing.assert_array_equal(
                batch["primary_image"][slot], split.source[balanced]["image"]
            )
            np.testing.assert_array_equal(
                batch["secondary_image"][slot], split.source[instance]["image"]
            )


def test_primary_instance_swaps_the_pair():
    split = _split()
    a, b = _train(split, primary="balanced"), _train(split, primary="instance")
    x, y = next(a), next(b)
    a.close()
    b.close()
    for part in ("image", "label", "index"):
        np.testing.assert_array_equal(x[f"primary_{part}"], y[f"secondary_{part}"])
        np.testing.assert_array_equal(x[f"secondary_{part}"], y[f"primary_{part}"])
    with pytest.raises(ValueError, match="primary"):
        _train(split, primary="tail")


def test_resume_from_state_continues_exactly():
    split = _split(num=40)  # 5 batches per epoch
    it = _train(split)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)  # crosses into the second epoch
    it.close()
    resumed = _train(split)
    resumed.set_state(state)
    _assert_same(_take(resumed, 4), expected)
    with pytest.raises(ValueError, match="seed"):
        resumed.set_state({**state, "seed": 6})
    with pytest.raises(ValueError, match="not a training iterator state"):
        resumed.set_state({"next_index": 3})
    resumed.close()


def test_workers_give_the_same_stream_and_a_portable_state():
    split = _split()
    serial = _train(split)
    expected = _take(serial, 5)
    serial.close()
    parallel = _train(split, worker_count=2, worker_buffer_size=1)
    try:
        _assert_same(_take(parallel, 3), expected[:3])
        state = parallel.get_state()
    finally:
        parallel.close()
    resumed = _train(split)  # a two-worker state resumes without workers
    resumed.set_state(state)
    _assert_same(_take(resumed, 2), expected[3:])
    resumed.close()


def test_orbax_checkpoint_round_trip(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    split = _split()
    it = _train(split)
    _take(it, 2)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(2, args=ocp.args.Composite(data=iterator_state.checkpoint_save_args(it)))
        manager.wait_until_finished()
    expected = _take(it, 2)
    it.close()
    fresh = _train(split)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(
            2, args=ocp.args.Composite(data=iterator_state.checkpoint_restore_args(fresh))
        )
    _assert_same(_take(fresh, 2), expected)
    fresh.close()


def test_hosts_share_each_epoch_disjointly_and_rebuild_the_global_batch():
    split = _split(num=96)
    steps = 96 // 8  # one epoch of instance samples
    single = _train(split)
    global_batches = _take(single, steps)
    single.close()
    hosts = [_train(split, process_index=h, process_count=2) for h in range(2)]
    per_host = [_take(it, steps) for it in hosts]
    for it in hosts:
        it.close()
    seen = [np.concatenate([b["secondary_index"] for b in batches]) for batches in per_host]
    assert all(s.size == 48 for s in seen)
    assert not set(seen[0]) & set(seen[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(96))
    # Host batches laid side by side are the single-host global batch.
    for step in range(steps):
        for key in global_batches[step]:
            np.testing.assert_array_equal(
                np.concatenate([per_host[0][step][key], per_host[1][step][key]]),
                global_batches[step][key],
                err_msg=key,
            )


def test_host_batch_size():
    assert pipeline.host_batch_size(32, 4) == 8
    with pytest.raises(ValueError, match="not divisible"):
        pipeline.host_batch_size(30, 4)
    with pytest.raises(ValueError, match="process_count"):
        pipeline.host_batch_size(8, 0)
    with pytest.raises(ValueError, match="both"):
        _train(_split(), process_index=0, process_count=None)
    with pytest.raises(ValueError, match="out of range"):
        _train(_split(), process_index=2, process_count=2)


def test_record_label_must_match_split_labels():
    split = _split()
    wrong = dataclasses.replace(split, labels=(split.labels + 1) % 7)
    it = _train(wrong)
    with pytest.raises(ValueError, match="label"):
        next(it)
    it.close()


# --- evaluation iterator ----------------------------------------------------------------------


def test_eval_covers_each_example_once_with_padding():
    split = _split(num=37, imbalance=1.0, split="validation")
    batches = list(
        pipeline.make_eval_iterator(
            split, global_batch_size=8, image_size=SIZE, process_index=0, process_count=1
        )
    )
    assert len(batches) == pipeline.num_eval_batches(37, 8) == 5
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.dtype == np.bool_ and mask.sum() == 37
    np.testing.assert_array_equal(index[mask], np.arange(37))
    assert np.all(index[~mask] == -1) and not mask[37:].any()
    last = batches[-1]
    assert np.all(last["image"][~last["mask"]] == 0)
    for b in batches:
        assert b["image"].dtype == np.uint8 and b["label"].dtype == np.int32
        assert b["index"].dtype == np.int32
        for slot in np.flatnonzero(b["mask"]):
            i = b["index"][slot]
            assert b["label"][slot] == split.labels[i]
            np.testing.assert_array_equal(b["image"][slot], split.source[i]["image"])


def test_eval_hosts_have_equal_batch_counts_and_disjoint_shards():
    split = _split(num=37, imbalance=1.0, split="validation")
    hosts = [
        list(
            pipeline.make_eval_iterator(
                split, global_batch_size=8, image_size=SIZE, process_index=h, process_count=2
            )
        )
        for h in range(2)
    ]
    assert len(hosts[0]) == len(hosts[1]) == 5
    shards = [np.concatenate([b["index"][b["mask"]] for b in batches]) for batches in hosts]
    assert not set(shards[0]) & set(shards[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(37))
    assert all(b["image"].shape == (4, SIZE, SIZE, 3) for b in hosts[0])


def test_unlabelled_split_evaluates_but_does_not_train():
    split = _split(num=10, imbalance=1.0, split="test")

    class Unlabelled:
        def __len__(self):
            return len(split.source)

        def __getitem__(self, i):
            return {**split.source[i], "label": -1}

    unlabelled = dataclasses.replace(split, source=Unlabelled(), labels=np.full(10, -1))
    with pytest.raises(ValueError, match="without ground truth"):
        _train(unlabelled)
    batches = list(
        pipeline.make_eval_iterator(
            unlabelled, global_batch_size=4, image_size=SIZE, process_index=0, process_count=1
        )
    )
    labels = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 10 and np.all(labels[mask] == -1)
