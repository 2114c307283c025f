"""Which models the browser demo's tabs run, and the demo's user-error type.

Without a config the RASS tab runs the quickstart's trained model when scripts/quickstart.sh has
written it, else the tiny configuration with random weights; the SAM tab runs the tiny random
SAM + CRE UNet. A tab whose model cannot be built (a missing weights file, a wrong config) keeps
the message, which the page shows; the other tab still works.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

from rass.config import setup_cfg
from rass.engine.model_build import DEFAULT_INIT_SEED, seeded_init
from rass.utils.cli import as_user_error
from rass.utils.errors import UserError
from rass.utils.paths import project_path

__all__ = ["AppError", "user_message", "ModelChoice", "choose_rass_model", "choose_sam_model", "Loaded",
           "load_backend"]

logger = logging.getLogger(__name__)

RASS_DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"
SAM_DEFAULT_CONFIG = "configs/lqseg/tiny_glesam.yaml"
QUICKSTART_WEIGHTS = "output/quickstart/model_final.pth"


class AppError(UserError, ValueError):
    """A problem with what the user gave the demo (shown on the page as its message)."""


@dataclass
class ModelChoice:
    """The config a tab runs and how it was chosen.

    Args:
        config_file: the YAML config.
        opts: `KEY VALUE` overrides.
        origin: one sentence for the page on where the weights come from.
    """

    config_file: str
    opts: List[str]
    origin: str


def _has_key(opts: Sequence[str], key: str) -> bool:
    return any(k == key for k in opts[0::2])


def choose_rass_model(config_file: Optional[str], opts: Sequence[str] = (),
                      quickstart_weights: Optional[str] = None) -> ModelChoice:
    """The RASS tab's model: the given config, else the quickstart's trained model when
    `scripts/quickstart.sh` has written it, else the tiny configuration with random weights.

    Args:
        config_file: `--config-file`, or None.
        opts: `--opts` overrides.
        quickstart_weights: where the quickstart writes its model (default: the repository's
            output/quickstart/model_final.pth).
    """
    opts = list(opts)
    if config_file:
        if _has_key(opts, "MODEL.WEIGHTS"):
            weights = opts[1::2][opts[0::2].index("MODEL.WEIGHTS")]
            return ModelChoice(config_file, opts, f"{config_file} with MODEL.WEIGHTS {weights}")
        return ModelChoice(config_file, opts, f"{config_file} (MODEL.WEIGHTS as in the config)")
    weights = quickstart_weights or project_path(QUICKSTART_WEIGHTS)
    if os.path.isfile(weights) and not _has_key(opts, "MODEL.WEIGHTS"):
        return ModelChoice(project_path(RASS_DEFAULT_CONFIG), ["MODEL.WEIGHTS", weights] + opts,
                           f"the quickstart's tiny RASS model ({QUICKSTART_WEIGHTS}, trained on synthetic scenes): "
                           "no weights were configured")
    return ModelChoice(project_path(RASS_DEFAULT_CONFIG), opts,
                       "no weights configured: the tiny RASS configuration with RANDOM weights "
                       "(scripts/quickstart.sh trains one; --config-file / --opts MODEL.WEIGHTS choose yours)")


def choose_sam_model(config_file: Optional[str], opts: Sequence[str] = ()) -> ModelChoice:
    """The SAM / GleSAM tab's model: the given config, else the tiny GleSAM configuration (random weights).

    Args:
        config_file: `--sam-config-file`, or None.
        opts: `--sam-opts` overrides.
    """
    if config_file:
        return ModelChoice(config_file, list(opts), f"{config_file} (MODEL.SAM.CHECKPOINT, MODEL.GLESAM.LORA_PATH "
                                                     "as configured)")
    return ModelChoice(project_path(SAM_DEFAULT_CONFIG), list(opts),
                       "no weights configured: the tiny SAM and CRE UNet with RANDOM weights "
                       "(--sam-config-file configs/lqseg/glesam_vitl_sd21.yaml with MODEL.SAM.CHECKPOINT and "
                       "MODEL.GLESAM.LORA_PATH run the released GleSAM)")


def user_message(exc: BaseException) -> Optional[str]:
    """The one-line user message of an exception, or None when it is a bug."""
    err = as_user_error(exc)
    if err is None:
        return None
    return err.message + (f" (hint: {err.hint})" if err.hint else "")


@dataclass
class Loaded:
    """A tab's back end, or why it could not be built.

    Args:
        choice: the config it was built from.
        backend: the back end, or None.
        error: the message shown on the page instead, or None.
    """

    choice: ModelChoice
    backend: Optional[object] = None
    error: Optional[str] = None


def load_backend(choice: ModelChoice, build: Callable[[object], object], seed: int = DEFAULT_INIT_SEED) -> Loaded:
    """Build a tab's back end; a user error (config, weights) becomes the tab's message.

    Parts without weights are initialised from `seed` (`seeded_init`: the process's global RNGs are
    left as they were), so the random-weight demo gives the same masks every time it is started.

    Args:
        choice: the model choice.
        build: config -> back end (`RassBackend.from_cfg` or `SamBackend.from_cfg`).
        seed: seed of the random initialisation.
    """
    try:
        cfg = setup_cfg(choice.config_file, choice.opts)
        with seeded_init(seed):
            return Loaded(choice, backend=build(cfg))
    except Exception as e:  # noqa: BLE001 - the page shows it; the other tab keeps working
        msg = user_message(e)
        if msg is None:
            logger.exception(f"building the model of {choice.config_file} failed")
            msg = f"{type(e).__name__}: {e} (a bug? the server log has the traceback)"
        return Loaded(choice, error=msg)
