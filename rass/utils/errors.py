"""The project's user-error type: a problem with the user's input (file, config value, data), not a bug.

Command-line entry points print a `UserError` as one short message (plus its hint) and exit with
status 2; the traceback is shown only in debug mode (see `rass.utils.cli`). It is the only type they
treat so: code that checks the user's input raises it (or a subclass below, which is also the
matching builtin type, so that callers catching e.g. `ValueError` still do); any other exception is
a bug and keeps its traceback.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["UserError", "UserKeyError", "UserValueError", "UserFileNotFoundError", "UserOSError",
           "UserRuntimeError"]


class UserError(Exception):
    """An error caused by the user's input, reported without a traceback.

    Args:
        message: what is wrong, naming the file / key / value and what was expected.
        hint: optional one-line suggestion of how to fix it.
    """

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"

    def __reduce__(self):  # keep the hint through pickling (multiprocessing, spawned ranks)
        return type(self), (self.message, self.hint)


class UserKeyError(UserError, KeyError):
    """A user error that is also a `KeyError` (unknown config key, unknown registered name)."""


class UserValueError(UserError, ValueError):
    """A user error that is also a `ValueError` (a value of the wrong type or out of range, bad syntax)."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A user error that is also a `FileNotFoundError` (a file or folder the user named is missing)."""


class UserOSError(UserError, OSError):
    """A user error that is also an `OSError` (a file or folder the user named cannot be read or written)."""


class UserRuntimeError(UserError, RuntimeError):
    """A user error that is also a `RuntimeError` (a setting the user chose cannot run here, e.g. a backend
    that is not installed; a file that cannot be read)."""
