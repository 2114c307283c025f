"""Hungarian matching of predicted masks to ground-truth segments (Mask2Former).

The cost of assigning query q to target t is
    w_class * (-p_q(class_t)) + w_mask * BCE(mask_q, mask_t) + w_dice * Dice(mask_q, mask_t),
with both mask terms evaluated on the same random points for all pairs of one image.
The assignment minimising the total cost is found with scipy's `linear_sum_assignment`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from scipy.optimize import linear_sum_assignment
from torch import nn

from rass.utils.errors import UserValueError

from .point_sampling import SeededPointGenerator, point_sample

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost", "solve_assignment"]


def batch_dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise Dice loss: Q x P logits, T x P binary targets -> Q x T, `1 - (2|p.t|+1)/(|p|+|t|+1)`."""
    probs = logits.sigmoid()
    overlap = probs @ targets.t()
    total = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (2.0 * overlap + 1.0) / (total + 1.0)


def batch_sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Pairwise mean binary cross-entropy: Q x P logits, T x P targets -> Q x T."""
    num_points = logits.shape[1]
    loss_if_fg = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    loss_if_bg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (loss_if_fg @ targets.t() + loss_if_bg @ (1.0 - targets).t()) / num_points


def solve_assignment(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of rows to columns.

    Args:
        cost: R x C matrix (any device); every entry must be finite.

    Returns:
        (row indices, column indices) as int64 tensors on the CPU, rows increasing;
        min(R, C) pairs.
    """
    cost = cost.detach().float().cpu()
    if not torch.isfinite(cost).all():
        raise ValueError(
            "HungarianMatcher: the matching cost has NaN/inf entries; the predictions are not finite "
            "(diverged training or bad input)"
        )
    rows, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


class HungarianMatcher(nn.Module):
    """One-to-one matching between queries and targets, per image.

    Args:
        cost_class: weight of the class term.
        cost_mask: weight of the sigmoid BCE term.
        cost_dice: weight of the Dice term.
        num_points: random points on which masks are compared.
        seed: seed of the point generator.
    """

    @configurable
    def __init__(self, cost_class: float = 1.0, cost_mask: float = 1.0, cost_dice: float = 1.0,
                 num_points: int = 0, seed: int = 0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise UserValueError("HungarianMatcher: all cost weights are 0")
        if num_points <= 0:
            raise UserValueError(f"HungarianMatcher: num_points must be > 0, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.points = SeededPointGenerator(seed)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "cost_class": mf.CLASS_WEIGHT,
            "cost_mask": mf.MASK_WEIGHT,
            "cost_dice": mf.DICE_WEIGHT,
            "num_points": mf.TRAIN_NUM_POINTS,
            # Each process draws its own points.
            "seed": mf.POINT_SAMPLE_SEED + 2 * comm.get_rank(),
        }

    @torch.no_grad()
    def cost_matrix(
        self,
        pred_logits: torch.Tensor,
        pred_masks: torch.Tensor,
        tgt_labels: torch.Tensor,
        tgt_masks: torch.Tensor,
        coords: torch.Tensor,
    ) -> torch.Tensor:
        """Matching cost of one image.

        Args:
            pred_logits: Q x (K+1) class logits.
            pred_masks: Q x h x w mask logits.
            tgt_labels: T class ids.
            tgt_masks: T x H x W binary masks.
            coords: P x 2 points (x, y) in [0, 1] shared by all masks.

        Returns:
            Q x T cost (float32).
        """
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            probs = pred_logits.float().softmax(-1)
            cost_class = -probs[:, tgt_labels]
            pts_pred = point_sample(pred_masks[:, None].float(), coords[None].expand(pred_masks.shape[0], -1, -1))
            pts_tgt = point_sample(tgt_masks[:, None].float(), coords[None].expand(tgt_masks.shape[0], -1, -1))
            pts_pred, pts_tgt = pts_pred[:, 0], pts_tgt[:, 0]
            cost = self.cost_class * cost_class
            cost = cost + self.cost_mask * batch_sigmoid_ce_cost(pts_pred, pts_tgt)
            cost = cost + self.cost_dice * batch_dice_cost(pts_pred, pts_tgt)
        return cost

    @torch.no_grad()
    def forward(self, outputs: Dict[str, torch.Tensor], targets: Sequence[Dict[str, torch.Tensor]]
                ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Match every image.

        Args:
            outputs: "pred_logits" N x Q x (K+1), "pred_masks" N x Q x h x w.
            targets: N dicts with "labels" (T) and "masks" (T x H x W).

        Returns:
            N pairs (query indices, target indices), int64 on the CPU, min(Q, T) long each.
        """
        logits, masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"HungarianMatcher: {logits.shape[0]} predictions but {len(targets)} targets")
        result = []
        for b, tgt in enumerate(targets):
            labels = tgt["labels"]
            if labels.numel() == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                result.append((empty, empty.clone()))
                continue
            coords = self.points.rand(self.num_points, 2, device=masks.device)
            cost = self.cost_matrix(logits[b], masks[b], labels, tgt["masks"].to(masks.device), coords)
            result.append(solve_assignment(cost))
        return result

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
            f"num_points={self.num_points}, seed={self.points.seed}"
        )
