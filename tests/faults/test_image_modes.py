"""Every image mode PIL opens becomes the right 8-bit RGB (16-bit scaled, not clipped), or is
refused naming the file; checked against conversions written out here in numpy."""

import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from input_pipeline import host_images
from input_pipeline.builders import image_files
from input_pipeline.data_split import as_rgb_uint8

from . import helpers

RNG = np.random.default_rng(0)
H, W = 9, 11


def _gray(v: np.ndarray) -> np.ndarray:
    return np.repeat(v[:, :, None], 3, axis=2)


def _sixteen() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 65536, (H, W)).astype(np.uint16)
    v[0, :4] = (0, 1000, 32768, 65535)
    return Image.fromarray(v), _gray(np.round(v * (255 / 65535)).astype(np.uint8))


def _int32() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 65536, (H, W)).astype(np.int32)
    return Image.fromarray(v, "I"), _gray(np.round(v * (255 / 65535)).astype(np.uint8))


def _float() -> tuple[Image.Image, np.ndarray]:
    v = RNG.random((H, W)).astype(np.float32)
    return Image.fromarray(v, "F"), _gray(np.round(v.astype(np.float64) * 255).astype(np.uint8))


def _palette() -> tuple[Image.Image, np.ndarray]:
    palette = RNG.integers(0, 256, (256, 3)).astype(np.uint8)
    index = RNG.integers(0, 256, (H, W)).astype(np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.reshape(-1).tolist())
    return im, palette[index]


def _cmyk() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    c, k = v[..., :3].astype(np.float64), v[..., 3:].astype(np.float64)
    return Image.fromarray(v, "CMYK"), np.round((255 - c) * (255 - k) / 255).astype(np.uint8)


def _la() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 256, (H, W, 2)).astype(np.uint8)
    return Image.fromarray(v, "LA"), _gray(v[..., 0])


def _rgba() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 256, (H, W, 4)).astype(np.uint8)
    return Image.fromarray(v, "RGBA"), v[..., :3]


def _l() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 256, (H, W)).astype(np.uint8)
    return Image.fromarray(v, "L"), _gray(v)


def _bilevel() -> tuple[Image.Image, np.ndarray]:
    v = RNG.integers(0, 2, (H, W)).astype(bool)
    return Image.fromarray(v), _gray(v.astype(np.uint8) * 255)


CASES = {  # mode -> (maker, file format PIL keeps that mode in)
    "I;16": (_sixteen, "PNG"),
    "I": (_int32, "TIFF"),
    "F": (_float, "TIFF"),
    "P": (_palette, "PNG"),
    "CMYK": (_cmyk, "TIFF"),
    "LA": (_la, "PNG"),
    "RGBA": (_rgba, "PNG"),
    "L": (_l, "PNG"),
    "1": (_bilevel, "PNG"),
}


def _encode(im: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", list(CASES))
def test_mode_is_stored_and_read_as_reference_rgb(mode):
    maker, fmt = CASES[mode]
    im, expected = maker()
    data = _encode(im, fmt)
    with Image.open(io.BytesIO(data)) as reopened:
        assert reopened.mode == mode  # the file really is in this mode
    image_files.inspect_image(data)
    stored, changed = image_files.prepare_image(data)
    assert changed
    with Image.open(io.BytesIO(stored)) as out:
        got = np.asarray(out)
    tolerance = 1 if mode == "CMYK" else 0  # PIL's fixed-point division rounds its own way
    np.testing.assert_allclose(got.astype(int), expected.astype(int), atol=tolerance, rtol=0)
    # The reading side decodes raw bytes of other datasets the same way.
    decoded = np.asarray(host_images.decode_image(data, 64, "x"))
    np.testing.assert_allclose(decoded.astype(int), expected.astype(int), atol=tolerance, rtol=0)


def test_sixteen_bit_array_is_scaled():
    v = np.array([[0, 257, 32768, 65535]], np.uint16)
    np.testing.assert_array_equal(as_rgb_uint8(v)[0, :, 0], [0, 1, 128, 255])


def test_float_out_of_range_is_refused_naming_the_file(tmp_path):
    source = helpers.make_source(tmp_path / "src", per_class=2)
    bad = Image.fromarray(np.full((H, W), 7.5, np.float32), "F")
    bad.save(source / "images" / "img_3_1.tif")
    (source / "images" / "img_3_1.png").unlink()
    from input_pipeline.builders.csv_layout import DataError

    with pytest.raises(DataError, match=r"img_3_1\.tif.*outside \[0, 1\]"):
        helpers.build(source, tmp_path / "tfds")


def test_sixteen_bit_png_survives_a_build(tmp_path):
    """Today's build stores this image as all white."""
    source = helpers.make_source(tmp_path / "src", per_class=2)
    im, expected = _sixteen()
    im.save(source / "images" / "img_0_0.png")
    path = helpers.build(source, tmp_path / "tfds")
    builder = tfds.builder_from_directory(path)
    records = builder.as_data_source("train")
    record = next(records[i] for i in range(len(records)) if records[i]["image_id"] == b"img_0_0")
    np.testing.assert_array_equal(record["image"], expected)
