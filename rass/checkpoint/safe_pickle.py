"""Reading pickled weight files (detectron2 / Mask2Former model-zoo `.pkl`) without running code.

A pickle names the callables it needs to rebuild its objects (`module.name` globals); a crafted file
can name `os.system` and run anything at load time. `SafeUnpickler` accepts only the globals that
weight files hold: Python's containers and scalars, `collections.OrderedDict`, numpy arrays, dtypes
and scalars (under numpy 1's `numpy.core` and numpy 2's `numpy._core` names), and `_codecs.encode`
(Python 3's protocol-2 encoding of bytes inside numpy arrays). Any other global is refused with a
`UnsafePickleError` naming it and the file; nothing of it is imported or called.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
from typing import Any, BinaryIO, Callable, Dict, Optional, Tuple

import numpy as np

from rass.utils.errors import UserError

__all__ = ["ALLOWED_GLOBALS", "UnsafePickleError", "SafeUnpickler", "safe_pickle_load", "read_safe_pickle"]


def _numpy_core(module: str, name: str) -> Callable:
    """`numpy._core.<module>.<name>` (numpy 2) or `numpy.core.<module>.<name>` (numpy 1)."""
    core = getattr(np, "_core", None) or np.core
    return getattr(getattr(core, module), name)


def _allowed() -> Dict[Tuple[str, str], Any]:
    out: Dict[Tuple[str, str], Any] = {
        ("builtins", n): getattr(__import__("builtins"), n)
        for n in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float",
                  "complex", "bool", "slice")
    }
    out[("collections", "OrderedDict")] = collections.OrderedDict
    out[("_codecs", "encode")] = codecs.encode
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = _numpy_core("multiarray", "_reconstruct")
        out[(f"{core}.multiarray", "scalar")] = _numpy_core("multiarray", "scalar")
        out[(f"{core}.numeric", "_frombuffer")] = _numpy_core("numeric", "_frombuffer")  # protocol 5
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


# (module, name) -> the object it stands for; everything a model-zoo weight file needs
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = _allowed()


class UnsafePickleError(UserError, pickle.UnpicklingError):
    """A pickle names a global outside `ALLOWED_GLOBALS` (it could run code); it was not loaded.

    Args:
        message: names the file and the refused `module.name`.
        hint: optional suggestion.
        global_name: the refused `module.name`.
    """

    def __init__(self, message: str, hint: Optional[str] = None, global_name: str = "") -> None:
        super().__init__(message, hint=hint)
        self.global_name = global_name

    def __reduce__(self):
        return type(self), (self.message, self.hint, self.global_name)


class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` resolves only `ALLOWED_GLOBALS`.

    Args:
        file: the binary stream.
        source: file name for messages.
        encoding: for Python 2 `str` objects ("latin1" as detectron2 reads model-zoo files).
    """

    def __init__(self, file: BinaryIO, source: str = "<stream>", encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names, as pickle's fix_imports
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to load: the pickle asks for {module}.{name}, which a weight file does not "
                "need (only dicts, lists, tuples, strings, numbers and numpy arrays / dtypes / scalars are "
                "accepted); loading it could run code, so nothing of it was loaded",
                hint="use a weight file from a source you trust, or convert it to .pth / .safetensors where it was made",
                global_name=f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.source}: a persistent id ({type(pid).__name__}) is not allowed "
                                     "in a weight pickle")


def safe_pickle_load(file: BinaryIO, source: str = "<stream>") -> Any:
    """Unpickle `file` with `SafeUnpickler` (latin1 for Python 2 strings).

    Args:
        file: binary stream.
        source: file name for messages.
    """
    return SafeUnpickler(file, source=source).load()


def read_safe_pickle(path: str) -> Any:
    """Unpickle the file `path` with `SafeUnpickler` (the whole file is read first).

    Args:
        path: a local `.pkl` file.
    """
    with open(path, "rb") as f:
        return safe_pickle_load(io.BytesIO(f.read()), source=path)
