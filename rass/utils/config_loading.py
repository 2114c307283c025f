"""Reading config files and overrides with errors a user can act on (used by `rass.config.setup_cfg`).

`ProjectCfgNode` is detectron2's `CfgNode` with two changes to `load_yaml_with_base`: errors name the
file (malformed YAML, a missing `_BASE_` and the file that names it, a file that is not a mapping),
and the relative ``output/``, ``weights/``, ``datasets/`` paths of the project's packaged configs
are resolved against the repository (`rass.utils.paths`). `merge_file` / `merge_overrides` turn
yacs' unknown-key and type-mismatch errors into `UserKeyError` / `UserValueError` that name the
file or the override, quote the value given and the expected type, and suggest a close key.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from detectron2.config import CfgNode as CN

from rass.utils.cli import check_config_file
from rass.utils.errors import UserError, UserFileNotFoundError, UserKeyError, UserValueError
from rass.utils.paths import is_packaged_config, resolve_packaged_value

__all__ = ["ProjectCfgNode", "merge_file", "merge_overrides"]

_BASE_KEY = "_BASE_"
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (?P<key>\S+)")
_TYPE_MISMATCH = re.compile(r"Type mismatch \((?P<old>.+?) vs\. (?P<new>.+?)\) with values .* for config key: (?P<key>\S+)$",
                            re.S)
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "True or False",
               "list": "a list", "tuple": "a list", "NoneType": "None", "dict": "a mapping"}


class _MissingConfigFile(UserFileNotFoundError):
    """A config file that does not exist (the referring file, if any, is added by its loader)."""

    def __init__(self, message: str, hint: Optional[str] = None, path: str = "") -> None:
        super().__init__(message, hint)
        self.path = path

    def __reduce__(self):
        return type(self), (self.message, self.hint, self.path)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """`problem at line L, column C (context at line ...)` of a PyYAML error (1-based positions)."""
    if not isinstance(e, yaml.MarkedYAMLError):
        return str(e)
    where = lambda mark: f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"  # noqa: E731
    text = f"{e.problem} at {where(e.problem_mark)}" if e.problem else str(e)
    if e.context:
        text += f" ({e.context} at {where(e.context_mark)})"
    return text


class ProjectCfgNode(CN):
    """detectron2's `CfgNode`; its YAML loading names the file in every error and resolves the
    packaged configs' repository paths (see the module docstring)."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        if not os.path.isfile(filename):
            what = "is a folder, not a config file" if os.path.isdir(filename) else "does not exist"
            raise _MissingConfigFile(f"config file {filename} {what}", path=filename)
        try:
            loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        except _MissingConfigFile as e:
            if e.path == filename:
                raise
            raise UserFileNotFoundError(
                f"config file {filename}: its _BASE_ {e.path} does not exist",
                hint="a relative _BASE_ path is relative to the folder of the file that names it") from None
        except UserError:
            raise
        except UnicodeDecodeError as e:
            raise UserValueError(f"config file {filename} is not UTF-8 text ({e.reason} at byte {e.start})",
                                 hint="a config file is a YAML text file") from None
        except yaml.constructor.ConstructorError as e:
            raise UserValueError(f"config file {filename}: {_yaml_problem(e)}",
                                 hint="config files are plain YAML; Python tags (!!python/...) are not allowed") from None
        except yaml.YAMLError as e:
            raise UserValueError(f"config file {filename} is not valid YAML: {_yaml_problem(e)}") from None
        except (TypeError, AssertionError) as e:  # not a mapping, or a _BASE_ key that is not a mapping there
            problem = "is empty or not a mapping of KEY: value" if "NoneType" in str(e) else f": {e}"
            raise UserValueError(f"config file {filename} {problem}".replace(" :", ":"),
                                 hint="a config file is a YAML mapping of KEY: value (with an optional _BASE_)") from None
        if not isinstance(loaded, dict):
            raise UserValueError(f"config file {filename} must be a YAML mapping of KEY: value, "
                                 f"got {type(loaded).__name__}")
        return _resolve_tree(loaded) if is_packaged_config(filename) else loaded


def _resolve_tree(tree: Dict[str, Any]) -> Dict[str, Any]:
    return {k: _resolve_tree(v) if isinstance(v, dict) else resolve_packaged_value(v) for k, v in tree.items()}


# ----------------------------------------------------------------- where a key was set
def _safe_yaml(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _lookup(tree: Dict[str, Any], key: str) -> Tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def key_source(config_file: str, key: str) -> Tuple[str, Any]:
    """(file, value) of the file of a `_BASE_` chain whose value of `key` is in force (the file
    itself before its bases; later bases before earlier ones); (config_file, None) if none sets it."""

    def visit(path: str, depth: int) -> Optional[Tuple[str, Any]]:
        data = _safe_yaml(path)
        found, value = _lookup(data, key)
        if found:
            return path, value
        bases = data.get(_BASE_KEY) or []
        for base in reversed(bases if isinstance(bases, list) else [bases]):
            if not isinstance(base, str) or depth > 20:
                continue
            base = os.path.expanduser(base)
            base = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
            hit = visit(base, depth + 1)
            if hit:
                return hit
        return None

    return visit(config_file, 0) or (config_file, None)


# ----------------------------------------------------------------- messages
def _all_keys(node: CN, prefix: str = "") -> Iterator[str]:
    for k, v in node.items():
        full = prefix + k
        if isinstance(v, CN):
            yield from _all_keys(v, full + ".")
        else:
            yield full


def _suggest(cfg: CN, key: str) -> Optional[str]:
    keys: List[str] = list(_all_keys(cfg))
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.75)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == last][:3]
    return f"did you mean {' or '.join(close)}?" if close else None


def _type_word(type_text: str) -> str:
    m = re.match(r"<class '(?P<name>[\w.]+)'>", type_text.strip())
    name = m.group("name") if m else type_text
    return _TYPE_WORDS.get(name, f"a {name}")


def _current(cfg: CN, key: str) -> Any:
    return _lookup(cfg, key)[1]


def merge_file(cfg: CN, config_file: str) -> None:
    """Merge a YAML config file (safe loader, `_BASE_` chains) into `cfg`, with user errors.

    Args:
        cfg: a `ProjectCfgNode` (so that its YAML loading is the project's).
        config_file: the file.

    Raises:
        UserFileNotFoundError / UserValueError / UserKeyError: naming the file and what is wrong.
    """
    check_config_file(config_file)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except UserError:
        raise
    except KeyError as e:
        text = e.args[0] if e.args else str(e)
        m = _UNKNOWN_KEY.search(str(text))
        if not m:
            raise UserKeyError(f"config file {config_file}: {text}") from None
        key = m.group("key")
        source, _ = key_source(config_file, key)
        raise UserKeyError(f"{source}: unknown config key {key} (not a detectron2/RASS config key)",
                           hint=_suggest(cfg, key)) from None
    except ValueError as e:
        m = _TYPE_MISMATCH.search(str(e))
        if not m:
            raise UserValueError(f"config file {config_file}: {e}") from None
        key = m.group("key")
        source, value = key_source(config_file, key)
        raise UserValueError(f"{source}: {key}: {value!r} is {_type_word(m.group('new'))}, expected "
                             f"{_type_word(m.group('old'))}") from None


def merge_overrides(cfg: CN, opts: Sequence[str]) -> None:
    """Merge command-line `KEY VALUE` overrides into `cfg`, with user errors.

    Args:
        cfg: the config.
        opts: the overrides as given (strings; values are parsed as Python literals, else strings).

    Raises:
        UserValueError: an odd number of items, or a value of the wrong type (quotes the value given
            and the value in force).
        UserKeyError: an unknown key (with a suggestion).
    """
    opts = list(opts)
    if len(opts) % 2:
        raise UserValueError(f"overrides must be KEY VALUE pairs, got an odd number of items: {opts}",
                             hint="quote values with spaces, e.g. DATASETS.TEST \"('a', 'b')\"")
    for key, value in zip(opts[0::2], opts[1::2]):
        if _lookup(cfg, key)[0]:
            continue
        raise UserKeyError(f"command-line override: unknown config key {key} (not a detectron2/RASS config key)",
                           hint=_suggest(cfg, key))
    for key, value in zip(opts[0::2], opts[1::2]):
        before = _current(cfg, key)
        try:
            cfg.merge_from_list([key, value])
        except (ValueError, AssertionError, KeyError) as e:
            m = _TYPE_MISMATCH.search(str(e))
            expected = _type_word(m.group("old")) if m else f"a value like {before!r}"
            raise UserValueError(f"command-line override {key} {value!r}: expected {expected} like the value in "
                                 f"force, {before!r}") from None
