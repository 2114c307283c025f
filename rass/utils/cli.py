"""The command-line boundary: a user error is one short message, a bug keeps its traceback.

Every entry point (train_net.py, demo/demo.py, tools/*.py) ends with ``run_cli(main)``. A *user
error* is printed as ``error: <message>`` (plus ``  hint: <hint>``) on stderr and the command exits
with status 2; anything else is a bug and propagates with its traceback (exit status 1). In debug
mode (``--debug`` on any entry point, or ``RASS_DEBUG=1``; child processes inherit it) the traceback
of a user error is printed too.

What counts as a user error (`as_user_error`):

- a `rass.utils.errors.UserError` (the project's type; its subclasses are also `ValueError`,
  `KeyError`, ... where callers expect those);
- an `OSError` (missing file, permission denied, disk full: the user's environment);
- a `ValueError` / `KeyError` raised by a ``raise`` statement of the project's own code (the
  project's messages name the file / key / value), or one of the few detectron2 / fvcore errors
  about a name in the config (an unknown registered name, an unregistered dataset); the same types
  raised elsewhere by a library, or by a failing operation inside the project (``a, b = x``), are bugs.

Errors from data-loader worker processes and from the other ranks of detectron2's `launch` arrive as
exceptions whose message is the original traceback as text; they are recognised by parsing that
text with the same rules. Ranks started by `launch` should run their main through `LaunchedMain`,
which turns a user error into a plain `UserError` (so the parent prints it once) and keeps
detectron2's training loop from logging its traceback.
"""
from __future__ import annotations

import builtins
import importlib
import inspect
import linecache
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple

from rass.utils.errors import UserError

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_USER_ERROR", "debug_enabled", "enable_debug", "as_user_error",
           "format_user_error", "report_user_error", "install_log_filter", "run_cli", "LaunchedMain"]

DEBUG_ENV = "RASS_DEBUG"
DEBUG_FLAG = "--debug"
EXIT_USER_ERROR = 2
_DEBUG_HINT = f"run again with {DEBUG_FLAG} (or {DEBUG_ENV}=1) to see where it happened"
DEBUG_HELP = "show the traceback of errors in the input too (same as RASS_DEBUG=1)"

_PROJECT_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), d) + os.sep
    for d in ("rass", "tools", "demo", "datasets")
)
_PROJECT_FILES = (os.path.join(os.path.dirname(_PROJECT_DIRS[0].rstrip(os.sep)), "train_net.py"),)
_FILE_LINE = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+), in ')
_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:: (?P<msg>.*))?$")
_TRACEBACK_MARKS = ("Traceback (most recent call last):",)
# Messages of detectron2/fvcore that are about a name in the user's config, not a bug.
_LIBRARY_USER_MESSAGES = (
    re.compile(r"^No object named '.*' found in '.*' registry!"),  # e.g. MODEL.BACKBONE.NAME
    re.compile(r"^Dataset '.*' is not registered!"),  # DATASETS.TRAIN / TEST
)
_EMBEDDED_MARKS = ("Original Traceback (most recent call last):", "terminated with the following error:")


def debug_enabled() -> bool:
    """Whether tracebacks of user errors are shown (``RASS_DEBUG`` set to anything but "", "0", "false", "no")."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def enable_debug() -> None:
    """Turn debug mode on for this process and the processes it starts."""
    os.environ[DEBUG_ENV] = "1"


def _is_project_file(path: str) -> bool:
    path = os.path.abspath(path)
    if os.sep + "site-packages" + os.sep in path:
        return False
    return path.startswith(_PROJECT_DIRS) or path in _PROJECT_FILES


def _resolve_type(name: str) -> Optional[type]:
    """The exception class named `name` in a formatted traceback ("ValueError", "rass.x.MyError")."""
    module, _, attr = name.rpartition(".")
    try:
        owner = importlib.import_module(module) if module else builtins
    except Exception:  # noqa: BLE001 - an unimportable module: unknown type
        return None
    cls = getattr(owner, attr, None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def _classify(cls: Optional[type], message: str, raised_by_project: bool, hint: Optional[str] = None
              ) -> Optional[UserError]:
    if cls is not None and issubclass(cls, UserError):
        return UserError(message, hint)
    if cls is not None and issubclass(cls, OSError):
        return UserError(message, hint)
    if cls is not None and issubclass(cls, (ValueError, KeyError)):
        if raised_by_project or any(p.search(message) for p in _LIBRARY_USER_MESSAGES):
            return UserError(message, hint)
    return None


def _split_hint(text: str) -> Tuple[str, Optional[str]]:
    message, sep, hint = text.partition("\n  hint: ")
    return (message, hint.strip() or None) if sep else (text, None)


def _from_traceback_text(text: str) -> Optional[UserError]:
    """The user error at the end of a traceback formatted as text (None if it is not one)."""
    start = max(text.rfind(m) for m in _TRACEBACK_MARKS)
    if start < 0:
        return None
    lines = text[start:].splitlines()
    last_file = max((i for i, line in enumerate(lines) if _FILE_LINE.match(line)), default=None)
    if last_file is None:
        return None
    file_name = _FILE_LINE.match(lines[last_file]).group("file")
    j = last_file + 1
    source = ""
    while j < len(lines) and (not lines[j] or lines[j][0].isspace()):
        if not source and lines[j].strip() and not set(lines[j].strip()) <= set("^~-"):
            source = lines[j].strip()
        j += 1
    if j >= len(lines):
        return None
    m = _EXC_LINE.match(lines[j])
    if not m:
        return None
    type_name = m.group("type")
    message = "\n".join([m.group("msg") or ""] + lines[j + 1:]).rstrip()
    cls = _resolve_type(type_name)
    if cls is not None and issubclass(cls, KeyError) and len(message) > 1 and message[0] == message[-1] == "'":
        message = message[1:-1]
    message, hint = _split_hint(message)
    raised = _is_project_file(file_name) and source.startswith("raise")
    return _classify(cls, message or type_name, raised, hint)


def _innermost(tb) -> Tuple[str, str]:
    """(file name, source line) of the innermost frame of a traceback object."""
    if tb is None:
        return "", ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    file_name = tb.tb_frame.f_code.co_filename
    return file_name, linecache.getline(file_name, tb.tb_lineno).strip()


def as_user_error(exc: BaseException) -> Optional[UserError]:
    """The user error `exc` stands for (see the module docstring), or None if `exc` is a bug.

    Args:
        exc: any exception.

    Returns:
        `exc` itself if it is a `UserError`, else a new `UserError` with its message, or None.
    """
    if not isinstance(exc, Exception):
        return None
    text = str(exc)
    if any(m in text for m in _EMBEDDED_MARKS):  # a worker's or another rank's traceback, as text
        return _from_traceback_text(text)
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    file_name, source = _innermost(exc.__traceback__)
    raised = _is_project_file(file_name) and source.startswith("raise")
    return _classify(type(exc), text or type(exc).__name__, raised)


def format_user_error(err: UserError, from_other_type: bool = False) -> str:
    """The lines printed for a user error: ``error: <message>`` and ``  hint: <hint>``.

    Args:
        err: the error.
        from_other_type: the error was recognised from a plain ValueError/KeyError/OSError; the
            hint then points at the debug switch (it may be a bug after all).
    """
    lines = [f"error: {err.message}"]
    hint = err.hint or (_DEBUG_HINT if from_other_type else None)
    if hint:
        lines.append(f"  hint: {hint}")
    return "\n".join(lines)


def report_user_error(exc: BaseException, stream: Optional[TextIO] = None) -> Optional[int]:
    """Print `exc` as a user error (with its traceback first in debug mode) and return the exit status 2,
    or return None without printing when it is not a user error.

    Args:
        exc: the exception caught at the entry point.
        stream: where to print (default stderr).
    """
    err = as_user_error(exc)
    if err is None:
        return None
    stream = stream or sys.stderr
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    stream.write(format_user_error(err, from_other_type=err is not exc) + "\n")
    stream.flush()
    return EXIT_USER_ERROR


class _HideUserErrorTraceback(logging.Filter):
    """Drops log records that carry a user error's traceback (detectron2's "Exception during
    training"), unless debug mode is on: the entry point prints the error once."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return exc is None or debug_enabled() or as_user_error(exc) is None


_LOGGERS_THAT_LOG_EXCEPTIONS = ("detectron2.engine.train_loop", "detectron2.engine.hooks")


def install_log_filter() -> None:
    """Install the user-error filter on the detectron2 loggers that log exceptions (idempotent)."""
    for name in _LOGGERS_THAT_LOG_EXCEPTIONS:
        log = logging.getLogger(name)
        if not any(isinstance(f, _HideUserErrorTraceback) for f in log.filters):
            log.addFilter(_HideUserErrorTraceback())


def _strip_debug_flag(argv: List[str]) -> List[str]:
    if DEBUG_FLAG in argv:
        enable_debug()
        argv = [a for a in argv if a != DEBUG_FLAG]
    return argv


def run_cli(main: Callable[..., Any], argv: Optional[Sequence[str]] = None) -> None:
    """Run an entry point's `main` and exit: its int result is the exit status (None/other: 0);
    user errors exit with status 2 after one short message. Never returns.

    ``--debug`` is taken out of the arguments (anywhere) and turns debug mode on. `main` gets the
    remaining arguments if it takes a parameter; ``sys.argv`` is updated either way.

    Args:
        main: the entry point's main function, ``main(argv)`` or ``main()``.
        argv: the arguments (default ``sys.argv[1:]``).
    """
    args = _strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    sys.argv[1:] = args
    install_log_filter()
    try:
        takes_args = bool(inspect.signature(main).parameters)
        result = main(args) if takes_args else main()
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        sys.stderr.write("error: interrupted\n")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the boundary: user errors become a message, bugs are re-raised
        code = report_user_error(e)
        if code is None:
            raise
        sys.exit(code)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


class LaunchedMain:
    """A picklable wrapper of the main function run in every process by detectron2's `launch`:
    the rank installs the log filter, and a user error leaves it as a plain `UserError` (message
    and hint, no chained traceback unless in debug mode) that the parent recognises and prints once.

    Args:
        fn: the main function (a module-level function, so that it pickles).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        install_log_filter()
        try:
            return self.fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            err = as_user_error(e)
            if err is None or debug_enabled():
                raise
            raise UserError(err.message, err.hint or (None if err is e else _DEBUG_HINT)) from None
