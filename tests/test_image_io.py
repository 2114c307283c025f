"""The one image reader (rass.utils.image_io): every bit depth and mode gives the right
8-bit RGB image or a refusal naming the file; label maps are read as their values."""
import os
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import detection_utils as d2_utils
from PIL import Image

from rass.data.dataset_mappers import SemanticDatasetMapper
from rass.utils.image_io import (
    DataFileError,
    load_label,
    read_image_checked,
    read_label_checked,
    sixteen_to_eight,
)
from rass.utils.errors import UserError
from tests.conftest import REPO, load_script

RNG = np.random.default_rng(7)
U8_RGB = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
U8_GRAY = RNG.integers(0, 256, (9, 13), dtype=np.uint8)


def _expected8(v16: np.ndarray) -> np.ndarray:
    """The closed form: round(v * 255 / 65535) (no ties exist, 257 being odd)."""
    return np.rint(v16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)


def _png(path, arr: np.ndarray, color_type: int, bit_depth: int, exif: bytes = b"", width: int = 0) -> str:
    """Write a PNG by hand (any colour type / bit depth Pillow cannot write), optionally with eXIf.
    For bit depths below 8, `arr` holds the packed row bytes and `width` the width in pixels."""
    h, w = arr.shape[0], width or arr.shape[1]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = arr.astype(">u2").reshape(h, -1).view(np.uint8) if bit_depth == 16 else arr.reshape(h, -1).astype(np.uint8)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + (chunk(b"eXIf", exif) if exif else b"")
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return str(path)


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[274] = orientation
    return exif


def _gray3(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


# ------------------------------------------------------------------ 8-bit files: unchanged behaviour
@pytest.mark.parametrize("orientation", range(1, 9))
def test_8bit_rgb_is_byte_identical_to_detectron2_including_exif_orientation(tmp_path, orientation):
    path = str(tmp_path / "a.jpg")
    Image.fromarray(U8_RGB).save(path, quality=90, exif=_exif(orientation))
    ours = read_image_checked(path, "RGB")
    ref = d2_utils.read_image(path, format="RGB")
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref)
    if orientation in (5, 6, 7, 8):  # the transposing ones
        assert ours.shape[:2] == (13, 9)
    np.testing.assert_array_equal(read_image_checked(path, "BGR"), d2_utils.read_image(path, format="BGR"))


def test_8bit_png_gray_1bit_and_4bit(tmp_path):
    p = str(tmp_path / "g.png")
    Image.fromarray(U8_GRAY).save(p)
    np.testing.assert_array_equal(read_image_checked(p), _gray3(U8_GRAY))
    bits = U8_GRAY > 127
    Image.fromarray(bits).save(p)  # mode "1"
    np.testing.assert_array_equal(read_image_checked(p), _gray3(bits.astype(np.uint8) * 255))
    g4 = U8_GRAY // 16
    padded = np.concatenate([g4, np.zeros((9, 1), np.uint8)], 1)  # two samples per byte: 13 -> 14
    _png(p, padded[:, 0::2] * 16 + padded[:, 1::2], color_type=0, bit_depth=4, width=13)
    np.testing.assert_array_equal(read_image_checked(p), _gray3(g4 * 17))  # 4 bits scale by 255 / 15


# ------------------------------------------------------------------ 16-bit gray
def test_16bit_gray_made_from_8bit_gives_the_8bit_image_back(tmp_path):
    p = str(tmp_path / "g16.png")
    Image.fromarray(U8_GRAY.astype(np.uint16) * 257).save(p)
    with Image.open(p) as im:
        assert im.mode == "I;16"
    out = read_image_checked(p)
    np.testing.assert_array_equal(out, _gray3(U8_GRAY))  # was all white with Pillow's convert("RGB")


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_gray_any_value_rounds_exactly(tmp_path, mode):
    v = RNG.integers(0, 65536, (9, 13)).astype(np.uint16)
    v[0, :4] = [0, 128, 129, 65535]  # 128 -> 0 and 129 -> 1 (128.5 / 257 is the rounding edge)
    p = str(tmp_path / "g16.tif")
    data = v.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
    Image.frombytes(mode, (13, 9), data).save(p)  # (Pillow's convert() to I;16B clips at 255)
    with Image.open(p) as im:
        assert im.mode == mode
    out = read_image_checked(p)
    np.testing.assert_array_equal(out, _gray3(_expected8(v)))
    assert out[0, :4, 0].tolist() == [0, 0, 1, 255]


def test_16bit_pgm_opened_in_mode_I(tmp_path):
    v = RNG.integers(0, 65536, (9, 13)).astype(np.uint16)
    p = tmp_path / "g.pgm"
    p.write_bytes(b"P5\n13 9\n65535\n" + v.astype(">u2").tobytes())
    with Image.open(p) as im:
        assert im.mode in ("I", "I;16B", "I;16")
    np.testing.assert_array_equal(read_image_checked(str(p)), _gray3(_expected8(v)))


def test_sixteen_to_eight_closed_form():
    v = np.arange(65536, dtype=np.uint32)
    np.testing.assert_array_equal(sixteen_to_eight(v), _expected8(v))
    np.testing.assert_array_equal(sixteen_to_eight(np.arange(256) * 257), np.arange(256))


# ------------------------------------------------------------------ 16-bit colour / gray+alpha
def test_16bit_rgb_png_gives_the_rounded_rgb(tmp_path):
    v = RNG.integers(0, 65536, (9, 13, 3)).astype(np.uint16)
    p = str(tmp_path / "c16.png")
    assert cv2.imwrite(p, v[:, :, ::-1])
    assert not np.array_equal(np.asarray(Image.open(p).convert("RGB")), _expected8(v))  # Pillow truncates
    np.testing.assert_array_equal(read_image_checked(p), _expected8(v))
    np.testing.assert_array_equal(read_image_checked(p, "BGR"), _expected8(v)[:, :, ::-1])


def test_16bit_rgb_from_8bit_and_16bit_rgba_and_tiff(tmp_path):
    v = U8_RGB.astype(np.uint16) * 257
    rgba = np.concatenate([v, RNG.integers(0, 65536, (9, 13, 1)).astype(np.uint16)], axis=2)
    any16 = RNG.integers(0, 65536, (9, 13, 3)).astype(np.uint16)
    png, tif = str(tmp_path / "c.png"), str(tmp_path / "c.tif")
    assert cv2.imwrite(png, rgba[:, :, [2, 1, 0, 3]]) and cv2.imwrite(tif, any16[:, :, ::-1])
    np.testing.assert_array_equal(read_image_checked(png), U8_RGB)  # alpha dropped, colours kept
    np.testing.assert_array_equal(read_image_checked(tif), _expected8(any16))


def test_16bit_gray_alpha_png_gives_the_gray(tmp_path):
    v = RNG.integers(0, 65536, (9, 13)).astype(np.uint16)
    alpha = RNG.integers(0, 65536, (9, 13)).astype(np.uint16)
    p = _png(tmp_path / "la16.png", np.stack([v, alpha], axis=2), color_type=4, bit_depth=16)
    np.testing.assert_array_equal(read_image_checked(p), _gray3(_expected8(v)))


def test_16bit_rgb_png_with_exif_orientation_is_turned_upright(tmp_path):
    v = RNG.integers(0, 65536, (9, 13, 3)).astype(np.uint16)
    p = _png(tmp_path / "o.png", v, color_type=2, bit_depth=16, exif=_exif(6).tobytes())
    out = read_image_checked(p)
    # orientation 6: the stored image is shown rotated 90 degrees clockwise
    np.testing.assert_array_equal(out, np.rot90(_expected8(v), k=-1))


# ------------------------------------------------------------------ palette, alpha, CMYK
@pytest.mark.parametrize("transparency", [None, "index", "table"])
def test_palette_gives_its_colours(tmp_path, transparency):
    palette = RNG.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = RNG.integers(0, 16, (9, 13), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.reshape(-1).tolist())
    kwargs = {"index": {"transparency": 3}, "table": {"transparency": bytes(range(0, 256, 16))}}.get(transparency, {})
    p = str(tmp_path / "p.png")
    im.save(p, **kwargs)
    with Image.open(p) as check:
        assert check.mode == "P" and (transparency is None) == ("transparency" not in check.info)
    np.testing.assert_array_equal(read_image_checked(p), palette[idx])


def test_gray_alpha_gives_the_gray_and_rgba_the_colours(tmp_path):
    la, rgba = str(tmp_path / "la.png"), str(tmp_path / "rgba.png")
    Image.fromarray(np.stack([U8_GRAY, 255 - U8_GRAY], 2), "LA").save(la)
    Image.fromarray(np.concatenate([U8_RGB, U8_GRAY[:, :, None]], 2), "RGBA").save(rgba)
    np.testing.assert_array_equal(read_image_checked(la), _gray3(U8_GRAY))
    np.testing.assert_array_equal(read_image_checked(rgba), U8_RGB)


def test_cmyk_jpeg(tmp_path):
    flat = np.zeros((16, 16, 3), np.uint8)
    flat[:8], flat[8:] = (200, 40, 90), (10, 230, 120)
    p = str(tmp_path / "cmyk.jpg")
    Image.fromarray(flat).convert("CMYK").save(p, quality=100)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    out = read_image_checked(p)
    assert np.abs(out.astype(int) - flat).max() <= 2  # JPEG round trip of flat colours
    np.testing.assert_array_equal(out, d2_utils.read_image(p, format="RGB"))


# ------------------------------------------------------------------ refusals
def test_float_and_32bit_images_are_refused_by_name(tmp_path):
    f, i = str(tmp_path / "depth_float.tif"), str(tmp_path / "counts_int32.tif")
    Image.fromarray(RNG.random((9, 13)).astype(np.float32)).save(f)
    Image.fromarray(RNG.integers(0, 2**20, (9, 13)).astype(np.int32)).save(i)
    for path, what in ((f, "floating-point"), (i, "32-bit integer")):
        with pytest.raises(DataFileError, match=rf"{os.path.basename(path)}.*{what}") as e:
            read_image_checked(path)
        assert isinstance(e.value, ValueError) and isinstance(e.value, UserError) and e.value.hint


def test_broken_and_missing_files(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataFileError, match=r"Cannot decode image .*broken\.png"):
        read_image_checked(str(bad))
    with pytest.raises(FileNotFoundError):
        read_image_checked(str(tmp_path / "absent.png"))


# ------------------------------------------------------------------ label maps
def test_16bit_label_reads_values_unscaled_and_rejects_large_values(tmp_path):
    lab = RNG.integers(0, 150, (9, 13)).astype(np.uint16)
    lab[0, 0] = 255
    p = str(tmp_path / "lab16.png")
    Image.fromarray(lab).save(p)
    np.testing.assert_array_equal(read_label_checked(p, (9, 13)), lab.astype(np.uint8))
    np.testing.assert_array_equal(load_label(p), lab.astype(np.int64))
    lab[1, 1], lab[2, 2] = 300, 65535
    Image.fromarray(lab).save(p)
    with pytest.raises(DataFileError, match=r"lab16\.png has values \[300, 65535\] that do not fit uint8"):
        read_label_checked(p, (9, 13))
    assert load_label(p)[1, 1] == 300  # int64 holds them: the evaluator's check_labels names them


def test_palette_label_reads_indices_and_float_label_is_refused(tmp_path):
    idx = RNG.integers(0, 150, (9, 13), dtype=np.uint8)
    p = str(tmp_path / "pal.png")
    im = Image.fromarray(idx, "P")
    im.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tolist())
    im.save(p)
    np.testing.assert_array_equal(load_label(p, np.uint8), idx)
    f = str(tmp_path / "lab.tif")
    Image.fromarray(idx.astype(np.float32)).save(f)
    with pytest.raises(DataFileError, match=r"lab\.tif has float32 values"):
        load_label(f)


# ------------------------------------------------------------------ the callers use the reader
def test_mapper_decodes_a_16bit_gray_image(tmp_path):
    img, lab = str(tmp_path / "g16.png"), str(tmp_path / "g16_label.png")
    Image.fromarray(U8_GRAY.astype(np.uint16) * 257).save(img)
    Image.fromarray(np.zeros((9, 13), np.uint8)).save(lab)
    mapper = SemanticDatasetMapper(is_train=True, augmentations=[], image_format="RGB", ignore_label=255,
                                   num_classes=150)
    out = mapper({"file_name": img, "sem_seg_file_name": lab})
    assert torch.equal(out["image"], torch.from_numpy(_gray3(U8_GRAY)).permute(2, 0, 1))


class _RecordingPredictor:
    """Stands in for SemanticPredictor: records the image it is given."""

    class_names = ["a", "b"]
    colors = [[0, 0, 0], [255, 255, 255]]

    def __init__(self):
        self.images = []

    def __call__(self, image):
        self.images.append(image)
        return {"labels": torch.zeros(image.shape[:2], dtype=torch.int64)}


def _load_module(name, path):
    return load_script(os.path.relpath(path, REPO), name)


def test_demo_and_tagging_tool_decode_a_16bit_rgb_image(tmp_path, monkeypatch):
    v = RNG.integers(0, 65536, (9, 13, 3)).astype(np.uint16)
    p = str(tmp_path / "c16.png")
    cv2.imwrite(p, v[:, :, ::-1])
    demo = _load_module("rass_demo_io", os.path.join(REPO, "demo", "demo.py"))
    pred = _RecordingPredictor()
    monkeypatch.setattr("rass.engine.SemanticPredictor", lambda cfg: pred)  # no model: only what it is given
    cfg = os.path.join(REPO, "configs", "quickstart", "tiny_rass.yaml")
    assert demo.main(["--config-file", cfg, "--input", p]) == 0
    np.testing.assert_array_equal(pred.images[0], _expected8(v))
    sys.path.insert(0, os.path.join(REPO, "tools"))
    try:
        tag_images = _load_module("rass_tag_images_io", os.path.join(REPO, "tools", "tag_images.py"))
    finally:
        sys.path.pop(0)
    expected = torch.from_numpy(_expected8(v).astype(np.float32) / 255.0).permute(2, 0, 1)
    assert torch.equal(tag_images.read_rgb(p), expected)
