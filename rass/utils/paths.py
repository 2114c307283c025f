"""Where the project's own relative defaults live: the repository, not the current folder.

The rule (also in README.md):

- A relative path the *user* gives (a command-line argument, a `KEY VALUE` override, an environment
  variable such as ``$DETECTRON2_DATASETS``, a value in the user's own config file) is relative to
  the current folder, as usual.
- A relative path that is a *built-in default of the project* (the dataset roots' default
  ``datasets/``, and the ``output/...``, ``weights/...`` and ``datasets/...`` values of the packaged
  configs under ``configs/``) means the folder of that name in the repository, wherever the command is
  run from.

Outside a source checkout (the package installed without the repository) there is no repository
folder and the built-in defaults fall back to the current folder.
"""
from __future__ import annotations

import os
from typing import Optional

__all__ = ["PROJECT_PREFIXES", "project_root", "project_path", "is_packaged_config", "resolve_packaged_value"]

# First components of relative paths in packaged configs that name repository folders.
PROJECT_PREFIXES = ("output/", "weights/", "datasets/")


def project_root() -> Optional[str]:
    """The repository folder holding the `rass` package (with ``configs/``), or None outside a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return root if os.path.isdir(os.path.join(root, "configs")) and os.path.isdir(os.path.join(root, "rass")) else None


def project_path(relative: str) -> str:
    """A built-in default path `relative` resolved against the repository (the current folder outside a checkout).

    Args:
        relative: a path relative to the repository root, e.g. "datasets".
    """
    root = project_root()
    return os.path.join(root, relative) if root else relative


def is_packaged_config(path: str) -> bool:
    """Whether `path` is one of the project's own config files (below ``<repository>/configs``)."""
    root = project_root()
    if not root:
        return False
    configs = os.path.realpath(os.path.join(root, "configs"))
    return os.path.realpath(path).startswith(configs + os.sep)


def resolve_packaged_value(value):
    """A value read from a packaged config: relative ``output/``, ``weights/``, ``datasets/`` paths
    (also inside lists) become repository paths; everything else is returned unchanged.

    Args:
        value: a config value (str, list/tuple of values, or anything else).
    """
    if isinstance(value, str):
        return project_path(value) if value.startswith(PROJECT_PREFIXES) else value
    if isinstance(value, (list, tuple)):
        return type(value)(resolve_packaged_value(v) for v in value)
    return value
