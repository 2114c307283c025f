"""MGD-SAM2's detail refinement module (DRM, `detail_enhance`): the full-resolution mask head.

Fuses the mask decoder's upscaled embeddings of the 5 views (tiled locals + upsampled global, depth-wise
Conv3d) with features of the full-resolution image, then upsamples twice to 4x the tiled size (the
input image size) and predicts one logit map.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rass.utils.errors import UserValueError

from .views import split_views, views_to_tiled

__all__ = ["ME", "DetailRefinement"]

Factory = Callable[[int], nn.Module]


def _resize_as(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False)


class ME(nn.Module):
    """Multi-kernel enhancement of image features (`detail_enhance.img_er`): 1x1 to C/2, parallel
    3/5/7 convs (+norm), concat -> act -> 1x1 to C -> norm, residual, act.

    Args:
        in_features: channels C (even).
        norm: norm layer factory, called with a channel count.
        act: activation factory (no argument).
    """

    def __init__(self, in_features: int, norm: Factory, act: Callable[[], nn.Module]):
        super().__init__()
        half = in_features // 2
        self.linear = nn.Conv2d(in_features, half, kernel_size=1)
        self.conv1 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), norm(half))
        self.conv2 = nn.Sequential(nn.Conv2d(half, half, 5, padding=2), norm(half))
        self.conv3 = nn.Sequential(nn.Conv2d(half, half, 7, padding=3), norm(half))
        self.projector = nn.Sequential(act(), nn.Conv2d(3 * half, in_features, kernel_size=1), norm(in_features))
        self.na = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        y = self.projector(torch.cat((self.conv1(y), self.conv2(y), self.conv3(y)), dim=1))
        return self.na(y + x)


def _up_block(dim: int, norm: Factory, act: Callable[[], nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(dim, dim, 3, padding=1, bias=False), norm(dim), act())


class DetailRefinement(nn.Module):
    """Detail refinement (`detail_enhance = DetailRefinement(32, 32, BatchNorm2d, ReLU)`).

    Args:
        img_dim: channels of the image branch (32).
        feature_dim: channels of the decoder's upscaled embedding (32); must equal `img_dim`.
        norm: norm layer factory (BatchNorm2d).
        act: activation factory (ReLU).
    """

    def __init__(self, img_dim: int = 32, feature_dim: int = 32, norm: Factory = nn.BatchNorm2d,
                 act: Callable[[], nn.Module] = nn.ReLU):
        super().__init__()
        if img_dim != feature_dim:
            raise UserValueError(f"DetailRefinement: img_dim ({img_dim}) must equal feature_dim ({feature_dim}); "
                                 "image and embedding features are added")
        self.img_in_conv = nn.Sequential(nn.Conv2d(3, img_dim, 3, padding=1, bias=False), norm(img_dim), act())
        self.img_er = ME(img_dim, norm, act)
        self.fusion_conv = nn.Sequential(
            nn.Conv2d(feature_dim, 32, 3, padding=1, bias=False), norm(32), act(),
            nn.Conv2d(32, 16, 3, padding=1, bias=False), norm(16), act())
        self.fusion_feature = nn.Conv3d(feature_dim, feature_dim, kernel_size=(2, 3, 3), stride=(2, 1, 1),
                                        padding=(0, 1, 1), groups=feature_dim)
        self.fusion_feature_bn = nn.Sequential(norm(feature_dim), act())
        self.out_conv = nn.Conv2d(16, 1, 1)
        self.feature_upsample1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
        self.feature_upsample2 = _up_block(feature_dim, norm, act)
        self.feature_upsample3 = _up_block(feature_dim, norm, act)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: [B, 3, H, W] the full normalised input image (the views' source).
            embedding: [5B, C, h, w] the mask decoder's upscaled embeddings of the 5 views (h = H / 8).

        Returns:
            [B, 1, 4 * 2h, 4 * 2w] mask logits (= H x W for the release's geometry).
        """
        loc, glb = split_views(embedding)
        if image.shape[0] != glb.shape[0]:
            raise UserValueError(f"DetailRefinement: {image.shape[0]} images for {embedding.shape[0]} views "
                                 "(expected 5 views per image)")
        feat = torch.stack((views_to_tiled(loc), self.feature_upsample1(glb)), dim=2)
        feat = self.fusion_feature_bn(self.fusion_feature(feat).squeeze(2))
        img_feat = self.img_er(self.img_in_conv(image))
        feat = self.feature_upsample2(feat + _resize_as(img_feat, feat))
        feat = self.feature_upsample3(feat + _resize_as(img_feat, feat))
        return self.out_conv(self.fusion_conv(feat))
