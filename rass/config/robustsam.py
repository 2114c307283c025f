"""RobustSAM keys (MODEL.ROBUSTSAM), read by META_ARCHITECTURE "RobustSAM" (`rass.modeling.meta_arch.robustsam`)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_robustsam_config"]


def add_robustsam_config(cfg: CN) -> None:
    """Add the MODEL.ROBUSTSAM keys (defaults: the release's training recipe) to `cfg` in place.

    Args:
        cfg: the project config.
    """
    r = cfg.MODEL.ROBUSTSAM = CN()
    # Released robustsam_checkpoint_{b,l,h}.pth (SAM + robust modules, strict); "": MODEL.SAM.CHECKPOINT + random ones.
    r.CHECKPOINT = ""
    # Train SAM's mask decoder + the robust modules with the release's losses (False: inference only).
    r.TRAIN = False
    # Weight of the Focal loss (gamma 2, alpha 0.25 on every pixel) of the robust mask vs the GT (release: 20).
    r.FOCAL_WEIGHT = 20.0
    # Weight of the Dice loss of the robust mask vs the GT (release: 1).
    r.DICE_WEIGHT = 1.0
    # Weight of the MSE between the robust tokens (degraded copy) and SAM's mask tokens (clear copy) (release: 2).
    r.TOKEN_WEIGHT = 2.0
    # Weight of the MSE between the fused mask features of the degraded and clear copies (release: 100).
    r.EMBEDDING_WEIGHT = 100.0
    # Set NaN gradient entries to 0 before the optimiser step, as the release does.
    r.ZERO_NAN_GRADS = True
