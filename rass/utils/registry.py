"""A detectron2/fvcore registry that can also register an object under an explicit name, and the
look-ups of names a config gives (registered objects, datasets) that fail as user errors."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Iterable, List

from fvcore.common.registry import Registry

from rass.utils.errors import UserKeyError

__all__ = ["NamedRegistry", "registered", "check_datasets_registered"]


def registered(registry: Registry, key: str, name: str) -> Any:
    """`registry.get(name)` for a name that the config key `key` gives.

    Args:
        registry: a detectron2/fvcore registry.
        key: the config key the name comes from, e.g. ``MODEL.BACKBONE.NAME``.
        name: the name.

    Raises:
        UserKeyError: the name is not registered (names the key, the value and the registered names).
    """
    if name not in registry:
        known: List[str] = sorted(k for k, _ in registry)
        raise UserKeyError(f"{key}: {name!r} is not registered in the {registry._name} registry; registered: "
                           f"{', '.join(known)}")
    return registry.get(name)


def check_datasets_registered(key: str, names: Iterable[str]) -> None:
    """Check that each dataset named by the config key `key` (``DATASETS.TRAIN`` / ``DATASETS.TEST``) is
    registered in detectron2's `DatasetCatalog`.

    Args:
        key: the config key.
        names: the dataset names it gives.

    Raises:
        UserKeyError: a name is not registered (names the key, the name and the closest registered names).
    """
    from detectron2.data import DatasetCatalog

    known = DatasetCatalog.list()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            guess = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UserKeyError(f"{key}: dataset {name!r} is not registered{guess}",
                               hint=f"the project's datasets and how to add one are described in datasets/README.md "
                                    f"({len(known)} are registered: detectron2.data.DatasetCatalog.list())")


class NamedRegistry(Registry):
    """`fvcore.common.registry.Registry` plus `register_as(name)` for lowercase names.

    Args:
        name: the registry's name, shown in error messages.
    """

    def register_as(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register the decorated class/function under `name`."""

        def deco(obj: Any) -> Any:
            self._do_register(name, obj)
            return obj

        return deco
