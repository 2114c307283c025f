"""RASS: restoration-adapted semantic segmentation. Importing the package registers its
datasets, dataset mappers, backbones, meta-architectures, heads and taggers with detectron2."""
import warnings

# fvcore (imported by detectron2) scripts its losses with torch.jit at import time, which torch 2.x
# reports on every start; nothing of the project uses TorchScript, so that one notice is not shown.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from . import data  # noqa: F401  (registers datasets and mappers)
from . import checkpoint, engine, evaluation, solver  # noqa: F401
from . import modeling  # noqa: F401  (registers backbones, heads, meta-architectures, taggers)
from .config import add_rass_config, setup_cfg

__all__ = ["add_rass_config", "setup_cfg"]
