"""Atomic file writing: a file is either complete or absent, never half-written.

New files get the permissions `open()` would give them (0o666 minus the process umask), computed
without changing the umask: `os.umask` can only be read by setting it, and a thread that creates a
file while another has set it to 0 would make a world-writable file. On Linux the umask is read from
``/proc/self/status``; elsewhere it is read once, at import (under a lock, before any writer thread
of this module exists), and later changes of the umask are not seen.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from typing import IO, Iterator, Optional

import numpy as np
from PIL import Image

__all__ = ["current_umask", "default_mode", "atomic_open", "write_bytes_atomic", "write_text_atomic",
           "save_image_atomic", "sha256_file"]

_PROC_STATUS = "/proc/self/status"


def _umask_from_proc(path: str = _PROC_STATUS) -> Optional[int]:
    """The process umask from the "Umask:" line of `path` (Linux >= 4.7), or None where there is none."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _umask_round_trip() -> int:
    with _ROUND_TRIP_LOCK:
        mask = os.umask(0o077)  # the most private value while it is changed, not 0
        os.umask(mask)
    return mask


_ROUND_TRIP_LOCK = threading.Lock()
_HAS_PROC = _umask_from_proc() is not None
_IMPORT_UMASK = None if _HAS_PROC else _umask_round_trip()  # the only change of the umask, once, at import


def current_umask() -> int:
    """The process umask, read without changing it (see the module's docstring)."""
    if _HAS_PROC:
        mask = _umask_from_proc()
        if mask is not None:
            return mask
    return _IMPORT_UMASK if _IMPORT_UMASK is not None else 0o022


def default_mode(is_dir: bool = False) -> int:
    """The mode `open()` (0o666) or `os.mkdir()` (0o777) would give a new file or folder now.

    Args:
        is_dir: a folder rather than a file.
    """
    return (0o777 if is_dir else 0o666) & ~current_umask()


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable; skipped where folders cannot be opened / synced (Windows, some
    file systems)."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # EINVAL / ENOTSUP: the file system does not sync folders
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path` atomically (the file and its
    folder are synced, so the new content survives a crash).

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
        os.chmod(tmp, default_mode())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


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
