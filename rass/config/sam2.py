"""SAM2 / SAM 2.1 and MGD-SAM2 keys (MODEL.SAM2, MODEL.MGD_SAM2)."""
from __future__ import annotations

from detectron2.config import CfgNode as CN

__all__ = ["add_sam2_config", "add_sod_data_config", "add_mgd_sam2_config"]


def add_sam2_config(cfg: CN) -> None:
    """Add the SAM2 / MGD-SAM2 keys to `cfg` in place: MODEL.SAM2 (plain SAM 2.1, "PromptableSAM2") and the rest."""
    s = cfg.MODEL.SAM2 = CN()
    # SAM 2.1 size: "tiny", "small", "base_plus", "large" (the released sam2.1_hiera_*.pt) or "test" (random, CPU tests).
    s.VARIANT = "base_plus"
    # SAM2 weights in facebookresearch/sam2 names (sam2.1_hiera_*.pt, {"model": ...}); "": random weights.
    s.CHECKPOINT = ""
    # Side of SAM2's square input (the image is resized to it, aspect not kept); 1024 for the released weights.
    s.IMAGE_SIZE = 1024
    # Hiera blocks with global attention; []: the variant's (base_plus [12, 16, 20]; MGD-SAM2 uses [12, 16, 10]).
    s.GLOBAL_ATTN_BLOCKS = []
    # Top-down interpolation of the FPN neck: "nearest" (SAM2) or "bilinear" (MGD-SAM2's training).
    s.FPN_INTERP = "nearest"
    # Masks of the decoder's multimask output (SAM2: 3, i.e. 4 mask tokens; MGD-SAM2: 1).
    s.NUM_MULTIMASK_OUTPUTS = 3
    # Object-score head of the mask decoder: "mlp" (SAM 2.1) or "linear" (MGD-SAM2).
    s.OBJ_SCORE_HEAD = "mlp"
    # Decode the multimask outputs and return the one of highest predicted IoU (False: mask token 0).
    s.MULTIMASK_OUTPUT = False
    # Single-mask output falls back to the best multimask output when token 0 is unstable (SAM2's build_sam2 default).
    s.DYNAMIC_MULTIMASK = False
    # RGB pixel mean (0..255 scale; ImageNet's, as SAM2's transforms), subtracted after resizing.
    s.PIXEL_MEAN = [123.675, 116.28, 103.53]
    # RGB pixel std (0..255 scale), divided after subtracting the mean.
    s.PIXEL_STD = [58.395, 57.12, 57.375]
    # Threshold on the mask logits that gives the binary mask (SAM2: 0.0).
    s.MASK_THRESHOLD = 0.0
    # Add "intermediates" to each output dict (decoder logits, IoUs, object scores; see PromptableSAM2).
    s.RETURN_INTERMEDIATES = False
    add_sod_data_config(cfg)
    add_mgd_sam2_config(cfg)


def add_mgd_sam2_config(cfg: CN) -> None:
    """MGD-SAM2 keys (META_ARCHITECTURE "MGDSAM2"; its SAM2 size and pixel mean / std are MODEL.SAM2's; its two
    parameter groups are SOLVER.PARAM_RULES in its configs)."""
    m = cfg.MODEL.MGD_SAM2 = CN()
    # SAM 2.1 checkpoint (sam2.1_hiera_base_plus.pt) that initialises training; "": keep the random SAM2 parts.
    m.SAM2_INIT = ""
    # Hiera blocks with global attention: the release's [12, 16, 10] (SAM 2.1-B+ is [12, 16, 20]; the released
    # weights were trained with [12, 16, 10], so it is kept); []: the SAM2 variant's own.
    m.GLOBAL_ATTN_BLOCKS = [12, 16, 10]
    # FPN top-down interpolation: "bilinear" (what the release trained with: its FpnNeck default) or "nearest".
    m.FPN_INTERP = "bilinear"
    # Square input side S (views of S/2): images are resized to it (bilinear, aspect not kept); multiple of 64.
    m.IMAGE_SIZE = 1024
    # Adapter hidden width = trunk block width // ADAPTER_REDUCTION (the release: 32).
    m.ADAPTER_REDUCTION = 32
    # Weight of the five views' BCE + IoU terms in the training loss (the release: 0.3).
    m.AUX_WEIGHT = 0.3
    # Freeze the Hiera trunk except the adapters (the release).
    m.FREEZE_TRUNK = True
    # Test-time augmentation at inference (the release's test protocol: flip x scales, mean of logits).
    m.TTA = True
    # TTA scales of the input side (the release: 0.75, 1, 1.25); each S * scale must be a multiple of 64.
    m.TTA_SCALES = [0.75, 1.0, 1.25]
    # TTA adds the horizontally flipped passes (the release: True; 2 x len(TTA_SCALES) passes).
    m.TTA_FLIP = True
    # With TTA, MCEM's sine position encoding of every pass is resized from the first pass's (0.75 scale), as the
    # release's cached encoding does at test (reproduced by MCEM's pe_reference_size); False: computed per pass.
    m.PE_CACHE = True
    # Logit threshold of the output "masks" (0.0 = probability 0.5).
    m.MASK_THRESHOLD = 0.0

def add_sod_data_config(cfg: CN) -> None:
    """SOD / DIS data keys of the "mgd_sod" mapper (INPUT.SOD), MGD-SAM2's released values."""
    cfg.INPUT.SOD = CN()
    # Square side the image (and, in training, the mask target) is resized to: image bilinear, mask nearest.
    cfg.INPUT.SOD.IMAGE_SIZE = 1024
    # Base seed of the training augmentations (per process and data-loader worker, re-drawn at every call).
    cfg.INPUT.SOD.SEED = 0
    # Probability of a horizontal flip in training.
    cfg.INPUT.SOD.FLIP_PROB = 0.5
    # Centred training crop removes U{1..CROP_BORDER} pixels from each side length (0: no crop).
    cfg.INPUT.SOD.CROP_BORDER = 30
    # Probability of a training rotation (bicubic image, nearest mask, same size, black corners).
    cfg.INPUT.SOD.ROTATION_PROB = 0.2
    # Rotation angle drawn from U{-ROTATION_DEGREES..ROTATION_DEGREES-1} degrees (the release: -15..14).
    cfg.INPUT.SOD.ROTATION_DEGREES = 15
    # PIL brightness factor range [lo, hi], drawn in 0.1 steps (always applied in training).
    cfg.INPUT.SOD.BRIGHTNESS = [0.5, 1.5]
    # PIL contrast factor range [lo, hi], 0.1 steps.
    cfg.INPUT.SOD.CONTRAST = [0.5, 1.5]
    # PIL colour (saturation) factor range [lo, hi], 0.1 steps.
    cfg.INPUT.SOD.COLOR = [0.0, 2.0]
    # PIL sharpness factor range [lo, hi], 0.1 steps.
    cfg.INPUT.SOD.SHARPNESS = [0.0, 3.0]
