"""Stable-SAM's robust training strategy (RTS): low-quality prompts drawn per sample, HQ-SAM's mask loss.

Prompts (drawn on the model side from each sample's GT mask, replacing the mapper's prompts; seeded by
(SEED, rank, iteration, image id) so a resumed run draws the same prompts):
- with probability BOX_PROB a noisy box: the GT box jittered by HQ-SAM's `box_noise` (DN-DETR form,
  `rass.data.prompts.box_noise`) with a noise scale drawn uniformly from BOX_NOISE_RANGE, so the plugins
  see every quality from near-exact to poor;
- otherwise k positive points, k uniform in NUM_POINTS_RANGE (1-3), drawn uniformly from the object's
  interior pixels (`rass.data.prompts.sample_prompts`, protocol "points").
Ambiguity rule (the paper's "Robust Training Against Ambiguous Prompts" favours larger objects; its exact
form is not public): the target is always the WHOLE annotated object (the union of all its parts; the
largest plausible mask for a point inside it), decoded as SAM's single-mask output (mask token 0).

Loss (HQ-SAM `train/utils/loss_mask.py`): sigmoid BCE + Dice on NUM_POINTS uncertainty-sampled points
(oversample 3, importance 0.75) of each mask's logits in the image frame against the GT mask, each
divided by the number of masks (`rass.modeling.criterion`, `rass.modeling.point_sampling`).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from rass.data.degradation.online import derive_seed
from rass.data.prompts import sample_prompts
from rass.modeling.criterion import dice_loss, sigmoid_ce_loss
from rass.modeling.point_sampling import SeededPointGenerator, point_sample, sample_uncertain_points
from rass.utils.errors import UserValueError

__all__ = ["RtsPromptSampler", "rts_mask_loss"]


class RtsPromptSampler:
    """Low-quality training prompts of one object (see the module doc).

    Args:
        box_prob: probability of a noisy box (else points), in [0, 1].
        box_noise_range: (min, max) noise scale of HQ-SAM's `box_noise`, 0 <= min <= max.
        num_points_range: (min, max) number of positive points, 1 <= min <= max.
        seed: base seed.
    """

    def __init__(self, box_prob: float = 0.5, box_noise_range: Sequence[float] = (0.1, 0.5),
                 num_points_range: Sequence[int] = (1, 3), seed: int = 0):
        lo, hi = (float(v) for v in box_noise_range) if len(box_noise_range) == 2 else (None, None)
        if lo is None or lo < 0 or hi < lo:
            raise UserValueError(f"MODEL.STABLE_SAM.RTS.BOX_NOISE_RANGE must be (min, max) noise scales with "
                                 f"0 <= min <= max, got {tuple(box_noise_range)}",
                                 hint="HQ-SAM's box_noise scale is a fraction of the box size: negative is meaningless")
        k = [int(v) for v in num_points_range]
        if len(k) != 2 or k[0] < 1 or k[1] < k[0]:
            raise UserValueError(f"MODEL.STABLE_SAM.RTS.NUM_POINTS_RANGE must be (min, max) with 1 <= min <= max, "
                                 f"got {tuple(num_points_range)}")
        if not 0.0 <= float(box_prob) <= 1.0:
            raise UserValueError(f"MODEL.STABLE_SAM.RTS.BOX_PROB must be in [0, 1], got {box_prob}")
        self.box_prob = float(box_prob)
        self.noise_range = (lo, hi)
        self.points_range = (k[0], k[1])
        self.seed = int(seed)

    def rng(self, rank: int, iteration: int, sample: Union[int, str]) -> np.random.Generator:
        """The generator of one sample's prompts (`sample`: its image id, so the batch order does not matter)."""
        return np.random.default_rng(derive_seed("stable-sam-rts", self.seed, int(rank), int(iteration), str(sample)))

    def draw(self, gt_mask: torch.Tensor, image_hw: Tuple[int, int],
             rng: np.random.Generator) -> Dict[str, torch.Tensor]:
        """Prompts of one object in the image frame, as the promptable mapper's keys (P = 1).

        Args:
            gt_mask: H x W bool GT mask (its own size).
            image_hw: (h, w) of the image frame.
            rng: `rng(...)` of this sample.

        Returns:
            {"boxes": [1, 4]} or {"point_coords": [1, k, 2], "point_labels": [1, k]}, plus "noise_scale"
            (float tensor, -1 for points) and "num_points" (0 for a box) for the logs.
        """
        mask = gt_mask.detach().cpu().numpy().astype(np.uint8) * 255
        if rng.random() < self.box_prob:
            scale = float(rng.uniform(*self.noise_range))
            p = sample_prompts(mask, image_hw, "box", 1, scale, rng)
            return {"boxes": torch.from_numpy(p.box)[None], "noise_scale": torch.tensor(scale),
                    "num_points": torch.tensor(0)}
        k = int(rng.integers(self.points_range[0], self.points_range[1] + 1))
        p = sample_prompts(mask, image_hw, "points", k, 0.0, rng)
        return {"point_coords": torch.from_numpy(p.point_coords)[None],
                "point_labels": torch.from_numpy(p.point_labels)[None],
                "noise_scale": torch.tensor(-1.0), "num_points": torch.tensor(k)}


def rts_mask_loss(logits: List[torch.Tensor], masks: List[torch.Tensor], num_points: int,
                  oversample_ratio: float, importance_sample_ratio: float,
                  generator: SeededPointGenerator) -> Dict[str, torch.Tensor]:
    """HQ-SAM's point-sampled BCE + Dice over every mask of the batch.

    Args:
        logits: per image, P x h x w mask logits (any size covering the image).
        masks: per image, the H x W bool GT mask (same extent as its logits).
        num_points: sampled points per mask (HQ-SAM: 112 * 112).
        oversample_ratio: candidates per point (HQ-SAM: 3).
        importance_sample_ratio: fraction of points picked by uncertainty (HQ-SAM: 0.75).
        generator: source of the random points.

    Returns:
        {"loss_mask": BCE, "loss_dice": Dice}, each summed over masks / number of masks.
    """
    if len(logits) != len(masks) or not logits:
        raise ValueError(f"RTS loss: {len(logits)} logits for {len(masks)} masks (expected one per image, >= 1)")
    num_masks = float(sum(lg.shape[0] for lg in logits))
    bce, dice = [], []
    for lg, m in zip(logits, masks):
        src = lg[:, None].float()
        tgt = m.to(src.device, torch.float32)[None, None].expand(lg.shape[0], 1, *m.shape[-2:])
        with torch.no_grad():
            coords = sample_uncertain_points(src, num_points, oversample_ratio, importance_sample_ratio, generator)
            labels = point_sample(tgt, coords)[:, 0]
        pts = point_sample(src, coords)[:, 0]
        bce.append(sigmoid_ce_loss(pts, labels, num_masks))
        dice.append(dice_loss(pts, labels, num_masks))
    return {"loss_mask": torch.stack(bce).sum(), "loss_dice": torch.stack(dice).sum()}
