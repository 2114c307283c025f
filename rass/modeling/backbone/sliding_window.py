"""Sliding-window feature extraction (test time, as released).

The input is covered by square windows (side = the short side and stride = side by default, so a
W x H image with W > H gets ceil(W / H) windows, the last one flush with the border). Every window
goes through the backbone (windows batched), and the projected features are written back at their
positions and averaged where windows overlap.

Placement, as released: the features of window [x1, x2) at stride s go to columns
[x1 // s, x2 // s) (rows likewise). The window side needs to be a multiple of 8 only, so a window's
feature may be one column narrower or wider than that slice (e.g. side 120 at stride 32: 3 columns
for a slice of 4); the release fails on such windows, here the window's features are resized
(nearest) to the slice, which leaves every slice that the release handles untouched.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from rass.utils.errors import UserValueError

__all__ = ["window_boxes", "sliding_window_features"]

Box = Tuple[int, int, int, int]


def _starts(length: int, size: int, stride: int) -> List[int]:
    n = max(length - size + stride - 1, 0) // stride + 1
    starts = []
    for i in range(n):
        end = min(i * stride + size, length)
        starts.append(max(end - size, 0))
    return starts


def window_boxes(height: int, width: int, size: int, stride: int) -> List[Box]:
    """Windows (y1, x1, y2, x2) covering an image, row-major; the last ones are shifted inside.

    Args:
        height, width: image size.
        size: window side (<= min(height, width)).
        stride: step between window starts.
    """
    if size <= 0 or stride <= 0:
        raise ValueError(f"window size and stride must be positive, got {size}, {stride}")
    if size > min(height, width):
        raise ValueError(f"window size {size} exceeds the image short side {min(height, width)}")
    return [(y, x, y + size, x + size) for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def sliding_window_features(
    extract: Callable[[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]],
    images: torch.Tensor,
    cond: torch.Tensor,
    strides: Dict[str, int],
    size: int = 0,
    stride: int = 0,
    batch_size: int = 4,
    align: int = 8,
) -> Dict[str, torch.Tensor]:
    """Features of `images` computed window by window and averaged where windows overlap.

    Args:
        extract: (crops N x 3 x s x s, conditioning N x ...) -> name -> N x C x s/stride x s/stride.
        images: B x 3 x H x W backbone input.
        cond: per-image conditioning (B x ...), given to `extract` for each window of that image.
        strides: output name -> stride.
        size: window side (0 = the short side; larger values are clamped to it).
        stride: window step (0 = size).
        batch_size: windows per `extract` call.
        align: window side and step must be multiples of this (the VAE's down-sampling factor).

    Returns:
        name -> B x C x H/stride x W/stride.
    """
    b, _, h, w = images.shape
    side = min(h, w) if size <= 0 else min(size, h, w)
    step = side if stride <= 0 else stride
    for key, v in (("SIZE", side), ("STRIDE", step)):
        if v % align:
            raise UserValueError(f"MODEL.RASS.SLIDING_WINDOW.{key}: {v} is not a multiple of {align} "
                                 f"(input {h}x{w}; window sides and steps must be multiples of {align})")
    boxes = window_boxes(h, w, side, step)
    jobs = [(i, box) for i in range(b) for box in boxes]
    out: Dict[str, torch.Tensor] = {}
    count: Dict[str, torch.Tensor] = {}
    for start in range(0, len(jobs), max(1, batch_size)):
        chunk = jobs[start:start + max(1, batch_size)]
        crops = torch.stack([images[i, :, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
        index = torch.tensor([i for i, _ in chunk], device=cond.device)
        feats = extract(crops, cond.index_select(0, index))
        for name, f in feats.items():
            s = strides[name]
            if name not in out:
                out[name] = f.new_zeros((b, f.shape[1], h // s, w // s))
                count[name] = f.new_zeros((1, 1, h // s, w // s))
            for j, (i, (y1, x1, y2, x2)) in enumerate(chunk):
                fj = f[j]
                slot = (y2 // s - y1 // s, x2 // s - x1 // s)
                if tuple(fj.shape[-2:]) != slot:
                    fj = F.interpolate(fj[None], size=slot, mode="nearest")[0]
                out[name][i, :, y1 // s:y2 // s, x1 // s:x2 // s] += fj
                if i == 0:
                    count[name][0, 0, y1 // s:y2 // s, x1 // s:x2 // s] += 1
    return {name: out[name] / count[name] for name in out}
