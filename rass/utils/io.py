"""Atomic file writing: a file is either complete or absent, never half-written."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from typing import IO, Iterator

import numpy as np
from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path` atomically.

    On an exception the temporary file is removed and `path` is left untouched.

    Args:
        path: final file path.
        mode: "wb" or "w".
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text_atomic(path: str, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `atomic_open`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def save_image_atomic(path: str, array: np.ndarray, **pil_kwargs) -> None:
    """Write a uint8 H x W (x 3) array as an image (format from the extension), atomically.

    Args:
        path: output path (.png, .jpg, ...).
        array: uint8 image array.
        pil_kwargs: passed to `PIL.Image.save` (e.g. quality=95).
    """
    if array.dtype != np.uint8:
        raise ValueError(f"save_image_atomic({path}): expected a uint8 array, got {array.dtype}")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise ValueError(f"save_image_atomic: unsupported extension of {path!r} (use .png or .jpg)")
    with atomic_open(path, "wb") as f:
        Image.fromarray(array).save(f, format=fmt, **pil_kwargs)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
