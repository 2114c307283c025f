"""Projection of the tapped diffusion features to a detectron2 feature pyramid (as released).

Feature i (channels FEATURE_DIMS[i], stride FEATURE_STRIDES[i]) is resized (nearest) to
(H / s, W / s) with s its stride clamped to [min_stride, max_stride], passed through
detectron2 `BottleneckBlock`s (GN, bottleneck dim/4, out dim), and features of equal stride are
summed into `res<log2 s>`. With the released taps: res2 = [0], res3 = [1, 4, 5], res4 = [3],
res5 = [2], all 512 channels.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.modeling.backbone.resnet import BottleneckBlock, ResNet
from torch import nn

from rass.utils.errors import UserValueError

__all__ = ["FeatureProjection"]


class FeatureProjection(nn.Module):
    """Per-feature bottleneck projections summed per stride.

    Args:
        feature_dims: channels of each input feature.
        feature_strides: stride of each input feature.
        grouped_indices: groups of feature indices (each index in exactly one group); features
            are projected individually and summed per (clamped) stride.
        out_features: names to output (a subset of the res<k> names the strides produce).
        projection_dim: output channels.
        num_blocks: bottleneck blocks per projection.
        norm: detectron2 norm name of the blocks.
        min_stride, max_stride: stride clamp.
    """

    def __init__(self, feature_dims: Sequence[int], feature_strides: Sequence[int],
                 grouped_indices: Sequence[Sequence[int]], out_features: Sequence[str], projection_dim: int = 512,
                 num_blocks: int = 1, norm: str = "GN", min_stride: int = 4, max_stride: int = 32) -> None:
        super().__init__()
        n = len(feature_dims)
        if len(feature_strides) != n:
            raise UserValueError(f"MODEL.FEATURE_PROJECTION: {n} FEATURE_DIMS but {len(feature_strides)} "
                                 "FEATURE_STRIDES")
        flat = sorted(i for g in grouped_indices for i in g)
        if flat != list(range(n)):
            raise UserValueError(f"MODEL.FEATURE_PROJECTION.GROUPED_INDICES={list(map(list, grouped_indices))} must "
                                 f"use each of the {n} feature indices exactly once")
        self.feature_dims = list(feature_dims)
        self.blocks = nn.ModuleList(
            nn.Sequential(*ResNet.make_stage(BottleneckBlock, num_blocks, in_channels=c, out_channels=projection_dim,
                                             bottleneck_channels=projection_dim // 4, norm=norm))
            for c in feature_dims
        )
        by_stride: Dict[int, List[int]] = defaultdict(list)
        for group in grouped_indices:
            for i in group:
                s = min(max(int(feature_strides[i]), min_stride), max_stride)
                if s & (s - 1):
                    raise UserValueError(f"MODEL.FEATURE_PROJECTION.FEATURE_STRIDES[{i}]={s} is not a power of two")
                by_stride[s].append(i)
        self.groups: Dict[str, Tuple[int, List[int]]] = {}
        for s in sorted(by_stride):
            name = f"res{int(math.log2(s))}"
            if name in out_features:
                self.groups[name] = (s, by_stride[s])
        unknown = [f for f in out_features if f not in self.groups]
        if unknown:
            raise UserValueError(f"MODEL.FEATURE_PROJECTION.OUT_FEATURES {unknown} match no stride; the strides give "
                                 f"{[f'res{int(math.log2(s))}' for s in sorted(by_stride)]}")
        self.projection_dim = projection_dim

    def output_shapes(self) -> Dict[str, Tuple[int, int]]:
        """name -> (channels, stride)."""
        return {name: (self.projection_dim, s) for name, (s, _) in self.groups.items()}

    def forward(self, features: Sequence[torch.Tensor], image_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """Project the features of a batch whose (padded) image size is `image_size`.

        Args:
            features: the tapped features, in FEATURE_DIMS order.
            image_size: (H, W) of the backbone input.

        Returns:
            name -> B x projection_dim x H/s x W/s.
        """
        h, w = image_size
        out = {}
        for name, (s, indices) in self.groups.items():
            total = None
            for i in indices:
                f = features[i]
                if f.shape[1] != self.feature_dims[i]:
                    raise UserValueError(f"feature {i} has {f.shape[1]} channels, "
                                         f"MODEL.FEATURE_PROJECTION.FEATURE_DIMS says {self.feature_dims[i]}")
                weight = self.blocks[i][0].conv1.weight
                f = F.interpolate(f.to(weight.dtype), size=(h // s, w // s), mode="nearest")
                y = self.blocks[i](f)
                total = y if total is None else total + y
            out[name] = total
        return out
