"""Project configuration: every key RASS adds to detectron2's defaults, and `setup_cfg`.

Each key carries a one-line comment. Keys are grouped by the part of the project that reads
them; a module reads the config only in its `from_config`.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = ["add_rass_config", "setup_cfg"]


def _add_data_config(cfg: CN) -> None:
    """Data loading, augmentation and dataset keys."""
    # Name of the dataset mapper used for training ("rass_semantic").
    cfg.INPUT.DATASET_MAPPER_NAME = "rass_semantic"
    # Apply SSD-style colour augmentation (brightness/contrast/saturation/hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # Retry random crops until no single category covers more than this fraction of the crop.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Pad images/labels to this size in the mapper (-1: no padding in the mapper).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Check that every label value is in 0..NUM_CLASSES-1 or IGNORE_VALUE when it is loaded.
    cfg.INPUT.VALIDATE_LABELS = True


def _add_solver_config(cfg: CN) -> None:
    """Optimiser keys (AdamW with a backbone learning-rate multiplier)."""
    # Optimiser: "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # Learning-rate multiplier for every parameter under `backbone.`.
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Weight decay of embedding parameters (query embeddings, level embeddings).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Power of the polynomial LR decay (WarmupPolyLR).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Constant ending of WarmupPolyLR (0: decays to zero).
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0


def _add_test_config(cfg: CN) -> None:
    """Evaluation and output keys."""
    # Number of prediction/ground-truth overlay PNGs written after an evaluation (0: none).
    cfg.TEST.NUM_VIS = 0


def _add_mask_former_config(cfg: CN) -> None:
    """Mask2Former head keys (meta-architecture, pixel decoder, transformer decoder, loss)."""


def _add_degradation_config(cfg: CN) -> None:
    """Online degradation keys (INPUT.DEGRADATION)."""


def _add_backbone_config(cfg: CN) -> None:
    """Restoration-adapted diffusion backbone keys (MODEL.RASS)."""


def _add_tagger_config(cfg: CN) -> None:
    """Image tagger keys (RAM / DAPE prompts)."""
    cfg.MODEL.TAGGER = CN()
    # Registered tagger producing the UNet text prompts: "none" (fixed prompt), "ram" or "dape".
    cfg.MODEL.TAGGER.NAME = "none"
    # The prompt of the "none" tagger (the release's empty prompt when no tagger is used).
    cfg.MODEL.TAGGER.PROMPT = ""
    # Which image the tagger reads: "clean_train_lq_test" (as released) or "lq" (always the LQ input).
    cfg.MODEL.TAGGER.INPUT = "clean_train_lq_test"


def add_rass_config(cfg: CN) -> None:
    """Add every RASS key (with its default) to a detectron2 config, in place.

    Args:
        cfg: a detectron2 `CfgNode`, usually from `detectron2.config.get_cfg()`.
    """
    _add_data_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    _add_mask_former_config(cfg)
    _add_degradation_config(cfg)
    _add_backbone_config(cfg)
    _add_tagger_config(cfg)


def setup_cfg(config_file: Optional[str] = None, opts: Sequence[str] = (), freeze: bool = True) -> CN:
    """Build the project config: detectron2 defaults + RASS keys + a YAML file + overrides.

    YAML files are read with a safe loader (no Python tags). An unknown key, in the file or in
    `opts`, raises a `KeyError` that names the key and where it came from.

    Args:
        config_file: path of a YAML config (may use `_BASE_`), or None for the defaults.
        opts: trailing `KEY VALUE` overrides, as given on the command line.
        freeze: return a frozen config.

    Returns:
        The config.
    """
    cfg = get_cfg()
    add_rass_config(cfg)
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file not found: {config_file}")
        try:
            cfg.merge_from_file(config_file, allow_unsafe=False)
        except KeyError as e:
            raise KeyError(f"{config_file}: {e.args[0] if e.args else e} (not a detectron2/RASS config key)") from e
    if opts:
        if len(opts) % 2:
            raise ValueError(f"Overrides must be KEY VALUE pairs, got an odd number of items: {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:
            raise KeyError(f"command-line override: {e.args[0] if e.args else e} (not a detectron2/RASS config key)") from e
    if freeze:
        cfg.freeze()
    return cfg
