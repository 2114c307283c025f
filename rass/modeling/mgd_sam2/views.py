"""MGD-SAM2's five views of an image: four non-overlapping local tiles and one half-size global view.

An input of size 2S x 2S becomes a batch of 5B views of S x S, ordered as the release orders them
(`sevenshr/MGD-SAM2 models/sam.py: image2patches`, `set_input`): first the 4B local tiles, image-major
and, per image, top-left, top-right, bottom-left, bottom-right; then the B global views (bilinear 0.5x,
`align_corners=False`, no antialias). The modules that exchange information between the views work
on the *tiled* form of the locals: the four tiles of one image put back side by side (one 2x map).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from rass.utils.errors import UserValueError

__all__ = ["image_to_views", "gt_views", "split_views", "views_to_tiled", "tiled_to_views", "quadrants",
           "from_quadrants"]


def _check_even(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2:
        raise UserValueError(f"MGD-SAM2 {what}: expected a [B, C, H, W] tensor with even H and W, "
                             f"got shape {tuple(x.shape)}")


def quadrants(x: torch.Tensor) -> torch.Tensor:
    """Split maps into their 2 x 2 quadrants, quadrant-major.

    Args:
        x: [B, C, 2h, 2w].

    Returns:
        [4, B, C, h, w]; index 0..3 = top-left, top-right, bottom-left, bottom-right.
    """
    _check_even(x, "quadrants")
    b, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    return x.reshape(b, c, 2, h, 2, w).permute(2, 4, 0, 1, 3, 5).reshape(4, b, c, h, w)


def from_quadrants(q: torch.Tensor) -> torch.Tensor:
    """Inverse of `quadrants`: [4, B, C, h, w] -> [B, C, 2h, 2w]."""
    if q.dim() != 5 or q.shape[0] != 4:
        raise UserValueError(f"MGD-SAM2 from_quadrants: expected [4, B, C, h, w], got shape {tuple(q.shape)}")
    _, b, c, h, w = q.shape
    return q.reshape(2, 2, b, c, h, w).permute(2, 3, 0, 4, 1, 5).reshape(b, c, 2 * h, 2 * w)


def tiled_to_views(x: torch.Tensor) -> torch.Tensor:
    """Cut each map into its four tiles, image-major (the release's `image2patches`).

    Args:
        x: [B, C, 2h, 2w].

    Returns:
        [4B, C, h, w]: image 0's TL, TR, BL, BR tiles, then image 1's, ...
    """
    q = quadrants(x)
    return q.transpose(0, 1).reshape(-1, *q.shape[2:])


def views_to_tiled(x: torch.Tensor) -> torch.Tensor:
    """Put four tiles per image back side by side (the release's `patches2image`).

    Args:
        x: [4B, C, h, w] in the order of `tiled_to_views`.

    Returns:
        [B, C, 2h, 2w].
    """
    if x.dim() != 4 or x.shape[0] % 4:
        raise UserValueError(f"MGD-SAM2 views_to_tiled: expected [4B, C, h, w] local views, got shape "
                             f"{tuple(x.shape)}")
    b = x.shape[0] // 4
    return from_quadrants(x.reshape(b, 4, *x.shape[1:]).transpose(0, 1))


def split_views(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Split a 5-view batch into its locals [4B, ...] and globals [B, ...]."""
    if x.shape[0] % 5:
        raise UserValueError(f"MGD-SAM2: expected a batch of 5B views (4B locals then B globals), got "
                             f"batch size {x.shape[0]}")
    b = x.shape[0] // 5
    return x[: 4 * b], x[4 * b:]


def image_to_views(x: torch.Tensor) -> torch.Tensor:
    """The encoder batch of MGD-SAM2.

    Args:
        x: [B, C, 2S, 2S] normalised images.

    Returns:
        [5B, C, S, S]: the 4B local tiles (image-major, TL, TR, BL, BR), then the B global views
        (bilinear 0.5x, align_corners=False, no antialias).
    """
    _check_even(x, "image_to_views")
    glb = F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
    return torch.cat((tiled_to_views(x), glb), dim=0)


def gt_views(mask: torch.Tensor) -> torch.Tensor:
    """Ground truth of the five views: the local tiles, then the global GT by nearest 0.5x.

    Args:
        mask: [B, 1, 2S, 2S] float masks in [0, 1].

    Returns:
        [5B, 1, S, S] in the order of `image_to_views`.
    """
    _check_even(mask, "gt_views")
    glb = F.interpolate(mask, scale_factor=0.5, mode="nearest")
    return torch.cat((tiled_to_views(mask), glb), dim=0)
