"""GleSAM's training losses (facts: reference/glesam_method.md §5). Pure functions; the stage-1
release recipe (DMD2 + GAN, needs UNets) is in `dmd.py`.

Stage 2 (`train_glesam_decoder.py`, `utils/loss.py` of the release, = RobustSAM's):
    L_seg = Dice + Focal (1:1) on `low_res_logits` bilinearly upsampled to the target's size,
    the target a *soft* mask in [0, 1] (a bilinear resize of the 0/255 mask to 512×512, / 255,
    not re-binarised: `release_mask_target`).
    Dice  = 1 − (2Σσ(p)g + 1e-6) / (Σσ(p) + Σg + 1e-6), per sample, then the mean.
    Focal = mean over pixels of α·(1 − pt)^γ·ce, ce = BCE-with-logits, pt = exp(−ce), α = 0.25, γ = 2.
            α multiplies EVERY pixel (positive and negative alike) — the release's form (§10.14), not
            the RetinaNet form α·g + (1 − α)·(1 − g); with α constant it only scales the focal term.
Stage 1 (the paper's reconstruction loss, eq. 5, as the release computes it):
    L_mse = mean((x0 − γ·z_H)²), x0 the UNet's one-step prediction in the γ-scaled space.
Differences from the release (on purpose): batches > 1 work (the release only uses the first
sample's logits, §10.7); the losses are computed in float32 whatever the input dtype.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["RELEASE_MASK_SIZE", "release_dice_loss", "release_focal_loss", "release_mask_target",
           "segmentation_loss", "reconstruction_loss"]

# Side of the square stage-2 target (the release resizes every mask to 512×512, `out_size: 512`).
RELEASE_MASK_SIZE = 512
_SMOOTH = 1e-6


def _check_pair(logits: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if logits.shape != target.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same "
                         "shape (upsample the logits first: segmentation_loss does)")
    if logits.dim() < 2:
        raise ValueError(f"{name}: expected a batch B x ... of logits, got shape {tuple(logits.shape)}")


def release_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice loss of the release: 1 − (2Σσ(p)g + 1e-6)/(Σσ(p) + Σg + 1e-6) per sample, mean over the batch.

    Args:
        logits: B x ... mask logits.
        target: same shape, values in [0, 1] (soft targets allowed).

    Returns:
        A float32 scalar.
    """
    _check_pair(logits, target, "release_dice_loss")
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    dice = (2.0 * (p * g).sum(1) + _SMOOTH) / (p.sum(1) + g.sum(1) + _SMOOTH)
    return (1.0 - dice).mean()


def release_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Focal loss of the release: mean over all pixels of α·(1 − pt)^γ·ce (α on every pixel).

    ce = BCE-with-logits(p, g) per pixel, pt = exp(−ce). Unlike RetinaNet's α·g + (1 − α)·(1 − g)
    weighting, the release multiplies every pixel by the same α (see the module doc).

    Args:
        logits: B x ... mask logits.
        target: same shape, values in [0, 1].
        alpha: the constant weight (0.25 as released).
        gamma: the focusing exponent (2 as released).

    Returns:
        A float32 scalar.
    """
    _check_pair(logits, target, "release_focal_loss")
    ce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    pt = torch.exp(-ce)
    return (alpha * (1.0 - pt) ** gamma * ce).mean()


def release_mask_target(mask: torch.Tensor, size: Union[int, Sequence[int]] = RELEASE_MASK_SIZE,
                        quantize: bool = True) -> torch.Tensor:
    """The stage-2 target the release trains on: the 0/255 mask bilinearly resized, / 255, NOT re-binarised.

    The release does `cv2.resize(mask, (512, 512))` (bilinear, half-pixel centres, no antialiasing) on
    the uint8 mask and divides by 255; here torch's bilinear resize (align_corners=False) does the same,
    rounded to 1/255 steps like the uint8 result when `quantize` (cv2's fixed-point arithmetic may
    differ by one step on some pixels).

    Args:
        mask: H x W, B x H x W or B x 1 x H x W; bool, uint8 0/255, or float in [0, 1].
        size: output side (int) or (height, width).
        quantize: round to multiples of 1/255 as the uint8 release target.

    Returns:
        float32 B x 1 x h x w (B = 1 for an H x W input) with values in [0, 1].
    """
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"release_mask_target: expected an H x W, B x H x W or B x 1 x H x W mask, got "
                         f"{tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        m = mask.float()
    elif mask.dtype == torch.uint8:
        m = mask.float() / 255.0
    elif mask.is_floating_point():
        if mask.numel() and (mask.min() < 0 or mask.max() > 1):
            raise ValueError(f"release_mask_target: a float mask must lie in [0, 1], got values in "
                             f"[{mask.min().item():g}, {mask.max().item():g}] (pass uint8 for a 0/255 mask)")
        m = mask.float()
    else:
        raise ValueError(f"release_mask_target: mask dtype {mask.dtype} not supported "
                         "(bool, uint8 0/255 or float 0..1)")
    hw: Tuple[int, int] = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    out = F.interpolate(m, size=hw, mode="bilinear", align_corners=False)
    if quantize:
        out = torch.round(out * 255.0) / 255.0
    return out.clamp_(0.0, 1.0)


def segmentation_loss(low_res_logits: torch.Tensor, target_mask: torch.Tensor, dice_weight: float = 1.0,
                      focal_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """The stage-2 loss: Dice + Focal (1:1) on the logits bilinearly upsampled to the target's size.

    Args:
        low_res_logits: B x 1 x h x w (SAM's `low_res_logits` / `pred_masks`, one mask per sample).
        target_mask: B x 1 x H x W (or B x H x W) float mask in [0, 1] (`release_mask_target`).
        dice_weight: weight of the Dice term (1 as released).
        focal_weight: weight of the focal term (1 as released).

    Returns:
        {"loss_dice", "loss_focal", "loss_mask"}: the two weighted terms and their sum (float32 scalars).
    """
    if target_mask.dim() == 3:
        target_mask = target_mask[:, None]
    if low_res_logits.dim() != 4 or low_res_logits.shape[1] != 1:
        raise ValueError(f"segmentation_loss: expected B x 1 x h x w logits (one mask per sample), got "
                         f"{tuple(low_res_logits.shape)}")
    if target_mask.dim() != 4 or target_mask.shape[:2] != low_res_logits.shape[:2]:
        raise ValueError(f"segmentation_loss: target {tuple(target_mask.shape)} does not match logits "
                         f"{tuple(low_res_logits.shape)} (expected B x 1 x H x W with the same B)")
    if not target_mask.is_floating_point():
        raise ValueError(f"segmentation_loss: the target must be a float mask in [0, 1], got {target_mask.dtype} "
                         "(use release_mask_target)")
    logits = F.interpolate(low_res_logits.float(), size=tuple(target_mask.shape[-2:]), mode="bilinear",
                           align_corners=False)
    dice = dice_weight * release_dice_loss(logits, target_mask)
    focal = focal_weight * release_focal_loss(logits, target_mask)
    return {"loss_dice": dice, "loss_focal": focal, "loss_mask": dice + focal}


def reconstruction_loss(x0: torch.Tensor, z_clean: torch.Tensor, feat_weight: float) -> torch.Tensor:
    """Stage-1 "paper" loss: mean((x0 − γ·z_H)²) (the release's `loss_mse`; = γ²·||ẑ_H − z_H||² / N).

    Args:
        x0: the one-step prediction in the γ-scaled space (B x C x h x w), with gradient.
        z_clean: z_H, SAM's embedding of the clean image (same shape; no gradient is taken).
        feat_weight: γ (MODEL.GLESAM.FEAT_WEIGHT, > 0).

    Returns:
        A float32 scalar.
    """
    if x0.shape != z_clean.shape:
        raise ValueError(f"reconstruction_loss: x0 {tuple(x0.shape)} and z_clean {tuple(z_clean.shape)} differ")
    if not feat_weight > 0:
        raise ValueError(f"reconstruction_loss: feat_weight (MODEL.GLESAM.FEAT_WEIGHT) must be > 0, got {feat_weight}")
    return F.mse_loss(x0.float(), feat_weight * z_clean.detach().float())
