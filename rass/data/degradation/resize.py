"""Resizing with per-sample size and mode (area, bilinear, bicubic), reproducible to the bit.

The sampling grids are those of `F.interpolate` with align_corners=False and no antialiasing
(Real-ESRGAN's settings): bilinear/bicubic sample source coordinate (i + 0.5)·r − 0.5 with r =
in/out (or 1/scale_factor when a scale factor is given, as in the release's first stage), bicubic
uses Keys' kernel with a = −0.75 and clamped borders, area averages the adaptive-pooling windows
[floor(i·in/out), ceil((i+1)·in/out)).

`F.interpolate` itself is not used: its CPU kernels split work between threads in a way that
changes the last bit of some outputs with the thread count. Here each dimension is resized as a
fixed sum of weighted gathered slices (index_select, multiply, add — exact element-wise IEEE
operations), so results depend neither on threads, batch composition nor device.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["resize", "resize_many", "RESIZE_MODES"]

RESIZE_MODES = ("area", "bilinear", "bicubic")
_CUBIC_A = -0.75


def _cubic_weights(t: torch.Tensor) -> List[torch.Tensor]:
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@lru_cache(maxsize=512)
def _taps(n_in: int, n_out: int, mode: str, ratio: Optional[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per output index: K source indices and K weights (float64), for one dimension.

    Returns:
        (indices K×n_out int64, weights K×n_out float64).
    """
    i = torch.arange(n_out, dtype=torch.float64)
    if mode == "area":
        start = torch.tensor([(k * n_in) // n_out for k in range(n_out)], dtype=torch.int64)
        end = torch.tensor([-(-((k + 1) * n_in) // n_out) for k in range(n_out)], dtype=torch.int64)
        width = int((end - start).max())
        offs = torch.arange(width, dtype=torch.int64)[:, None]
        idx = start[None] + offs
        inside = idx < end[None]
        weights = inside.to(torch.float64) / (end - start)[None].to(torch.float64)
        return idx.clamp(max=n_in - 1), weights
    r = ratio if ratio is not None else n_in / n_out
    src = (i + 0.5) * r - 0.5
    if mode == "bilinear":
        src = src.clamp(min=0.0)
        i0 = torch.floor(src).clamp(max=n_in - 1)
        lam = (src - i0).clamp(0.0, 1.0)
        i0 = i0.to(torch.int64)
        i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
        return torch.stack([i0, i1]), torch.stack([1.0 - lam, lam])
    if mode == "bicubic":
        i0 = torch.floor(src)
        t = src - i0
        idx = torch.stack([(i0 + d).clamp(0, n_in - 1) for d in (-1, 0, 1, 2)]).to(torch.int64)
        return idx, torch.stack(_cubic_weights(t))
    raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")


def _resize_rows(x: torch.Tensor, n_out: int, mode: str, ratio: Optional[float]) -> torch.Tensor:
    """Resize along dim -2 (gathering whole rows is a fast contiguous copy).

    A dimension whose size does not change is copied as is, except for bicubic with an explicit
    scale factor (both as `F.interpolate` does).
    """
    n_in = x.shape[-2]
    if n_in == n_out and (ratio is None or mode != "bicubic"):
        return x
    idx, w = _taps(n_in, n_out, mode, ratio)
    idx, w = idx.to(x.device), w.to(device=x.device, dtype=x.dtype)
    out = x.index_select(-2, idx[0]).mul_(w[0][:, None])
    for k in range(1, idx.shape[0]):  # fixed summation order
        out.add_(x.index_select(-2, idx[k]).mul_(w[k][:, None]))
    return out


def resize(
    x: torch.Tensor, size: Tuple[int, int], mode: str, scale_factor: Optional[float] = None
) -> torch.Tensor:
    """Resize a B×C×H×W batch.

    Args:
        x: B×C×H×W float tensor.
        size: output (height, width).
        mode: "area", "bilinear" or "bicubic".
        scale_factor: when given (bilinear/bicubic), the sampling grid is scaled by 1/scale_factor
            like `F.interpolate(scale_factor=...)` (the release's first-stage resize); `size` is
            then floor(H·s), floor(W·s).

    Returns:
        B×C×h×w tensor.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: output size must be positive, got {(h, w)}")
    ratio = None if scale_factor is None or mode == "area" else 1.0 / float(scale_factor)
    if ratio == 1.0:
        ratio = None
    x = _resize_rows(x, h, mode, ratio)
    if x.shape[-1] == w and (ratio is None or mode != "bicubic"):
        return x
    x = _resize_rows(x.transpose(-1, -2).contiguous(), w, mode, ratio)
    return x.transpose(-1, -2).contiguous()


def resize_many(
    images: Sequence[torch.Tensor],
    sizes: Sequence[Sequence[int]],
    modes: Sequence[str],
    scales: Optional[Sequence[Optional[float]]] = None,
) -> List[torch.Tensor]:
    """Resize C×H×W images, each with its own target size / mode (/ scale factor).

    Images with identical (input shape, size, mode, scale) are resized in one call.

    Args:
        images: C×H×W tensors.
        sizes: one (height, width) per image.
        modes: one mode per image.
        scales: optional per-image scale factors (see `resize`).

    Returns:
        The resized images, in input order.
    """
    scales = list(scales) if scales is not None else [None] * len(images)
    groups: Dict[tuple, List[int]] = {}
    for i, img in enumerate(images):
        key = (tuple(img.shape), tuple(int(v) for v in sizes[i]), modes[i], scales[i], img.device, img.dtype)
        groups.setdefault(key, []).append(i)
    out: List[Optional[torch.Tensor]] = [None] * len(images)
    for key, idx in groups.items():
        batch = images[idx[0]][None] if len(idx) == 1 else torch.stack([images[i] for i in idx])
        res = resize(batch, key[1], key[2], key[3])
        for j, i in enumerate(idx):
            out[i] = res[j]
    return out  # type: ignore[return-value]
