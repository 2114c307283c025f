"""RASS: restoration-adapted semantic segmentation.

Importing the package is light (no torch, detectron2, diffusers or transformers), so that every
command-line entry point parses its arguments (``--help``, argument errors) before loading them.
`register_all` registers the project's datasets, dataset mappers, backbones, meta-architectures, heads
and taggers with detectron2; `rass.config.add_rass_config` / `setup_cfg` call it, and so does the first
use of ``rass.add_rass_config`` / ``rass.setup_cfg``.
"""
import warnings
from typing import Any

# fvcore (imported by detectron2) scripts its losses with torch.jit at import time, which torch 2.x
# reports on every start; nothing of the project uses TorchScript, so that one notice is not shown.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

__all__ = ["add_rass_config", "setup_cfg", "register_all"]

_CONFIG_NAMES = ("add_rass_config", "setup_cfg")


def register_all() -> None:
    """Register every dataset, dataset mapper, backbone, meta-architecture, head and tagger of the
    project with detectron2 (imports torch, detectron2, diffusers, transformers; idempotent)."""
    from . import data  # noqa: F401  (registers datasets and mappers)
    from . import checkpoint, engine, evaluation, solver  # noqa: F401
    from . import modeling  # noqa: F401  (registers backbones, heads, meta-architectures, taggers)


def __getattr__(name: str) -> Any:
    """``rass.add_rass_config`` / ``rass.setup_cfg``: registers everything, then returns the function."""
    if name in _CONFIG_NAMES:
        register_all()
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
