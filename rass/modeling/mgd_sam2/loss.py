"""MGD-SAM2's training loss (the release's `loss: iou`, `models/sam.py: backward_G`).

`L = BCE(M, GT) + IoU(M, GT) + aux_weight * [BCE(M_v, GT_v) + IoU(M_v, GT_v)]` where M are the DRM
logits at the input resolution, M_v the mask decoder's logits of the 5 views bilinearly resized to the
view size, and GT_v the views' ground truth (`gt_views`). GT are float masks in [0, 1].
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from rass.utils.errors import UserValueError

from .views import gt_views

__all__ = ["soft_iou_loss", "mgd_sam2_losses"]


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over masks of `1 - sum(p t) / (sum(p + t) - sum(p t))`, p = sigmoid(logits).

    As released (no smoothing term): a mask with an empty target costs 1 whatever is predicted. The
    union is only clamped away from 0 (prediction underflowing to 0 on an empty target), where the
    release would give NaN; elsewhere the value is the release's.

    Args:
        logits: [N, C, H, W].
        target: [N, C, H, W] in [0, 1].
    """
    p = logits.sigmoid()
    inter = (p * target).sum(dim=(2, 3))
    union = ((p + target).sum(dim=(2, 3)) - inter).clamp_min(torch.finfo(p.dtype).tiny)
    return (1.0 - inter / union).mean()


def mgd_sam2_losses(mask_logits: torch.Tensor, view_logits: torch.Tensor, gt: torch.Tensor,
                    aux_weight: float = 0.3) -> Dict[str, torch.Tensor]:
    """The four weighted terms of MGD-SAM2's loss (their sum is the release's loss).

    Args:
        mask_logits: [B, 1, H, W] final (DRM) logits at the input resolution.
        view_logits: [5B, 1, h, w] the mask decoder's logits of the 5 views (any h, w; resized
            bilinearly to the view size H/2 x W/2).
        gt: [B, 1, H, W] float ground truth in [0, 1].
        aux_weight: weight of the view terms (0.3).

    Returns:
        {"loss_bce", "loss_iou", "loss_bce_views", "loss_iou_views"}, the last two already weighted.
    """
    if mask_logits.shape != gt.shape:
        raise UserValueError(f"MGD-SAM2 loss: mask logits {tuple(mask_logits.shape)} and ground truth "
                             f"{tuple(gt.shape)} must have the same shape")
    if view_logits.shape[0] != 5 * gt.shape[0]:
        raise UserValueError(f"MGD-SAM2 loss: expected {5 * gt.shape[0]} view masks for {gt.shape[0]} images, "
                             f"got {view_logits.shape[0]}")
    lo, hi = float(gt.min()), float(gt.max())
    if lo < 0.0 or hi > 1.0:
        raise UserValueError(f"MGD-SAM2 loss: ground-truth masks must lie in [0, 1], got values in [{lo}, {hi}]")
    gt = gt.to(mask_logits.dtype)
    gt_v = gt_views(gt)
    view_logits = F.interpolate(view_logits, size=gt_v.shape[-2:], mode="bilinear", align_corners=False)
    return {
        "loss_bce": F.binary_cross_entropy_with_logits(mask_logits, gt),
        "loss_iou": soft_iou_loss(mask_logits, gt),
        "loss_bce_views": aux_weight * F.binary_cross_entropy_with_logits(view_logits, gt_v),
        "loss_iou_views": aux_weight * soft_iou_loss(view_logits, gt_v),
    }
