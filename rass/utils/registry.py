"""A detectron2/fvcore registry that can also register an object under an explicit name."""
from __future__ import annotations

from typing import Any, Callable

from fvcore.common.registry import Registry


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
