"""The command-line boundary: a user error is one short message, a bug keeps its traceback.

Every entry point (train_net.py, demo/demo.py, tools/*.py) ends with ``run_cli(main)``. A *user
error* is printed as ``error: <message>`` (plus ``  hint: <hint>``) on stderr and the command exits
with status 2; anything else is a bug and propagates with its traceback (exit status 1). In debug
mode (``--debug`` on any entry point, or ``RASS_DEBUG=1``; child processes inherit it) the traceback
of a user error is printed too.

What counts as a user error (`as_user_error`): a `rass.utils.errors.UserError` and nothing else.
The project raises that type (its subclasses `UserValueError`, `UserKeyError`,
`UserFileNotFoundError`, ... are also the matching builtin types) on purpose, with a message naming
the file / key / value and what was expected, wherever it checks the user's input: config values,
files, data, command-line arguments, names looked up in a registry or the dataset catalog. Every
other exception (an `OSError` nobody turned into a message, a `ValueError` of an internal check, a
library's `KeyError`) is a bug and keeps its traceback.

Errors from data-loader worker processes and from the other ranks of detectron2's `launch` arrive as
exceptions whose message is the original traceback as text; they are user errors when the final
exception of that text is of a `UserError` type (its ``module.Class`` name is imported to check).
Ranks started by `launch` should run their main through `LaunchedMain`, which turns a user error into
a plain `UserError` (so the parent prints it once) and keeps detectron2's training loop from logging
its traceback.

This module is light (standard library only), like the parsers of the entry points: ``--help`` and
argument errors return before torch, detectron2 or transformers are imported. `add_init_seed_argument`
and `check_config_file` are the shared pieces of those parsers.
"""
from __future__ import annotations

import argparse
import builtins
import importlib
import inspect
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, List, Optional, Sequence, TextIO, Tuple

from rass.utils.errors import UserError, UserFileNotFoundError

__all__ = ["DEBUG_ENV", "DEBUG_FLAG", "EXIT_USER_ERROR", "debug_enabled", "enable_debug", "as_user_error",
           "format_user_error", "report_user_error", "install_log_filter", "run_cli", "LaunchedMain",
           "DEFAULT_INIT_SEED", "add_init_seed_argument", "check_config_file", "parse_before_imports"]

DEBUG_ENV = "RASS_DEBUG"
DEBUG_FLAG = "--debug"
EXIT_USER_ERROR = 2
DEBUG_HELP = "show the traceback of errors in the input too (same as RASS_DEBUG=1)"

# The seed of the parts a tool or demo builds without weights (random SAM, UNet, tagger, heads) unless
# it is given another one (`--init-seed`): the same config gives the same model, run after run.
DEFAULT_INIT_SEED = 0
CONFIG_HINT = "the packaged configs are under configs/, e.g. configs/quickstart/tiny_rass.yaml"


def add_init_seed_argument(parser: argparse.ArgumentParser) -> None:
    """The `--init-seed` option of tools that build a model (see `rass.engine.model_build.seeded_init`).

    Args:
        parser: the tool's argument parser.
    """
    parser.add_argument("--init-seed", type=int, default=DEFAULT_INIT_SEED, metavar="N",
                        help="seed of the model parts built without weights, so that runs with random parts "
                             "are reproducible (default: %(default)s)")


def check_config_file(config_file: Optional[str]) -> None:
    """Fail fast, before the heavy imports, when the config file the user named is not a file.

    Args:
        config_file: the value of ``--config-file`` ("" or None: nothing to check).

    Raises:
        UserFileNotFoundError: the same message as `rass.utils.config_loading.merge_file`.
    """
    if config_file and not os.path.isfile(config_file):
        what = "is a folder, not a config file" if os.path.isdir(config_file) else "does not exist"
        raise UserFileNotFoundError(f"config file {config_file} {what}", hint=CONFIG_HINT)


def parse_before_imports(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line of a script whose module imports torch & co. at its top, before those imports
    (``if __name__ == "__main__": parse_before_imports(build_parser())`` above them): ``--help``, argument
    errors and a missing ``--config-file`` answer at once, the last as one ``error:`` line (exit status 2).

    Args:
        parser: the script's parser.
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed arguments.
    """
    args = parser.parse_args(argv)
    try:
        check_config_file(getattr(args, "config_file", None))
    except UserError as e:
        report_user_error(e)
        sys.exit(EXIT_USER_ERROR)
    return args


_EXC_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?:: (?P<msg>.*))?$")
_FILE_LINE = re.compile(r'^\s+File "(?P<file>.+)", line (?P<line>\d+), in ')
_TRACEBACK_MARKS = ("Traceback (most recent call last):",)
_EMBEDDED_MARKS = ("Original Traceback (most recent call last):", "terminated with the following error:")


def debug_enabled() -> bool:
    """Whether tracebacks of user errors are shown (``RASS_DEBUG`` set to anything but "", "0", "false", "no")."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def enable_debug() -> None:
    """Turn debug mode on for this process and the processes it starts."""
    os.environ[DEBUG_ENV] = "1"


def _resolve_type(name: str) -> Optional[type]:
    """The exception class named `name` in a formatted traceback ("ValueError", "rass.x.MyError")."""
    module, _, attr = name.rpartition(".")
    try:
        owner = importlib.import_module(module) if module else builtins
    except Exception:  # noqa: BLE001 - an unimportable module: unknown type
        return None
    cls = getattr(owner, attr, None)
    return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None


def _split_hint(text: str) -> Tuple[str, Optional[str]]:
    message, sep, hint = text.partition("\n  hint: ")
    return (message, hint.strip() or None) if sep else (text, None)


def _from_traceback_text(text: str) -> Optional[UserError]:
    """The user error at the end of a traceback formatted as text (None if its final exception is
    not of a `UserError` type)."""
    start = max(text.rfind(m) for m in _TRACEBACK_MARKS)
    if start < 0:
        return None
    lines = text[start:].splitlines()
    last_file = max((i for i, line in enumerate(lines) if _FILE_LINE.match(line)), default=None)
    if last_file is None:
        return None
    j = last_file + 1
    while j < len(lines) and (not lines[j] or lines[j][0].isspace()):  # the source line and its ^^^ marks
        j += 1
    m = _EXC_LINE.match(lines[j]) if j < len(lines) else None
    cls = _resolve_type(m.group("type")) if m else None
    if cls is None or not issubclass(cls, UserError):
        return None
    message, hint = _split_hint("\n".join([m.group("msg") or ""] + lines[j + 1:]).rstrip())
    return UserError(message or m.group("type"), hint)


def as_user_error(exc: BaseException) -> Optional[UserError]:
    """The user error `exc` stands for (see the module docstring), or None if `exc` is a bug.

    Args:
        exc: any exception.

    Returns:
        `exc` itself if it is a `UserError`; for an error of a worker or another rank that arrived as
        its traceback text, a new `UserError` with the message and hint of the original; else None.
    """
    if not isinstance(exc, Exception):
        return None
    text = str(exc)
    # a worker's or another rank's traceback, as text (torch re-raises a worker's error as its own
    # type when it can, so a UserError may hold one too)
    if any(m in text for m in _EMBEDDED_MARKS):
        return _from_traceback_text(text)
    return exc if isinstance(exc, UserError) else None


def format_user_error(err: UserError) -> str:
    """The lines printed for a user error: ``error: <message>`` and ``  hint: <hint>``.

    Args:
        err: the error.
    """
    lines = [f"error: {err.message}"]
    if err.hint:
        lines.append(f"  hint: {err.hint}")
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
    stream.write(format_user_error(err) + "\n")
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
            raise UserError(err.message, err.hint) from None
