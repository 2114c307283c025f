"""HQ-SAM keys (MODEL.SAM_HQ, read by META_ARCHITECTURE "PromptableSAMHQ") and the prompt-quality protocol keys
(TEST.PROMPT_QUALITY, read by `rass.data.prompt_quality` and tools/eval_robustness_matrix.py)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_sam_hq_config"]


def add_sam_hq_config(cfg: CN) -> None:
    """Add the MODEL.SAM_HQ and TEST.PROMPT_QUALITY keys (defaults: the release's predictor; the protocol of
    `rass.data.prompt_quality`) to `cfg` in place.

    Args:
        cfg: the project config.
    """
    h = cfg.MODEL.SAM_HQ = CN()
    # Released sam_hq_vit_{b,l,h}.pth (SAM + HQ modules, strict); "" = MODEL.SAM.CHECKPOINT + random HQ modules.
    h.CHECKPOINT = ""
    # Output: False = SAM's mask + the HQ mask (logits added; the release predictor's default), True = HQ mask only.
    h.HQ_TOKEN_ONLY = False
    q = cfg.TEST.PROMPT_QUALITY = CN()
    # Prompt protocols evaluated, in order (names of rass.data.prompt_quality.protocol_names; [] = all of them).
    q.PROTOCOLS = []
    # Noise scales s of the noisy-box protocols "box_noise_<s>" (HQ-SAM's box_noise form); each must be >= 0.
    q.BOX_NOISE_SCALES = [0.1, 0.2, 0.4]
    # Numbers of random positive points of the protocols "points_<n>" (uniform over the object's pixels).
    q.NUM_POINTS = [1, 3, 5]
    # Random positive points added to the GT box in the protocol "box_points_<n>".
    q.BOX_POINTS = 3
    # Draws K per object and random protocol; stability = mean pairwise IoU of the object's K masks (1 = no stability).
    q.STABILITY_DRAWS = 5
    # Base seed: each object's prompts derive from (seed, image id, object index, protocol) only.
    q.SEED = 0
