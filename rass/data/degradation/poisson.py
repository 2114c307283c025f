"""Exact Poisson sampling for 8-bit images, by inversion of tabulated distribution functions.

Real-ESRGAN's Poisson noise draws, for every pixel of an image rounded to 8-bit levels l/255,
a count X ~ Poisson(λ_l) with λ_l = v·l/255 (v = the image's level count rounded up to a power
of two, at most 256). There are only 256 rates per v, so their distribution functions
F_l(k) = P(X <= k) are tabulated once, in float64 (F_l(k) = Q(k + 1, λ_l), the regularized
incomplete gamma function, from scipy.special.pdtr: accurate to about 1e-15), and each pixel is
sampled by inversion: X = min{k : F_l(k) > u} for one uniform u ∈ [0, 1). Inversion is an exact
method, so the counts follow the Poisson law as closely as float64 can represent it; it is not a
normal or other approximation, only a faster way than `torch.poisson` (which runs a scalar
rejection sampler per element) to draw from the same law.

The search for k uses a guide table (Chen & Asau): for u in the bucket [j/M, (j+1)/M) the answer
lies between G_l(j) = min{k : F_l(k) > j/M} and G_l(j+1); most buckets contain no jump of F_l
(then X = G_l(j) and only the bucket j needs drawing), the others draw u's remaining bits and
finish with one comparison or, rarely, a vectorised binary search. Every step is an element-wise
operation or a gather, so the result depends only on the random draws, i.e. on the generator's
state — not on the batch, the thread count or the chunking.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import numpy as np
import torch

__all__ = ["poisson_from_levels", "poisson_cdf_table"]

_LEVELS = 256
_BUCKETS = 2048  # guide-table buckets per level (a power of two: j = floor(u·M) is exact)


def poisson_cdf_table(rate_scale: float, levels: int = _LEVELS) -> torch.Tensor:
    """F_l(k) = P(Poisson(rate_scale·l/255) <= k) for l < levels, k < K (float64, CPU).

    K is chosen so that every row reaches exactly 1.0 (the remaining tail is below 1e-80).

    Args:
        rate_scale: v, the rate of the brightest level (λ_255 = v).
        levels: number of levels l (256 for 8-bit images).

    Returns:
        levels × K float64 tensor, non-decreasing along k, last column 1.
    """
    if not rate_scale > 0:
        raise ValueError(f"Poisson rate scale must be positive, got {rate_scale}")
    from scipy.special import pdtr  # Q(k + 1, λ) to ~1e-15 (torch.special.gammaincc: ~1e-9 here)

    k_max = int(rate_scale + 20.0 * math.sqrt(rate_scale) + 40.0)
    lam = np.arange(levels, dtype=np.float64) * (rate_scale / 255.0)
    k = np.arange(k_max, dtype=np.float64)
    cdf = torch.from_numpy(pdtr(k[None, :], lam[:, None]))
    cdf[0] = 1.0  # rate 0: X = 0 surely
    cdf = torch.cummax(cdf, dim=1).values  # guard monotonicity against last-ulp wobbles
    if not bool((cdf[:, -1] == 1.0).all()):
        raise RuntimeError(f"Poisson table for rate scale {rate_scale} does not reach 1 within {k_max} counts")
    return cdf


@lru_cache(maxsize=32)
def _tables(rate_scale: float, device: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(flat M·F float64, flat guide int32, flat encoded guide int32, K) on `device`.

    guide[l, j] = min{k : F_l(k) > j/M} for j = 0..M (for j = M: the first k with F_l(k) = 1);
    encoded[l, j] = guide[l, j] when bucket j holds no jump of F_l, else −1 − guide[l, j].
    The distribution functions are stored multiplied by M (exact: M is a power of two).
    """
    cdf = poisson_cdf_table(rate_scale)
    levels, k_max = cdf.shape
    edges = torch.arange(_BUCKETS + 1, dtype=torch.float64) / _BUCKETS
    guide = torch.searchsorted(cdf, edges[:-1].expand(levels, -1).contiguous(), right=True)
    last = torch.searchsorted(cdf, torch.ones(levels, 1, dtype=torch.float64), right=False)
    guide = torch.cat([guide, last], dim=1)
    exact = guide[:, :-1] == guide[:, 1:]
    encoded = torch.where(exact, guide[:, :-1], -1 - guide[:, :-1])
    return (
        (cdf * _BUCKETS).reshape(-1).to(device),
        guide.to(torch.int32).reshape(-1).to(device),
        encoded.to(torch.int32).reshape(-1).to(device),
        k_max,
    )


def poisson_from_levels(levels: torch.Tensor, rate_scale: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson counts with rate rate_scale·l/255 for each element's 8-bit level l.

    The uniform of each element is u = (j + r)/M with j uniform on 0..M−1 (its bucket) and, only
    where bucket j holds a jump of F_l, r uniform on [0, 1) with 53 random bits; comparisons are
    made as M·F_l(k) − j > r, exactly.

    Args:
        levels: integer tensor (any shape) with values 0..255.
        rate_scale: v > 0 (Real-ESRGAN: the level count rounded up to a power of two).
        generator: the image's generator, on the same device as `levels`.

    Returns:
        int32 tensor of counts, same shape as `levels`.
    """
    cdf_m, guide, encoded, k_max = _tables(float(rate_scale), str(levels.device))
    lev = levels.reshape(-1).to(torch.int32)
    bucket = torch.randint(0, _BUCKETS, lev.shape, generator=generator, dtype=torch.int32, device=lev.device)
    out = encoded.index_select(0, bucket.add_(lev * _BUCKETS))  # bucket becomes the row-major index
    todo = (out < 0).nonzero().squeeze(1)
    if todo.numel():  # buckets with a jump: min{k in [lo, hi] : M·F(k) − j > r}
        j = bucket.index_select(0, todo)
        lvl = lev.index_select(0, todo)
        j.sub_(lvl * _BUCKETS)
        r = torch.rand(todo.shape, generator=generator, dtype=torch.float64, device=lev.device)
        lo = -1 - out.index_select(0, todo)
        row = lvl.to(torch.int64) * k_max
        above = cdf_m.index_select(0, row + lo).sub_(j) > r  # most of these buckets hold one jump
        left = (~above).nonzero().squeeze(1)
        if left.numel():
            lo_l = lo.index_select(0, left) + 1
            hi_l = guide.index_select(0, lvl.index_select(0, left) * (_BUCKETS + 1) + j.index_select(0, left) + 1)
            row_l, j_l, r_l = row.index_select(0, left), j.index_select(0, left), r.index_select(0, left)
            for _ in range(int((hi_l - lo_l).max()).bit_length()):
                mid = (lo_l + hi_l) >> 1
                up = cdf_m.index_select(0, row_l + mid).sub_(j_l) > r_l
                hi_l = torch.where(up, mid, hi_l)
                lo_l = torch.where(up, lo_l, mid + 1)
            lo.index_copy_(0, left, lo_l)
        out.index_copy_(0, todo, lo)
    return out.view(levels.shape)
