"""Stable-SAM keys (MODEL.STABLE_SAM), read by META_ARCHITECTURE "StableSAM" (`rass.modeling.meta_arch.stable_sam`).

Stable-SAM's code was never published: every value below marked "guess" is a choice the paper leaves
open (docs/STABLE_SAM.md lists them).
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_stable_sam_config"]


def add_stable_sam_config(cfg: CN) -> None:
    """Add the MODEL.STABLE_SAM keys to `cfg` in place.

    Args:
        cfg: the project config.
    """
    s = cfg.MODEL.STABLE_SAM = CN()
    # Plugin file of tools/export_stable_sam.py, loaded onto any SAM of the size it was trained on ("" = untrained plugins = SAM's outputs).
    s.PLUGIN_WEIGHTS = ""
    # "none" (inference, everything frozen) or "rts" (train the plugins only, SAM and GleSAM's enhancer frozen).
    s.STAGE = "none"
    # DSP depth-wise kernel (the paper's figure: 5x5).
    s.DSP_KERNEL_SIZE = 5
    # DSP also predicts a per-cell amplitude (2·sigmoid, 1 at init), as the ICLR text ("offsets and amplitudes"); +257 parameters.
    s.DSP_AMPLITUDES = True
    # DRP hidden width of LN -> Linear -> GELU -> Linear(2) -> softmax (α1 + α2 = 1) on mask token 0 (guess: 24 brings the total to ≈ 0.08 M at C = 256: DSP 73,731 + DRP 6,730 = 80,461).
    s.DRP_HIDDEN_DIM = 24
    # Fixed routing (α1 deformable, α2 regular grid) instead of the DRP's softmax, e.g. [0.0, 1.0] = SAM; [] = dynamic.
    s.FIXED_ROUTING = []
    # RTS: prompts drawn per sample from the GT mask on the model side; the target is always the whole object (our ambiguity rule).
    s.RTS = CN()
    # Probability that a training sample gets a noisy box (else 1-3 points) (guess: 0.5).
    s.RTS.BOX_PROB = 0.5
    # HQ-SAM box_noise scale range, drawn uniformly per box (guess; HQ-SAM's own default scale is 0.05); must be >= 0.
    s.RTS.BOX_NOISE_RANGE = [0.1, 0.5]
    # Number of random positive points per point prompt, uniform in [min, max] (the issue: 1-3).
    s.RTS.NUM_POINTS_RANGE = [1, 3]
    # Points per mask of the point-sampled BCE + Dice (HQ-SAM: 112 * 112).
    s.RTS.NUM_POINTS = 12544
    # Candidate points per sampled point (HQ-SAM: 3).
    s.RTS.OVERSAMPLE_RATIO = 3.0
    # Fraction of the points picked by uncertainty (HQ-SAM: 0.75).
    s.RTS.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Weight of the BCE term (HQ-SAM: 1).
    s.RTS.BCE_WEIGHT = 1.0
    # Weight of the Dice term (HQ-SAM: 1).
    s.RTS.DICE_WEIGHT = 1.0
