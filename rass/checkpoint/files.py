"""Reading checkpoint files with errors that name the file and say what it is, and cleaning up the
temporary files a killed save leaves behind.

`read_checkpoint_file` is the one place that turns "torch.load failed" into a message a user can act
on: an empty file, a text file, a truncated torch zip archive, a damaged pickle, or a file holding
pickled objects that safe loading refuses are each named as such, with what was expected.
"""
from __future__ import annotations

import logging
import os
import re
import zipfile
from typing import Any, Callable, List, Optional

import torch

from rass.utils.errors import UserError, UserFileNotFoundError, UserValueError

from .safe_pickle import UnsafePickleError

__all__ = [
    "CheckpointFileError", "EXPECTED_FORMATS", "check_weight_path", "describe_unreadable", "read_checkpoint_file",
    "stray_temp_files", "remove_stray_temp_files",
]

logger = logging.getLogger(__name__)

EXPECTED_FORMATS = ("a torch checkpoint (.pth: the zip archive torch.save writes), a legacy torch/pickle file, "
                    "or a detectron2 model-zoo .pkl")
_ZIP_MAGIC = b"PK\x03\x04"
# `rass.utils.io.atomic_open` writes "<folder>/.<basename>.<random>.tmp" and renames it when complete
_TEMP_NAME = re.compile(r"^\.(?P<final>.+)\.[A-Za-z0-9_]+\.tmp$")


class CheckpointFileError(UserError, ValueError):
    """A weight file exists but cannot be read as a checkpoint (empty, text, truncated, damaged).

    Args:
        message: names the file, what it looks like and what was expected.
        hint: optional suggestion.
        description: what the file is (e.g. "a text file (12 bytes, ...)"), for short log lines.
    """

    def __init__(self, message: str, hint: Optional[str] = None, description: Optional[str] = None) -> None:
        super().__init__(message, hint=hint)
        self.description = description or message


def _head(path: str, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def describe_unreadable(path: str, error: Optional[BaseException] = None) -> str:
    """What an unreadable weight file looks like, judged from its first bytes (and the loader's error).

    Args:
        path: the file.
        error: the exception the loader raised, if any.

    Returns:
        A short description, e.g. "a text file (starts with 'hello')".
    """
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file (0 bytes)"
    head = _head(path)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"a truncated torch zip archive ({size} bytes, no zip central directory: "
                    "the save was probably interrupted or the download is incomplete)")
        return _refused(error) or f"a damaged torch zip archive ({size} bytes): {_short(error)}"
    if head[:1] == b"\x80":  # pickle protocol 2+: a legacy torch file or a .pkl
        if _refused(error):
            return _refused(error)
        return f"a damaged or truncated pickle ({size} bytes): {_short(error)}"
    if _looks_like_text(head):
        first = head.decode("utf-8").strip().splitlines()[0][:60] if head.strip() else ""
        return f"a text file ({size} bytes, starts with {first!r})"
    return f"not a known checkpoint format ({size} bytes, first bytes {head[:8]!r})"


_REFUSED = ("a checkpoint holding pickled objects other than tensors and plain containers, which safe loading "
            "(torch.load(weights_only=True)) refuses (if you trust the file, re-save its state dict alone: "
            "torch.save({'model': obj['model']}, new_path))")


# torch's messages: "Unsupported global: GLOBAL os.system ..." / "unsupported GLOBAL posix.system whose module ..."
_UNSUPPORTED = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?(?P<name>[\w.]+)", re.I)


def _refused(error: Optional[BaseException]) -> str:
    """The description of a file safe loading refused (naming the global it asked for), else ""."""
    m = _UNSUPPORTED.search(str(error)) if error is not None else None
    if m is None:
        return ""
    return _REFUSED.replace("refuses (", f"refuses (it asks for {m.group('name')}; ", 1)


def _short(error: Optional[BaseException]) -> str:
    if error is None:
        return "unreadable"
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text[:160]


_WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".pyth", ".bin", ".safetensors", ".ckpt")


def check_weight_path(path: str, key: str = "checkpoint", expected: str = EXPECTED_FORMATS) -> None:
    """Check that `path` names an existing weight file (not a folder).

    Args:
        path: the value the user gave.
        key: the config key / argument that gave it, for the message.
        expected: what the file should be, for the message.

    Raises:
        UserFileNotFoundError: nothing is at `path`.
        UserValueError: `path` is a folder (the hint names the weight files in it, if any).
    """
    if os.path.isdir(path):
        inside = sorted(n for n in os.listdir(path) if n.endswith(_WEIGHT_SUFFIXES))
        preferred = [n for n in ("model_final.pth", "pytorch_lora_weights.safetensors") if n in inside]
        example = os.path.join(path, (preferred or inside or ["<file>"])[-1])
        raise UserValueError(
            f"{key}: {path} is a folder; expected a weight file ({expected})",
            hint=(f"it holds {', '.join(inside[:6])}{' ...' if len(inside) > 6 else ''}: e.g. {key} {example}"
                  if inside else "name the checkpoint file itself (e.g. <run folder>/model_final.pth)"))
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{key}: checkpoint file not found: {path}")


def read_checkpoint_file(path: str, key: str = "checkpoint", loader: Optional[Callable[[str], Any]] = None,
                         expected: str = EXPECTED_FORMATS) -> Any:
    """Load a weight file, turning any read failure into one `CheckpointFileError` naming the file.

    Args:
        path: a local file.
        key: the config key / argument that gave the path (e.g. "MODEL.WEIGHTS"), for the message.
        loader: reads the file (default: `torch.load(path, map_location="cpu", weights_only=True)`).
        expected: what the file should be, for the messages.

    Returns:
        What the loader returned.

    Raises:
        UserFileNotFoundError: the file does not exist (named); UserValueError: it is a folder.
        UnsafePickleError: a pickle names a class a weight file does not need (see `safe_pickle`).
        CheckpointFileError: it exists but cannot be read.
    """
    check_weight_path(path, key, expected)
    if loader is None:
        def loader(p: str) -> Any:
            return torch.load(p, map_location="cpu", weights_only=True)
    try:
        return loader(path)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{key}: {e.message}", hint=e.hint, global_name=e.global_name) from None
    except (KeyboardInterrupt, MemoryError, FileNotFoundError, PermissionError, IsADirectoryError, UserError):
        raise
    except Exception as e:  # noqa: BLE001 - any decoding failure becomes one message naming the file
        what = describe_unreadable(path, e)
        raise CheckpointFileError(
            f"{key}: cannot read {path}: it is {what}; expected {expected}",
            hint="re-save or re-download the file" if os.path.getsize(path) else "the file is empty",
            description=f"it is {what}",
        ) from e


def stray_temp_files(folder: str, final_names: Callable[[str], bool]) -> List[str]:
    """Temporary files `atomic_open` left in `folder` (a process killed while writing), whose final
    name satisfies `final_names`.

    Args:
        folder: the folder to look in (missing: none).
        final_names: predicate on the final file name (e.g. checkpoint names only).
    """
    if not folder or not os.path.isdir(folder):
        return []
    out = []
    for name in sorted(os.listdir(folder)):
        m = _TEMP_NAME.match(name)
        if m and final_names(m.group("final")) and os.path.isfile(os.path.join(folder, name)):
            out.append(os.path.join(folder, name))
    return out


def remove_stray_temp_files(folder: str, final_names: Callable[[str], bool],
                            log: Optional[logging.Logger] = None) -> List[str]:
    """Remove (and log, WARNING) the temporary files of interrupted writes in `folder`.

    Args:
        folder: the folder to clean (missing: nothing to do).
        final_names: predicate on the final file name (see `stray_temp_files`).
        log: the logger to report to (default: this module's).

    Returns:
        The removed paths.
    """
    removed = []
    for path in stray_temp_files(folder, final_names):
        try:
            os.remove(path)
        except FileNotFoundError:
            continue
        removed.append(path)
        (log or logger).warning("Removed %s, left by an interrupted checkpoint save", path)
    return removed
