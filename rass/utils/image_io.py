"""Reading images and label maps: every bit depth and mode decoded exactly, or refused by name.

`read_image_checked` is the project's one image reader (dataset mappers, overlays, the demo, the
tagging tool, the offline degradation engine). It returns what detectron2's ``read_image`` returns
for ordinary 8-bit files (same bytes: Pillow decodes, EXIF orientation is applied, then the image is
converted to the requested format) and decodes the files on which Pillow's plain ``convert("RGB")``
gives a wrong image. ``apply_exif=False`` keeps the stored pixel order instead (for labelled images
whose labels follow the stored pixels, INPUT.LABELLED_EXIF "ignore"); `exif_orientation` reads the
tag from the file's header only.

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
(as detectron2). Errors are `DataFileError` (a `UserError` and a `ValueError`; a missing file:
`DataFileNotFoundError`, also a `FileNotFoundError`), with a hint. Label maps
(`load_label`) are read as their values, never scaled; a value that the requested integer type
cannot hold is refused by name instead of wrapping around.
"""
from __future__ import annotations

import io
import struct
from typing import Iterable, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager
from PIL import Image

from rass.utils.choices import EXIF_POLICIES  # ("apply" / "ignore"; light, the command-line parsers offer it)
from rass.utils.errors import UserError, UserFileNotFoundError

__all__ = [
    "DataFileError", "DataFileNotFoundError", "decode_rgb", "read_image_checked", "sixteen_to_eight", "load_label",
    "read_label_checked", "check_labels", "exif_orientation", "exif_note", "orientation_name", "EXIF_POLICIES", "DAMAGED_FILE_HINT",
]

DAMAGED_FILE_HINT = ("the file is damaged (e.g. truncated by an interrupted copy) or not an image: copy it again or "
                     "remove it together with its annotation; `tools/check_dataset.py --dataset NAME` lists every "
                     "unreadable file and size mismatch of a registered dataset")
MISSING_FILE_HINT = ("the dataset's file list is read when the run starts: was the file moved or deleted since? "
                     "`tools/check_dataset.py --dataset NAME` lists every missing or unreadable file")


class DataFileError(UserError, ValueError):
    """An image or label file that cannot be read as what it should be (named in the message)."""


class DataFileNotFoundError(UserFileNotFoundError):
    """An image or label file of a dataset that does not exist (named in the message)."""


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


# What each EXIF orientation asks a viewer to do (the EXIF standard).
_ORIENTATION_NAMES = {
    2: "mirrored left-right", 3: "rotated 180°", 4: "mirrored top-bottom", 5: "transposed",
    6: "rotated 90° clockwise", 7: "transversed", 8: "rotated 90° counter-clockwise",
}


def _png_exif(f) -> Optional[bytes]:
    """The eXIf chunk of a PNG file (read chunk headers only, skipping the pixel data)."""
    f.seek(8)
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind == b"eXIf":
            return f.read(length)
        if kind == b"IEND":
            return None
        f.seek(length + 4, io.SEEK_CUR)  # data + CRC


def exif_orientation(path: str) -> int:
    """The EXIF orientation (1..8) of an image file, read from its header (1: none, or unreadable).

    The same tag `decode_rgb` applies (a broken EXIF block counts as none, as detectron2 does).

    Args:
        path: image file.
    """
    try:
        with PathManager.open(path, "rb") as f:
            if f.read(8) == b"\x89PNG\r\n\x1a\n":  # Pillow would decode the pixels to find a late eXIf chunk
                data = _png_exif(f)
                if data is None:
                    return 1
                exif = Image.Exif()
                exif.load(data if data.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + data)
            else:
                f.seek(0)
                with Image.open(f) as im:
                    exif = im.getexif()
        value = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - unreadable files / EXIF blocks: no orientation (the reader names the file)
        return 1
    return value if value in _TRANSPOSE else 1


def orientation_name(orientation: int) -> str:
    """What an EXIF orientation asks a viewer to do, e.g. "rotated 90° clockwise" (1: "upright").

    Args:
        orientation: EXIF orientation 1..8.
    """
    return _ORIENTATION_NAMES.get(orientation, "upright")


def exif_note(image_path: str, applied: bool = True) -> Optional[Tuple[str, str]]:
    """For a size mismatch between an image and its label: what the image's EXIF orientation did.

    Args:
        image_path: the labelled image.
        applied: whether the reader applied the orientation (INPUT.LABELLED_EXIF "apply").

    Returns:
        None when the image has no EXIF orientation, else (sentence for the message, hint).
    """
    o = exif_orientation(image_path) if image_path else 1
    if o == 1:
        return None
    policy, other = ("apply", "ignore") if applied else ("ignore", "apply")
    done = "so it is read upright" if applied else "but it is read as stored"
    follows = "stored pixels" if applied else "upright image"
    return (f"; the image carries EXIF orientation {o} ({orientation_name(o)} for display), {done} "
            f"(INPUT.LABELLED_EXIF {policy!r})",
            f"if the annotation follows the {follows}, set INPUT.LABELLED_EXIF {other!r}")


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


def decode_rgb(path: str, apply_exif: bool = True) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB, upright (EXIF orientation applied).

    Args:
        path: image file (any path `detectron2.utils.file_io.PathManager` opens).
        apply_exif: apply the EXIF orientation (False: the stored pixel order).

    Raises:
        DataFileNotFoundError (a FileNotFoundError): the file does not exist.
        DataFileError (a ValueError): the file cannot be decoded, or only into a wrong image
            (float or 32-bit samples, unknown modes); the message names the file.
    """
    try:
        with PathManager.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise DataFileNotFoundError(f"Image file {path} does not exist", hint=MISSING_FILE_HINT) from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            raw = _rawmodes(im)  # before anything loads the pixels (getexif may)
            method = _orientation(im) if apply_exif else None
            rgb = _decode_opened(im, raw, data, path)
    except DataFileError:
        raise
    except Exception as e:  # Pillow raises several types for broken or unknown files
        raise DataFileError(f"Cannot decode image {path}: {type(e).__name__}: {e}", hint=DAMAGED_FILE_HINT) from e
    if method is not None:
        rgb = np.asarray(Image.fromarray(rgb).transpose(method))
    return rgb


def read_image_checked(path: str, image_format: str = "RGB", apply_exif: bool = True) -> np.ndarray:
    """Read an image in a detectron2 format (see the module docstring for what is decoded how).

    Args:
        path: image file.
        image_format: detectron2 format ("RGB", "BGR", "L", "YUV-BT.601", ...); an 8-bit RGB file
            gives the same array as ``detectron2.data.detection_utils.read_image``.
        apply_exif: apply the EXIF orientation, as detectron2 does (False: the stored pixel order).

    Returns:
        H x W x C array (uint8 except for "YUV-BT.601", as detectron2).
    """
    rgb = decode_rgb(path, apply_exif)
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
    except FileNotFoundError as e:
        raise DataFileNotFoundError(f"Label file {path} does not exist", hint=MISSING_FILE_HINT) from e
    except Exception as e:
        raise DataFileError(f"Cannot decode label image {path}: {type(e).__name__}: {e}", hint=DAMAGED_FILE_HINT) from e
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


def read_label_checked(path: str, image_hw: Tuple[int, int], image_path: str = "",
                       exif_applied: bool = True) -> np.ndarray:
    """Read an 8-bit-range label map (uint8) and check that its size equals the image's.

    Args:
        path: label file.
        image_hw: (height, width) of the image it annotates, as read.
        image_path: the image file, for the error message (which mentions its EXIF orientation).
        exif_applied: whether the image was read with its EXIF orientation applied.
    """
    label = load_label(path, np.uint8)
    if label.shape != tuple(image_hw):
        note = exif_note(image_path, exif_applied)
        raise DataFileError(
            f"Annotation {path} has size {label.shape[1]}x{label.shape[0]} (WxH) but image "
            f"{image_path or '?'} has size {image_hw[1]}x{image_hw[0]} (WxH)" + (note[0] if note else ""),
            hint=note[1] if note else ("an annotation must have its image's size: regenerate it (ADE20K: "
                                       "datasets/prepare_ade20k_sem_seg.py) or remove the pair; "
                                       "`tools/check_dataset.py --dataset NAME` lists every mismatch"),
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
