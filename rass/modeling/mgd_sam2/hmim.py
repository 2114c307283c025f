"""MGD-SAM2's hierarchical multi-view interaction module (HMIM, `sam_mask_decoder.new_fusion2` at
stride 8 and `new_fusion1` at stride 4).

At one FPN level of the 5 views: the global view is enhanced with the previous (coarser) level's tiled
locals, the tiled locals with the upsampled enhanced global view; then LayerNorm2d -> GELU -> 1x1 conv
on all 5B views. The updated tiled locals feed the next (finer) level.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from detectron2.layers.batch_norm import LayerNorm as LayerNorm2d
from torch import nn

from rass.utils.errors import UserValueError

from .views import split_views, tiled_to_views, views_to_tiled

__all__ = ["HMIM"]


class HMIM(nn.Module):
    """Hierarchical multi-view interaction at one level (`new_fusion1` / `new_fusion2`).

    Args:
        dim: channels of the level's features (256: the FPN width, before `conv_s0/conv_s1`).
    """

    def __init__(self, dim: int = 256):
        super().__init__()
        self.locpre2glb = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.fuse1 = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.glb2loc = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.fuse2 = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.fuse3 = nn.Sequential(LayerNorm2d(dim), nn.GELU(), nn.Conv2d(dim, dim, kernel_size=1))

    def forward(self, x: torch.Tensor, prev_tiled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: [5B, C, H, W] features of this level (4B locals then B globals).
            prev_tiled: [B, C, H, W] tiled locals of the previous level (2x the previous view size).

        Returns:
            (views [5B, C, H, W], tiled locals of the output [B, C, 2H, 2W] for the next level).
        """
        loc, glb = split_views(x)
        if prev_tiled.shape != glb.shape:
            raise UserValueError(f"HMIM: previous tiled locals {tuple(prev_tiled.shape)} must match the global "
                                 f"view {tuple(glb.shape)}")
        tiled = views_to_tiled(loc)
        glb = self.fuse1(torch.cat((glb, self.locpre2glb(prev_tiled)), dim=1)) + glb
        glb_up = F.interpolate(glb, scale_factor=2, mode="bilinear", align_corners=False)
        tiled = self.fuse2(torch.cat((self.glb2loc(glb_up), tiled), dim=1)) + tiled
        out = self.fuse3(torch.cat((tiled_to_views(tiled), glb), dim=0))
        return out, views_to_tiled(split_views(out)[0])
