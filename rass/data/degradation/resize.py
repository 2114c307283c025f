"""Resizing with per-sample size and mode (area, bilinear, bicubic), reproducible to the bit.

The sampling grids are those of `F.interpolate` with align_corners=False and no antialiasing
(Real-ESRGAN's settings): bilinear/bicubic sample source coordinate (i + 0.5)·r − 0.5 with r =
in/out (or 1/scale_factor when a scale factor is given, as in the release's first stage), bicubic
uses Keys' kernel with a = −0.75 and clamped borders, area averages the adaptive-pooling windows
[floor(i·in/out), ceil((i+1)·in/out)).

`F.interpolate` itself is not used: its CPU kernels split work between threads in a way that
changes the last bit of some outputs with the thread count. Two implementations of the same
linear maps are provided:
- "gather" (default): each dimension is a fixed sum of weighted gathered slices (rows with
  index_select, columns with gather; multiply, add — exact element-wise IEEE operations), so
  results depend neither on threads, batch composition nor device;
- "matmul" (CPU, 2-3x faster): each dimension is a product with the band of the resampling
  matrix, cut into blocks of output indices times the input span they read (dense GEMMs; the
  zeros of a block add exact zeros). Each image is multiplied on its own with shapes that depend
  only on its size, so results do not depend on the batch; GEMM libraries may round differently
  with another thread count, so the engine uses it only in its one-thread workers (parallel.py).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import torch

__all__ = ["resize", "resize_many", "RESIZE_MODES", "RESIZE_METHODS"]

RESIZE_MODES = ("area", "bilinear", "bicubic")
RESIZE_METHODS = ("gather", "matmul")
_CUBIC_A = -0.75
_ROW_BLOCK = 64  # output rows per GEMM of the "matmul" method (measured at 512 px)
_COLUMN_BLOCK = 32  # output columns per GEMM


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


def _resize_columns(x: torch.Tensor, n_out: int, mode: str, ratio: Optional[float]) -> torch.Tensor:
    """Resize along dim -1 with `gather` (no transposed copies; same arithmetic as the rows)."""
    n_in = x.shape[-1]
    if n_in == n_out and (ratio is None or mode != "bicubic"):
        return x
    idx, w = _taps(n_in, n_out, mode, ratio)
    idx, w = idx.to(x.device), w.to(device=x.device, dtype=x.dtype)
    shape = (*x.shape[:-1], n_out)
    out = torch.gather(x, -1, idx[0].expand(shape)).mul_(w[0])
    for k in range(1, idx.shape[0]):  # fixed summation order
        out.add_(torch.gather(x, -1, idx[k].expand(shape)).mul_(w[k]))
    return out


@lru_cache(maxsize=256)
def _band_blocks(
    n_in: int, n_out: int, mode: str, ratio: Optional[float], block: int, transposed: bool
) -> Tuple[Tuple[int, int, int, int, torch.Tensor], ...]:
    """The resampling matrix (n_out × n_in, float32) cut into output blocks of `block` indices.

    Returns:
        (o0, o1, i0, i1, weights) per block: outputs o0..o1−1 read inputs i0..i1−1 with the
        (o1−o0)×(i1−i0) weights (transposed, (i1−i0)×(o1−o0), with `transposed`).
    """
    idx, w = _taps(n_in, n_out, mode, ratio)
    dense = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    for k in range(idx.shape[0]):  # repeated (clamped) indices add up, as in the gather sum
        dense.index_put_((rows, idx[k]), w[k], accumulate=True)
    dense = dense.float()
    used = dense != 0
    out = []
    for o0 in range(0, n_out, block):
        o1 = min(n_out, o0 + block)
        cols = used[o0:o1].any(0).nonzero().squeeze(1)
        i0, i1 = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 1)
        band = dense[o0:o1, i0:i1]
        out.append((o0, o1, i0, i1, (band.t() if transposed else band).contiguous()))
    return tuple(out)


def _matmul_rows(x: torch.Tensor, n_out: int, mode: str, ratio: Optional[float]) -> torch.Tensor:
    """"matmul" method along dim -2 of one C×H×W image (one GEMM per channel and block)."""
    n_in = x.shape[-2]
    if n_in == n_out and (ratio is None or mode != "bicubic"):
        return x
    x = x.contiguous()
    out = x.new_empty(x.shape[0], n_out, x.shape[-1])
    for o0, o1, i0, i1, band in _band_blocks(n_in, n_out, mode, ratio, _ROW_BLOCK, False):
        band = band.to(x.dtype)
        for c in range(x.shape[0]):
            torch.mm(band, x[c, i0:i1], out=out[c, o0:o1])
    return out


def _matmul_columns(x: torch.Tensor, n_out: int, mode: str, ratio: Optional[float]) -> torch.Tensor:
    """"matmul" method along dim -1 of one C×H×W image (one GEMM per block over all rows)."""
    n_in = x.shape[-1]
    if n_in == n_out and (ratio is None or mode != "bicubic"):
        return x
    flat = x.contiguous().view(-1, n_in)
    out = x.new_empty(flat.shape[0], n_out)
    for o0, o1, i0, i1, band in _band_blocks(n_in, n_out, mode, ratio, _COLUMN_BLOCK, True):
        torch.mm(flat[:, i0:i1], band.to(x.dtype), out=out[:, o0:o1])
    return out.view(*x.shape[:-1], n_out)


def resize(
    x: torch.Tensor,
    size: Tuple[int, int],
    mode: str,
    scale_factor: Optional[float] = None,
    method: str = "gather",
) -> torch.Tensor:
    """Resize a B×C×H×W batch.

    Args:
        x: B×C×H×W float tensor.
        size: output (height, width).
        mode: "area", "bilinear" or "bicubic".
        scale_factor: when given (bilinear/bicubic), the sampling grid is scaled by 1/scale_factor
            like `F.interpolate(scale_factor=...)` (the release's first-stage resize); `size` is
            then floor(H·s), floor(W·s).
        method: "gather" (thread-count independent) or "matmul" (CPU; faster, but the bits may
            change with the thread count: call it at a fixed thread count). See the module notes.

    Returns:
        B×C×h×w tensor.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if method not in RESIZE_METHODS:
        raise ValueError(f"Unknown resize method {method!r}; expected one of {RESIZE_METHODS}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"resize: output size must be positive, got {(h, w)}")
    ratio = None if scale_factor is None or mode == "area" else 1.0 / float(scale_factor)
    if ratio == 1.0:
        ratio = None
    if method == "matmul" and x.device.type == "cpu":
        out = [_matmul_columns(_matmul_rows(img, h, mode, ratio), w, mode, ratio) for img in x.reshape(-1, *x.shape[-3:])]
        return torch.stack(out).view(*x.shape[:-2], h, w) if len(out) > 1 else out[0].view(*x.shape[:-2], h, w)
    x = _resize_rows(x, h, mode, ratio)
    return _resize_columns(x, w, mode, ratio)


def resize_many(
    images: Sequence[torch.Tensor],
    sizes: Sequence[Sequence[int]],
    modes: Sequence[str],
    scales: Optional[Sequence[Optional[float]]] = None,
    method: str = "gather",
) -> List[torch.Tensor]:
    """Resize C×H×W images, each with its own target size / mode (/ scale factor).

    Images with identical (input shape, size, mode, scale) are resized in one call.

    Args:
        images: C×H×W tensors.
        sizes: one (height, width) per image.
        modes: one mode per image.
        scales: optional per-image scale factors (see `resize`).
        method: see `resize`.

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
        res = resize(batch, key[1], key[2], key[3], method=method)
        for j, i in enumerate(idx):
            out[i] = res[j]
    return out  # type: ignore[return-value]
