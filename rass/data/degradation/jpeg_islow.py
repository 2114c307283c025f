"""Integer arithmetic of libjpeg(-turbo)'s default codec, as exact linear maps.

libjpeg's default ("islow") forward and inverse DCTs are separable 1-D passes whose outputs are
integer linear combinations of their inputs followed by one rounding right shift (`DESCALE`).
This module runs that fixed-point 1-D algorithm on unit vectors to obtain, for each pass, an
integer 8×8 matrix and a per-output shift. Applying a pass is then `floor((M @ x + 2**(s-1)) /
2**s)`, which float64 computes *exactly* (every product and partial sum is an integer far below
2**53), so the result does not depend on summation order, batch size or device.

It also holds the quantisation side: the IJG quality scaling of the Annex-K tables and
libjpeg-turbo's reciprocal-multiply rounding of DCT coefficients.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Sequence, Tuple

import torch

__all__ = [
    "LUMA_TABLE",
    "CHROMA_TABLE",
    "quant_table",
    "quant_reciprocals",
    "fdct_passes",
    "idct_passes",
]

# Annex K tables in natural (row = vertical frequency) order, as in libjpeg's jcparam.c.
LUMA_TABLE: Tuple[int, ...] = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
CHROMA_TABLE: Tuple[int, ...] = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip

_CONST_BITS = 13
_PASS1_BITS = 2


def _fix(x: float) -> int:
    """libjpeg's FIX(): round a constant to CONST_BITS fractional bits."""
    return int(x * (1 << _CONST_BITS) + 0.5)


_F0298, _F0390, _F0541, _F0765 = _fix(0.298631336), _fix(0.390180644), _fix(0.541196100), _fix(0.765366865)
_F0899, _F1175, _F1501, _F1847 = _fix(0.899976223), _fix(1.175875602), _fix(1.501321110), _fix(1.847759065)
_F1961, _F2053, _F2562, _F3072 = _fix(1.961570560), _fix(2.053119869), _fix(2.562915447), _fix(3.072711026)


def _odd_rotations(t4: int, t5: int, t6: int, t7: int) -> Tuple[int, int, int, int]:
    """The shared odd-part butterfly of the islow DCT (Loeffler-Ligtenberg-Moschytz)."""
    z1, z2, z3, z4 = t4 + t7, t5 + t6, t4 + t6, t5 + t7
    z5 = (z3 + z4) * _F1175
    t4, t5, t6, t7 = t4 * _F0298, t5 * _F2053, t6 * _F3072, t7 * _F1501
    z1, z2, z3, z4 = -z1 * _F0899, -z2 * _F2562, -z3 * _F1961 + z5, -z4 * _F0390 + z5
    return t4 + z1 + z3, t5 + z2 + z4, t6 + z2 + z3, t7 + z1 + z4


def _fdct_1d(d: Sequence[int], first_pass: bool) -> List[Tuple[int, int]]:
    """One forward islow pass on 8 samples → 8 (value before DESCALE, shift) pairs."""
    t0, t7 = d[0] + d[7], d[0] - d[7]
    t1, t6 = d[1] + d[6], d[1] - d[6]
    t2, t5 = d[2] + d[5], d[2] - d[5]
    t3, t4 = d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first_pass:  # rows: DC/4 are left-shifted (exact), the rest descaled by CONST-PASS1 bits
        s_even, s_rest, up = 0, _CONST_BITS - _PASS1_BITS, 1 << _PASS1_BITS
    else:  # columns: everything descaled, removing the PASS1 scaling
        s_even, s_rest, up = _PASS1_BITS, _CONST_BITS + _PASS1_BITS, 1
    z1 = (t12 + t13) * _F0541
    o7, o5, o3, o1 = _odd_rotations(t4, t5, t6, t7)
    out = [None] * 8
    out[0] = ((t10 + t11) * up, s_even)
    out[4] = ((t10 - t11) * up, s_even)
    out[2] = (z1 + t13 * _F0765, s_rest)
    out[6] = (z1 - t12 * _F1847, s_rest)
    out[7], out[5], out[3], out[1] = (o7, s_rest), (o5, s_rest), (o3, s_rest), (o1, s_rest)
    return out  # type: ignore[return-value]


def _idct_1d(d: Sequence[int], first_pass: bool) -> List[Tuple[int, int]]:
    """One inverse islow pass on 8 (dequantised) coefficients → 8 (value, shift) pairs."""
    z1 = (d[2] + d[6]) * _F0541
    t2, t3 = z1 - d[6] * _F1847, z1 + d[2] * _F0765
    t0, t1 = (d[0] + d[4]) << _CONST_BITS, (d[0] - d[4]) << _CONST_BITS
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    o0, o1, o2, o3 = _odd_rotations(d[7], d[5], d[3], d[1])
    s = _CONST_BITS - _PASS1_BITS if first_pass else _CONST_BITS + _PASS1_BITS + 3
    vals = [t10 + o3, t11 + o2, t12 + o1, t13 + o0, t13 - o0, t12 - o1, t11 - o2, t10 - o3]
    return [(v, s) for v in vals]


def _as_matrix(fn: Callable[[Sequence[int], bool], List[Tuple[int, int]]], first_pass: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Columns = the pass applied to unit vectors (the pass is linear before its DESCALE)."""
    cols, shifts = [], None
    for k in range(8):
        out = fn([1 if i == k else 0 for i in range(8)], first_pass)
        cols.append([v for v, _ in out])
        shifts = [s for _, s in out]
    mat = torch.tensor(cols, dtype=torch.float64).t().contiguous()  # [out, in]
    return mat, torch.tensor(shifts, dtype=torch.float64)


@lru_cache(maxsize=None)
def fdct_passes() -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """(matrix, shifts) of the forward row pass and column pass (CPU float64)."""
    return _as_matrix(_fdct_1d, True), _as_matrix(_fdct_1d, False)


@lru_cache(maxsize=None)
def idct_passes() -> Tuple[Tuple[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """(matrix, shifts) of the inverse column pass and row pass (CPU float64)."""
    return _as_matrix(_idct_1d, True), _as_matrix(_idct_1d, False)


def quant_table(quality: int, chroma: bool) -> List[int]:
    """The baseline quantisation table libjpeg uses for an integer `quality` in 1..100.

    Args:
        quality: JPEG quality (IJG scale).
        chroma: chrominance table instead of luminance.
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be an integer in 1..100, got {quality!r}")
    q = int(quality)
    scale = 5000 // q if q < 50 else 200 - 2 * q
    base = CHROMA_TABLE if chroma else LUMA_TABLE
    return [min(max((b * scale + 50) // 100, 1), 255) for b in base]


def quant_reciprocals(table: Sequence[int]) -> Tuple[List[int], List[int], List[int]]:
    """libjpeg-turbo's reciprocal quantisation constants for the islow DCT (divisor = 8·q).

    A coefficient t is quantised as sign(t) · ((|t| + corr) · recip >> shift), which is how
    libjpeg-turbo (16-bit DCT elements, as in its SIMD builds) rounds — not always identical to
    rounding |t| / divisor, hence reproduced here.

    Returns:
        (recip, corr, shift), each 64 integers in natural order.
    """
    recips, corrs, shifts = [], [], []
    for q in table:
        divisor = int(q) << 3
        b = divisor.bit_length() - 1
        r = 16 + b
        fq, fr = divmod(1 << r, divisor)
        c = divisor // 2
        if fr == 0:  # power of two: one bit too large for 16 bits
            fq >>= 1
            r -= 1
        elif fr <= divisor // 2:
            c += 1
        else:
            fq += 1
        recips.append(fq)
        corrs.append(c)
        shifts.append(r)
    return recips, corrs, shifts
