"""Reading images and label maps: every bit depth and mode decoded exactly, or refused by name.

`read_image_checked` is the project's one image reader (dataset mappers, overlays, the demo, the
tagging tool, the offline degradation engine). It returns what detectron2's ``read_image`` returns
for ordinary 8-bit files (same bytes: Pillow decodes, EXIF orientation is applied, then the image is
converted to the requested format) and decodes the files on which Pillow's plain ``convert("RGB")``
gives a wrong image:

============================  ==========================================================
file                          8-bit RGB result
============================  ==========================================================
8-bit RGB / gray / 1-bit      as detectron2 (gray replicated to the three channels)
16-bit gray (I;16, I;16B, I)  ``round(v * 255 / 65535)`` = ``(v + 128) // 257``, replicated
16-bit RGB(A), gray+alpha     decoded by OpenCV (``IMREAD_UNCHANGED``), then the same rounding
palette (P, PA), with or      the palette's colours
without transparency
gray+alpha (LA), RGBA         the colour channels; alpha is dropped (colours kept as stored,
                              not blended over a background), as detectron2 does for RGBA
CMYK (e.g. CMYK JPEG)         Pillow's CMYK -> RGB conversion (no colour management), as before
float (F) or 32-bit integer   refused: no defined white level (convert to 8 or 16 bits)
============================  ==========================================================

The rounding maps an 8-bit image stored as 16 bits (``u * 257``) back to exactly ``u``. Multi-frame
files (GIF, APNG, TIFF pages) give their first frame; embedded colour profiles are not applied
(as detectron2). Errors are `DataFileError` (a `UserError` and a `ValueError`). Label maps
(`load_label`) are read as their values, never scaled; a value that the requested integer type
cannot hold is refused by name instead of wrapping around.
"""
from __future__ import annotations

import io
from typing import Iterable, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image

from rass.utils.errors import UserError

__all__ = [
    "DataFileError", "decode_rgb", "read_image_checked", "sixteen_to_eight", "load_label", "read_label_checked", "check_labels",
]


class DataFileError(UserError, ValueError):
    """An image or label file that cannot be read as what it should be (named in the message)."""


# EXIF orientation tag (274) -> the transposition that shows the image upright (the EXIF standard).
_EXIF_ORIENTATION = 274
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_VIA_RGBA = ("P", "PA", "RGBa", "La")  # palette transparency / premultiplied alpha: go through RGBA
_VIA_RGB = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV")


def _rawmodes(im: Image.Image) -> List[str]:
    """The decoder raw modes of a not yet loaded image (e.g. "RGB;16B" for a 16-bit RGB PNG)."""
    modes = []
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)
        if isinstance(raw, str):
            modes.append(raw)
    return modes


def _orientation(im: Image.Image) -> Optional[Image.Transpose]:
    try:
        exif = im.getexif()
    except Exception:  # broken EXIF blocks are ignored, as detectron2 does
        return None
    return _TRANSPOSE.get(exif.get(_EXIF_ORIENTATION)) if exif is not None else None


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """16-bit samples -> 8-bit by exact rounding of ``v * 255 / 65535`` (= ``(v + 128) // 257``).

    Args:
        values: integer array with values in 0..65535.
    """
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _decode_high_depth(data: bytes, im: Image.Image, path: str) -> np.ndarray:
    """16-bit-per-sample colour / gray+alpha files, which Pillow truncates to their high byte."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape[:2] != (im.height, im.width):
        raise DataFileError(f"Cannot decode the 16-bit {im.mode} image {path} exactly (OpenCV could not read it)",
                            hint="save it as an 8-bit or 16-bit PNG")
    if arr.dtype == np.uint16:
        arr = sixteen_to_eight(arr)
    elif arr.dtype != np.uint8:
        raise DataFileError(f"Image {path}: unsupported sample type {arr.dtype} (expected 8 or 16 bits)")
    if arr.ndim == 2:
        return _gray_to_rgb(arr)
    if arr.shape[2] == 2:  # gray + alpha
        return _gray_to_rgb(arr[:, :, 0])
    return np.ascontiguousarray(arr[:, :, 2::-1])  # BGR(A) -> RGB


def _refuse(path: str, what: str) -> DataFileError:
    return DataFileError(f"Image {path} is {what}: it has no defined white level, so it is not read",
                         hint="convert it to an 8-bit or 16-bit integer image (e.g. PNG)")


def _decode_opened(im: Image.Image, raw: List[str], data: bytes, path: str) -> np.ndarray:
    mode = im.mode
    if mode in ("RGB", "RGBA", "RGBX", "LA") and any(";16" in r for r in raw):
        return _decode_high_depth(data, im, path)
    if mode in _GRAY16_MODES:
        return _gray_to_rgb(sixteen_to_eight(np.asarray(im)))
    if mode == "I":
        if raw and all(r.startswith("I;16") for r in raw):  # e.g. 16-bit PGM
            values = np.asarray(im)
            if values.min() < 0 or values.max() > 65535:
                raise DataFileError(f"Image {path}: 16-bit samples outside 0..65535")
            return _gray_to_rgb(sixteen_to_eight(values))
        raise _refuse(path, "a 32-bit integer image (Pillow mode 'I')")
    if mode.startswith("F") or mode.startswith("I;32") or mode == "I;16S":
        raise _refuse(path, f"a floating-point or signed image (Pillow mode {mode!r})")
    if mode in _VIA_RGBA:
        return np.ascontiguousarray(np.asarray(im.convert("RGBA"))[:, :, :3])
    if mode in _VIA_RGB:
        return np.asarray(im.convert("RGB"))
    raise DataFileError(f"Image {path} has the unsupported mode {mode!r}",
                        hint="convert it to an 8-bit or 16-bit RGB or grayscale PNG/JPEG")


def decode_rgb(path: str) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, upright (EXIF orientation applied).

    Args:
        path: image file (any path `detectron2.utils.file_io.PathManager` opens).

    Raises:
        FileNotFoundError: the file does not exist.
        DataFileError (a ValueError): the file cannot be decoded, or only into a wrong image
            (float or 32-bit samples, unknown modes); the message names the file.
    """
    with PathManager.open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = _rawmodes(im)  # before anything loads the pixels (getexif may)
            method = _orientation(im)
            rgb = _decode_opened(im, raw, data, path)
    except DataFileError:
        raise
    except Exception as e:  # Pillow raises several types for broken or unknown files
        raise DataFileError(f"Cannot decode image {path}: {type(e).__name__}: {e}") from e
    if method is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(method))
    return rgb


def read_image_checked(path: str, image_format: str = "RGB") -> np.ndarray:
    """Read an image in a detectron2 format (see the module docstring for what is decoded how).

    Args:
        path: image file.
        image_format: detectron2 format ("RGB", "BGR", "L", "YUV-BT.601", ...); an 8-bit RGB file
            gives the same array as ``detectron2.data.detection_utils.read_image``.

    Returns:
        H x W x C array (uint8 except for "YUV-BT.601", as detectron2).
    """
    rgb = decode_rgb(path)
    if image_format == "RGB":
        return rgb
    return convert_PIL_to_numpy(Image.fromarray(rgb), image_format)


def load_label(path: str, dtype=np.int64) -> np.ndarray:
    """Read a single-channel label image as an H x W array of its values (never rescaled).

    8-bit, palette (the indices) and 16-bit label PNGs are read as stored; a value that `dtype`
    cannot hold (e.g. 300 in a 16-bit PNG read as uint8) is refused, not wrapped around.

    Args:
        path: label file.
        dtype: integer output dtype.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise DataFileError(f"Cannot decode label image {path}: {type(e).__name__}: {e}") from e
    if arr.ndim != 2:
        raise DataFileError(f"Label image {path} must be single-channel (H x W), got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise DataFileError(f"Label image {path} has {arr.dtype} values; labels must be integers")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        values = np.unique(arr)
        bad = values[(values < info.min) | (values > info.max)]
        raise DataFileError(
            f"Label image {path} has values {_few(bad)} that do not fit {np.dtype(dtype).name} "
            f"({info.min}..{info.max})",
            hint="class ids must be 0..num_classes-1 or the ignore label",
        )
    return arr.astype(dtype)


def _few(values: Iterable, n: int = 10) -> str:
    values = [int(v) for v in values]
    return str(values[:n])[:-1] + (f", ... ({len(values)} values)]" if len(values) > n else "]")


def read_label_checked(path: str, image_hw: Tuple[int, int], image_path: str = "") -> np.ndarray:
    """Read an 8-bit-range label map (uint8) and check that its size equals the image's.

    Args:
        path: label file.
        image_hw: (height, width) of the image it annotates.
        image_path: the image file, for the error message.
    """
    label = load_label(path, np.uint8)
    if label.shape != tuple(image_hw):
        raise DataFileError(
            f"Annotation {path} has size {label.shape[1]}x{label.shape[0]} (WxH) but image "
            f"{image_path or '?'} has size {image_hw[1]}x{image_hw[0]} (WxH)"
        )
    return label


def check_labels(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
    """Raise `DataFileError` naming `path` and the offending values unless every value is a class
    id in ``0..num_classes-1`` or `ignore_label`.
    """
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        raise DataFileError(
            f"Label file {path} has values {bad.tolist()} outside 0..{num_classes - 1} and {ignore_label} "
            f"(official ADE20K annotations must be converted with datasets/prepare_ade20k_sem_seg.py)"
        )
