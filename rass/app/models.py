"""Which models the browser demo's tabs (and demo/demo_sam.py) run, and the demo's user-error type.

Without a config each tab runs the quickstart's trained model when scripts/quickstart.sh has written
it (the RASS tab: output/quickstart/model_final.pth; the SAM / GleSAM tab:
output/quickstart/promptable/model_final.pth), else a tiny configuration with random weights, which
the page labels "results are not meaningful". A tab whose model cannot be built (a missing weights
file, a wrong config) keeps the message, which the page shows; the other tab still works.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from rass.config import setup_cfg
from rass.engine.model_build import DEFAULT_INIT_SEED, seeded_init
from rass.utils.cli import as_user_error
from rass.utils.errors import UserError
from rass.utils.paths import project_path

__all__ = ["AppError", "user_message", "ModelChoice", "choose_rass_model", "choose_sam_model", "choose_mgd_model",
           "choose_robustsam_model", "choose_extra_sam_model",
           "Loaded",
           "load_backend", "Progress", "with_quickstart_weights", "is_quickstart_promptable_config",
           "QUICKSTART_WEIGHTS", "QUICKSTART_PROMPTABLE_WEIGHTS", "QUICKSTART_PROMPTABLE_CONFIG"]

logger = logging.getLogger(__name__)

RASS_DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"
SAM_DEFAULT_CONFIG = "configs/lqseg/tiny_glesam.yaml"
QUICKSTART_WEIGHTS = "output/quickstart/model_final.pth"
# The quickstart's tiny promptable (SAM-shaped) model and the config it was trained with.
QUICKSTART_PROMPTABLE_CONFIG = "configs/quickstart/tiny_promptable.yaml"
QUICKSTART_PROMPTABLE_WEIGHTS = "output/quickstart/promptable/model_final.pth"
# progress(fraction done, name of the stage that starts now): how a long step reports itself (the page
# passes gradio's progress bar).
Progress = Callable[[float, str], object]
# How a tab's weights were chosen (`ModelChoice.source`).
SOURCES = ("configured", "quickstart", "random")


class AppError(UserError, ValueError):
    """A problem with what the user gave the demo (shown on the page as its message)."""


@dataclass
class ModelChoice:
    """The config a tab runs and how it was chosen.

    Args:
        config_file: the YAML config.
        opts: `KEY VALUE` overrides.
        origin: one sentence on where the weights come from (the page's technical details).
        source: "configured" (the user's config), "quickstart" (the quickstart's trained model) or
            "random" (a tiny configuration with random weights); the page's plain-language status.
    """

    config_file: str
    opts: List[str]
    origin: str
    source: str = "configured"


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
                           "no weights were configured", source="quickstart")
    return ModelChoice(project_path(RASS_DEFAULT_CONFIG), opts,
                       "no weights configured: the tiny RASS configuration with RANDOM weights "
                       "(scripts/quickstart.sh trains one; --config-file / --opts MODEL.WEIGHTS choose yours)",
                       source="random")


def is_quickstart_promptable_config(config_file: str) -> bool:
    """Whether `config_file` is the quickstart's promptable config (configs/quickstart/tiny_promptable.yaml)."""
    return os.path.realpath(config_file) == os.path.realpath(project_path(QUICKSTART_PROMPTABLE_CONFIG))


def with_quickstart_weights(config_file: str, opts: Sequence[str] = (),
                            quickstart_weights: Optional[str] = None) -> Tuple[List[str], Optional[str]]:
    """`opts` plus MODEL.WEIGHTS of the quickstart's trained promptable model when `config_file` is the
    quickstart's promptable config, no MODEL.WEIGHTS is given and scripts/quickstart.sh has written
    the model; else `opts` as they are.

    Args:
        config_file: the config.
        opts: `KEY VALUE` overrides.
        quickstart_weights: where the quickstart writes the model (default: the repository's
            output/quickstart/promptable/model_final.pth).

    Returns:
        (the overrides, the weights file added or None).
    """
    opts = list(opts)
    weights = quickstart_weights or project_path(QUICKSTART_PROMPTABLE_WEIGHTS)
    if is_quickstart_promptable_config(config_file) and not _has_key(opts, "MODEL.WEIGHTS") \
            and os.path.isfile(weights):
        return ["MODEL.WEIGHTS", weights] + opts, weights
    return opts, None


def choose_sam_model(config_file: Optional[str], opts: Sequence[str] = (),
                     quickstart_weights: Optional[str] = None) -> ModelChoice:
    """The SAM / GleSAM tab's model: the given config (the quickstart's promptable config without
    MODEL.WEIGHTS means its trained model), else the quickstart's trained tiny promptable model when
    `scripts/quickstart.sh` has written it, else the tiny GleSAM configuration (random weights).

    Args:
        config_file: `--sam-config-file`, or None.
        opts: `--sam-opts` overrides.
        quickstart_weights: where the quickstart writes its promptable model (default: the repository's
            output/quickstart/promptable/model_final.pth).
    """
    opts = list(opts)
    candidate = config_file or project_path(QUICKSTART_PROMPTABLE_CONFIG)
    quick_opts, weights = with_quickstart_weights(candidate, opts, quickstart_weights)
    if weights is not None:
        return ModelChoice(candidate, quick_opts,
                           f"the quickstart's tiny promptable model ({QUICKSTART_PROMPTABLE_WEIGHTS}, trained on "
                           f"generated object images, config {QUICKSTART_PROMPTABLE_CONFIG})", source="quickstart")
    if config_file:
        return ModelChoice(config_file, opts, f"{config_file} (MODEL.SAM.CHECKPOINT, MODEL.GLESAM.LORA_PATH "
                                              "as configured)")
    return ModelChoice(project_path(SAM_DEFAULT_CONFIG), opts,
                       "no weights configured: the tiny SAM and CRE UNet with RANDOM weights "
                       "(scripts/quickstart.sh trains a tiny one; --sam-config-file "
                       "configs/lqseg/glesam_vitl_sd21.yaml "
                       "with MODEL.SAM.CHECKPOINT and MODEL.GLESAM.LORA_PATH run the released GleSAM)",
                       source="random")


def choose_mgd_model(config_file: Optional[str], opts: Sequence[str] = ()) -> ModelChoice:
    """The MGD-SAM2 tab's model: the given MGD-SAM2 config (MODEL.WEIGHTS: MGD-SAM2's weights; the SAM2 it is
    compared with gets MODEL.MGD_SAM2.SAM2_INIT, see `rass.app.mgd_tab.sam2_cfg_of`), else the tiny MGD-SAM2
    and tiny SAM2 with random weights, one pass (MODEL.MGD_SAM2.TTA False).

    Args:
        config_file: `--mgd-config-file`, or None.
        opts: `--mgd-opts` overrides.
    """
    from rass.app.mgd_tab import MGD_DEFAULT_CONFIG

    opts = list(opts)
    if config_file:
        return ModelChoice(config_file, opts, f"{config_file} (MGD-SAM2: MODEL.WEIGHTS; SAM2 for the box: "
                                              "MODEL.MGD_SAM2.SAM2_INIT, as configured)")
    return ModelChoice(project_path(MGD_DEFAULT_CONFIG), ["MODEL.MGD_SAM2.TTA", "False"] + opts,
                       "no weights configured: the tiny MGD-SAM2 and the tiny SAM2 with RANDOM weights, one pass "
                       "without test-time augmentation (--mgd-config-file configs/dis5k/mgd_sam2_hiera_b+.yaml with "
                       "--mgd-opts MODEL.WEIGHTS model_epoch_best.pth MODEL.MGD_SAM2.SAM2_INIT "
                       "sam2.1_hiera_base_plus.pt runs the released MGD-SAM2 and SAM 2.1)", source="random")


def choose_robustsam_model(config_file: str, opts: Sequence[str] = ()) -> ModelChoice:
    """The SAM tab's optional third mask: the given RobustSAM config (MODEL.ROBUSTSAM.CHECKPOINT, a released
    robustsam_checkpoint_*.pth; or MODEL.SAM.CHECKPOINT with random robust modules; or a project checkpoint in
    MODEL.WEIGHTS). There is no default: without `--robustsam-config-file` the page has no RobustSAM mask.

    Args:
        config_file: `--robustsam-config-file`.
        opts: `--robustsam-opts` overrides.
    """
    return ModelChoice(config_file, list(opts), f"{config_file} (RobustSAM: MODEL.ROBUSTSAM.CHECKPOINT or "
                                                f"MODEL.SAM.CHECKPOINT, and MODEL.WEIGHTS, as configured)")


def choose_extra_sam_model(name: str, config_file: str, opts: Sequence[str] = ()) -> ModelChoice:
    """An added mask of the SAM tab (`--extra-sam-config NAME=CONFIG`): Stable-SAM, HQ-SAM, RobustSAM or another
    SAM / GleSAM with its own weights (e.g. MODEL.STABLE_SAM.PLUGIN_WEIGHTS with MODEL.SAM.CHECKPOINT, or
    MODEL.SAM_HQ.CHECKPOINT). There is no default: without the flag the page has no such mask.

    Args:
        name: the mask's name on the page (e.g. "Stable-SAM").
        config_file: its config.
        opts: its overrides (`--extra-sam-opts NAME KEY VALUE ...`).
    """
    given = " ".join(opts[0::2]) if opts else "none"
    return ModelChoice(config_file, list(opts), f"{config_file} ({name}; overrides: {given})")


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
