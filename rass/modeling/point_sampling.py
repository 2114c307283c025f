"""Point sampling for the mask losses and the matcher (PointRend-style), with seeded generators.

Masks are compared on a set of points instead of on every pixel: random points for matching,
and for the loss mostly the points where the prediction is least certain (|logit| smallest).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from detectron2.projects.point_rend.point_features import point_sample as _d2_point_sample

from rass.utils.errors import UserValueError

__all__ = ["SeededPointGenerator", "point_sample", "calculate_uncertainty", "sample_uncertain_points"]


class SeededPointGenerator:
    """One `torch.Generator` per device, all created from the same seed on first use.

    Args:
        seed: the seed of every generator.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._generators: Dict[str, torch.Generator] = {}

    def get(self, device: torch.device) -> torch.Generator:
        """The generator for `device` (created on first use)."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[key] = gen
        return self._generators[key]

    def rand(self, *shape: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform [0, 1) samples on `device`."""
        return torch.rand(*shape, generator=self.get(device), device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"SeededPointGenerator(seed={self.seed})"


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of `inputs` (N x C x H x W) at `coords` (N x P x 2, (x, y) in [0, 1]) -> N x C x P."""
    return _d2_point_sample(inputs, coords, align_corners=False)


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of binary logits: -|logit| (highest where the prediction is closest to 0.5)."""
    return -logits.abs()


def sample_uncertain_points(
    logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[SeededPointGenerator] = None,
) -> torch.Tensor:
    """PointRend training points: the most uncertain of `oversample_ratio * num_points` random
    candidates (a fraction `importance_sample_ratio` of the points), plus uniform random points.

    Args:
        logits: R x 1 x H x W mask logits.
        num_points: P, points per mask.
        oversample_ratio: >= 1, candidates per point.
        importance_sample_ratio: in [0, 1].
        generator: source of randomness (default: a generator seeded with 0).

    Returns:
        R x P x 2 float32 coordinates (x, y) in [0, 1].
    """
    if oversample_ratio < 1:
        raise UserValueError("oversample_ratio (MODEL.MASK_FORMER.OVERSAMPLE_RATIO) must be >= 1, got "
                             f"{oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise UserValueError(f"importance_sample_ratio (MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO) must be in [0, 1], "
                             f"got {importance_sample_ratio}")
    gen = generator if generator is not None else SeededPointGenerator(0)
    r = logits.shape[0]
    device = logits.device
    num_candidates = int(num_points * oversample_ratio)
    candidates = gen.rand(r, num_candidates, 2, device=device)
    scores = calculate_uncertainty(point_sample(logits.float(), candidates))[:, 0, :]  # R x C
    num_uncertain = int(importance_sample_ratio * num_points)
    top = scores.topk(num_uncertain, dim=1).indices  # R x k
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        chosen = torch.cat([chosen, gen.rand(r, num_random, 2, device=device)], dim=1)
    return chosen
