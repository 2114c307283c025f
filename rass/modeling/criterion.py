"""Set criterion of Mask2Former: Hungarian matching, then class and mask losses per matched pair.

Losses (unweighted; `weight_dict` holds the weights, applied by the meta-architecture):
- "loss_ce": cross-entropy over K+1 classes for every query; unmatched queries are "no object"
  (class K), whose weight is `eos_coef`.
- "loss_mask": sigmoid BCE of matched masks on sampled points (PointRend importance sampling).
- "loss_dice": Dice loss on the same points.
Both mask losses are summed over matched masks and divided by the number of target masks
(averaged over processes). With deep supervision the same losses are added for every auxiliary
output with the suffix "_{i}".
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import SeededPointGenerator, point_sample, sample_uncertain_points

__all__ = ["SetCriterion", "dice_loss", "sigmoid_ce_loss", "build_loss_weights"]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of `1 - (2|p.t| + 1) / (|p| + |t| + 1)`, divided by `num_masks`.

    Args:
        logits: M x P mask logits.
        targets: M x P targets in [0, 1].
        num_masks: normaliser.
    """
    probs = logits.sigmoid()
    score = (2.0 * (probs * targets).sum(-1) + 1.0) / (probs.sum(-1) + targets.sum(-1) + 1.0)
    return (1.0 - score).sum() / num_masks


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Sum over masks of the mean per-point BCE with logits, divided by `num_masks`."""
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return per_point.mean(1).sum() / num_masks


def build_loss_weights(class_weight: float, mask_weight: float, dice_weight: float,
                       deep_supervision: bool, dec_layers: int) -> Dict[str, float]:
    """Weights of every loss term: the final layer's, and `_{i}` copies for the `dec_layers - 1`
    auxiliary outputs when `deep_supervision`."""
    base = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    weights = dict(base)
    if deep_supervision:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
    return weights


class SetCriterion(nn.Module):
    """Losses of mask classification with bipartite matching.

    Args:
        num_classes: K (without "no object").
        matcher: the Hungarian matcher.
        weight_dict: loss name -> weight.
        eos_coef: class weight of "no object".
        losses: which losses to compute, among "labels" and "masks".
        num_points: points per mask for the mask losses.
        oversample_ratio: candidates per point for importance sampling.
        importance_sample_ratio: fraction of points chosen by uncertainty.
        seed: seed of the point generator.
    """

    @configurable
    def __init__(
        self,
        num_classes: int,
        *,
        matcher: nn.Module,
        weight_dict: Dict[str, float],
        eos_coef: float,
        losses: Sequence[str] = ("labels", "masks"),
        num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        seed: int = 0,
    ):
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; known: ['labels', 'masks']")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = list(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.points = SeededPointGenerator(seed)

    @classmethod
    def from_config(cls, cfg, num_classes: Optional[int] = None) -> Dict:
        mf = cfg.MODEL.MASK_FORMER
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if num_classes is None else num_classes,
            "matcher": HungarianMatcher(cfg),
            "weight_dict": build_loss_weights(
                mf.CLASS_WEIGHT, mf.MASK_WEIGHT, mf.DICE_WEIGHT, mf.DEEP_SUPERVISION, mf.DEC_LAYERS
            ),
            "eos_coef": mf.NO_OBJECT_WEIGHT,
            "losses": ["labels", "masks"],
            "num_points": mf.TRAIN_NUM_POINTS,
            "oversample_ratio": mf.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mf.IMPORTANCE_SAMPLE_RATIO,
            # Each process draws its own points (and not the matcher's).
            "seed": mf.POINT_SAMPLE_SEED + 2 * comm.get_rank() + 1,
        }

    @staticmethod
    def _matched_queries(indices: List[Tuple[torch.Tensor, torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        return batch, torch.cat([src for src, _ in indices])

    def loss_labels(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Cross-entropy over K+1 classes; unmatched queries are assigned "no object"."""
        logits = outputs["pred_logits"].float()
        batch_idx, query_idx = self._matched_queries(indices)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        matched = [t["labels"][tgt.to(t["labels"].device)] for t, (_, tgt) in zip(targets, indices)]
        if matched:
            classes[batch_idx.to(logits.device), query_idx.to(logits.device)] = torch.cat(matched).to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), classes, self.empty_weight.to(logits.dtype))
        return {"loss_ce": loss}

    def loss_masks(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        """Sigmoid BCE and Dice of matched masks on importance-sampled points."""
        pred = outputs["pred_masks"]
        batch_idx, query_idx = self._matched_queries(indices)
        if query_idx.numel() == 0:
            zero = pred.sum() * 0.0  # keeps the graph connected when a batch has no target mask
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        src = pred[batch_idx.to(pred.device), query_idx.to(pred.device)][:, None].float()
        tgt = torch.cat(
            [t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)]
        ).to(device=src.device, dtype=torch.float32)[:, None]
        with torch.autocast(device_type=src.device.type, enabled=False):
            with torch.no_grad():
                coords = sample_uncertain_points(
                    src, self.num_points, self.oversample_ratio, self.importance_sample_ratio, self.points
                )
                labels = point_sample(tgt, coords)[:, 0]
            logits = point_sample(src, coords)[:, 0]
            return {
                "loss_mask": sigmoid_ce_loss(logits, labels, num_masks),
                "loss_dice": dice_loss(logits, labels, num_masks),
            }

    def _losses_of(self, outputs, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        if "labels" in self.losses:
            out.update(self.loss_labels(outputs, targets, indices, num_masks))
        if "masks" in self.losses:
            out.update(self.loss_masks(outputs, targets, indices, num_masks))
        return out

    def _num_masks(self, targets, device) -> float:
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if dist.is_available() and dist.is_initialized() and comm.get_world_size() > 1:
            dist.all_reduce(count)
        return max(count.item() / comm.get_world_size(), 1.0)

    def forward(self, outputs: Dict, targets: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Compute all losses (unweighted).

        Args:
            outputs: the head's output: "pred_logits", "pred_masks" and optionally "aux_outputs".
            targets: per image {"labels": T, "masks": T x H x W}.

        Returns:
            loss name -> scalar tensor.
        """
        final = {k: v for k, v in outputs.items() if k != "aux_outputs"}
        num_masks = self._num_masks(targets, final["pred_logits"].device)
        losses = self._losses_of(final, targets, self.matcher(final, targets), num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._losses_of(aux, targets, self.matcher(aux, targets), num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
            f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
            f"importance_sample_ratio={self.importance_sample_ratio}, seed={self.points.seed}"
        )
