"""JPEG compression round trips: a batched tensor codec and a libjpeg (Pillow / OpenCV) path.

The tensor codec reproduces libjpeg-turbo's default baseline codec step by step: fixed-point
RGB→YCbCr, 4:2:0 chroma down-sampling with alternating rounding bias, edge-replicated padding to
whole blocks, the integer "islow" DCT, reciprocal quantisation with the IJG quality-scaled
Annex-K tables, the integer inverse DCT, "fancy" (triangular) chroma up-sampling and fixed-point
YCbCr→RGB. Every step is integer arithmetic carried exactly in floating point (float32 where all
values stay below 2**24, float64 for the DCT), so results do not depend on batch composition or
device, and they match Pillow's / OpenCV's libjpeg-turbo (see tests for the measured agreement).

Differences from the DiffJPEG module the original release uses (deliberate): quality is an integer
(libjpeg semantics; the release feeds a float quality into a continuous table scaling), the tables
are not transposed, the image is edge-padded (not zero-padded) to whole blocks, colour values are
rounded to 8 bits where libjpeg rounds them, and chroma is up-sampled with libjpeg's triangle
filter instead of pixel repetition.

All images here are float tensors 3×H×W holding integers 0..255 (RGB); sizes may differ.
"""
from __future__ import annotations

import io
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from .jpeg_islow import fdct_passes, idct_passes, quant_reciprocals, quant_table

__all__ = ["jpeg_roundtrip", "jpeg_roundtrip_libjpeg"]


def _fix16(x: float) -> float:
    """libjpeg's FIX() with 16 fractional bits (colour conversion)."""
    return float(int(x * 65536 + 0.5))


# RGB → Y, Cb, Cr rows; offsets add libjpeg's rounding (0.5 for Y, 0.5 - 2**-16 plus 128 for Cb/Cr).
_RGB2YCC = (
    (_fix16(0.299), _fix16(0.587), _fix16(0.114)),
    (-_fix16(0.16874), -_fix16(0.33126), _fix16(0.5)),
    (_fix16(0.5), -_fix16(0.41869), -_fix16(0.08131)),
)
_RGB2YCC_OFFSET = (32768.0, 128.0 * 65536 + 32767, 128.0 * 65536 + 32767)
# (Cb - 128, Cr - 128) → R, G, B corrections (rounded by adding 0.5 before the shift).
_YCC2RGB = ((0.0, _fix16(1.402)), (-_fix16(0.34414), -_fix16(0.71414)), (_fix16(1.772), 0.0))
_CHUNK_PIXELS = 1 << 21  # images per DCT batch are grouped up to about this many pixels (exact anyway)


def _floor_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Arithmetic right shift of exactly-held integers (`x >> bits`)."""
    return torch.floor(x * (2.0**-bits))


class _Consts:
    """Device copies of the codec's constant matrices and per-quality tables (cached)."""

    _by_device: Dict[str, "_Consts"] = {}

    def __init__(self, device: torch.device):
        as32 = lambda v: torch.tensor(v, dtype=torch.float32, device=device)  # noqa: E731
        self.device = device
        self.rgb2ycc, self.rgb2ycc_off = as32(_RGB2YCC), as32(_RGB2YCC_OFFSET)[:, None]
        self.ycc2rgb = as32(_YCC2RGB)
        (f1, s1), (f2, s2) = fdct_passes()
        (i1, t1), (i2, t2) = idct_passes()
        self.passes = {k: self._pass(m, s, device) for k, (m, s) in {"f1": (f1, s1), "f2": (f2, s2), "i1": (i1, t1), "i2": (i2, t2)}.items()}
        self.tables: Dict[Tuple[int, bool], Tuple[torch.Tensor, ...]] = {}

    @staticmethod
    def _pass(mat: torch.Tensor, shifts: torch.Tensor, device: torch.device) -> Tuple[torch.Tensor, ...]:
        rnd = torch.where(shifts > 0, 2.0 ** (shifts - 1), torch.zeros_like(shifts))
        return mat.t().contiguous().to(device), rnd.to(device), (2.0 ** (-shifts)).to(device)

    @classmethod
    def get(cls, device: torch.device) -> "_Consts":
        key = str(device)
        if key not in cls._by_device:
            cls._by_device[key] = cls(device)
        return cls._by_device[key]

    def table(self, quality: int, chroma: bool) -> Tuple[torch.Tensor, ...]:
        """(table, recip, corr, 2**-shift) as 8×8 float64, transposed (u-major) like the coefficients."""
        key = (int(quality), bool(chroma))
        if key not in self.tables:
            table = quant_table(quality, chroma)
            recip, corr, shift = quant_reciprocals(table)
            as_t = lambda v: torch.tensor(v, dtype=torch.float64, device=self.device).view(8, 8).t().contiguous()  # noqa: E731
            self.tables[key] = (as_t(table), as_t(recip), as_t(corr), 2.0 ** -as_t(shift))
        return self.tables[key]


def _rgb_to_ycc(img: torch.Tensor, k: _Consts) -> torch.Tensor:
    """libjpeg's jccolor.c conversion; every product/sum is an integer below 2**24 (exact)."""
    flat = img.reshape(3, -1)
    return _floor_shift(torch.addmm(k.rgb2ycc_off, k.rgb2ycc, flat), 16).view_as(img)


def _ycc_to_rgb(ycc: torch.Tensor, k: _Consts) -> torch.Tensor:
    """libjpeg's jdcolor.c conversion with its range limiting (exact in float32)."""
    chroma = ycc[1:].reshape(2, -1) - 128.0
    delta = _floor_shift(torch.addmm(torch.full_like(ycc[:3].reshape(3, -1), 32768.0), k.ycc2rgb, chroma), 16)
    return (delta.view(3, *ycc.shape[1:]) + ycc[:1]).clamp_(0.0, 255.0)


def _pad_edge(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Replicate the last row/column of a C×h0×w0 tensor up to C×h×w."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    return F.pad(x[None], (0, pw, 0, ph), mode="replicate")[0]


def _downsample_h2v2(c: torch.Tensor) -> torch.Tensor:
    """2×2 sums with libjpeg's alternating rounding bias (1, 2, 1, 2, ...) per output column."""
    n, h, w = c.shape
    s = c.view(n, h // 2, 2, w // 2, 2).sum(dim=(2, 4))
    bias = torch.ones(w // 2, dtype=c.dtype, device=c.device)
    bias[1::2] = 2.0
    return _floor_shift(s + bias, 2)


def _upsample_h2v2_fancy(c: torch.Tensor) -> torch.Tensor:
    """libjpeg's triangle-filter chroma up-sampling (jdsample.c h2v2_fancy_upsample)."""
    n, h, w = c.shape
    c3 = 3.0 * c
    up = torch.cat([c[:, :1], c[:, :-1]], dim=1)
    down = torch.cat([c[:, 1:], c[:, -1:]], dim=1)
    v = torch.stack([c3 + up, c3 + down], dim=2).reshape(n, 2 * h, w)  # vertical 3:1 column sums
    v3 = 3.0 * v
    left = torch.cat([v[..., :1], v[..., :-1]], dim=-1)
    right = torch.cat([v[..., 1:], v[..., -1:]], dim=-1)
    even = _floor_shift(v3 + left + 8.0, 4)
    odd = _floor_shift(v3 + right + 7.0, 4)
    return torch.stack([even, odd], dim=-1).reshape(n, 2 * h, 2 * w)


def _upsample_h2v2_box(c: torch.Tensor) -> torch.Tensor:
    """Pixel repetition, which libjpeg uses when the down-sampled width is at most 2."""
    return c.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def _to_blocks(plane: torch.Tensor) -> torch.Tensor:
    """n×H×W (multiples of 8) → (n·H/8·W/8)×8×8 float64 blocks, level-shifted."""
    n, h, w = plane.shape
    blocks = plane.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).to(torch.float64)
    return blocks.reshape(-1, 8, 8) - 128.0


def _from_blocks(blocks: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    return blocks.view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def _pass_last_dim(x: torch.Tensor, p: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One exact integer islow pass along the last dim of N×8×8 float64 blocks."""
    mat_t, rnd, scale = p
    y = torch.mm(x.reshape(-1, 8), mat_t).add_(rnd).mul_(scale).floor_()
    return y.view_as(x)


def _quantise_dequantise(coef: torch.Tensor, tables: Tuple[torch.Tensor, ...]) -> torch.Tensor:
    table, recip, corr, inv = tables
    mag = coef.abs().add_(corr).mul_(recip).mul_(inv).floor_()
    return mag.copysign_(coef).mul_(table)


def _roundtrip_chunk(images: Sequence[torch.Tensor], qualities: Sequence[int], k: _Consts) -> List[torch.Tensor]:
    metas, luma_blocks, chroma_blocks = [], [], []
    for img in images:
        h, w = img.shape[-2:]
        ycc = _rgb_to_ycc(img.to(torch.float32), k)
        hy, wy = -(-h // 8) * 8, -(-w // 8) * 8
        hc, wc = -(-h // 16) * 8, -(-w // 16) * 8  # chroma planes in whole blocks
        luma_blocks.append(_to_blocks(_pad_edge(ycc[:1], hy, wy)))
        chroma = _downsample_h2v2(_pad_edge(ycc[1:], h + h % 2, 2 * wc))
        chroma_blocks.append(_to_blocks(_pad_edge(chroma, hc, wc)))
        metas.append((h, w, hy, wy, hc, wc))
    counts = [b.shape[0] for b in luma_blocks] + [b.shape[0] for b in chroma_blocks]
    x = _pass_last_dim(torch.cat(luma_blocks + chroma_blocks), k.passes["f1"])  # rows: [N, y, u]
    x = _pass_last_dim(x.transpose(1, 2).contiguous(), k.passes["f2"])  # columns: [N, u, v]
    parts = list(torch.split(x, counts))
    n = len(images)
    for j in range(2 * n):
        parts[j] = _quantise_dequantise(parts[j], k.table(qualities[j % n], chroma=j >= n))
    x = _pass_last_dim(torch.cat(parts), k.passes["i1"])  # inverse over v: [N, u, y]
    x = _pass_last_dim(x.transpose(1, 2).contiguous(), k.passes["i2"])  # inverse over u: [N, y, x]
    x = x.add_(128.0).clamp_(0.0, 255.0).to(torch.float32)
    parts = torch.split(x, counts)

    out = []
    for j, (h, w, hy, wy, hc, wc) in enumerate(metas):
        y = _from_blocks(parts[j], 1, hy, wy)[:, :h, :w]
        c = _from_blocks(parts[n + j], 2, hc, wc)[:, : (h + 1) // 2, : (w + 1) // 2]
        c = _upsample_h2v2_fancy(c) if c.shape[-1] > 2 else _upsample_h2v2_box(c)
        out.append(_ycc_to_rgb(torch.cat([y, c[:, :h, :w]]), k).to(dtype=images[j].dtype))
    return out


def jpeg_roundtrip(images: Sequence[torch.Tensor], qualities: Sequence[int]) -> List[torch.Tensor]:
    """Compress and decompress each image as libjpeg(-turbo) does by default (4:2:0, islow).

    The DCTs of many images run as one batched matrix product; the arithmetic is exact, so the
    output of an image never depends on the other images in the call.

    Args:
        images: 3×H×W float tensors with integer values in 0..255 (RGB); sizes may differ.
        qualities: one integer quality in 1..100 per image.

    Returns:
        The decoded images, same shapes/dtype/device, integer values 0..255.
    """
    if len(images) != len(qualities):
        raise ValueError(f"jpeg_roundtrip: {len(images)} images but {len(qualities)} qualities")
    for img in images:
        if img.dim() != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
            raise ValueError(f"jpeg_roundtrip expects non-empty 3×H×W images, got shape {tuple(img.shape)}")
    out: List[torch.Tensor] = []
    start = 0
    while start < len(images):  # chunks bound the temporary memory; results are chunk-independent
        stop, pixels = start, 0
        while stop < len(images) and (stop == start or pixels + images[stop][0].numel() <= _CHUNK_PIXELS):
            pixels += images[stop][0].numel()
            stop += 1
        out.extend(_roundtrip_chunk(images[start:stop], [int(q) for q in qualities[start:stop]], _Consts.get(images[start].device)))
        start = stop
    return out


def jpeg_roundtrip_libjpeg(
    image: np.ndarray, quality: int, backend: str = "pillow", channels_first: bool = False
) -> np.ndarray:
    """JPEG round trip through the system codec (for CPU workers and as the reference).

    Args:
        image: H×W×3 uint8 RGB array (3×H×W with `channels_first`).
        quality: integer quality 1..100.
        backend: "pillow" or "opencv" (both use libjpeg-turbo with 4:2:0 sub-sampling).
        channels_first: planar 3×H×W input and output (the codecs' own channel merge/split
            replaces two interleaving copies).

    Returns:
        The decoded uint8 RGB array, same layout as `image`.
    """
    layout = "3×H×W" if channels_first else "H×W×3"
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0 if channels_first else 2] != 3:
        raise ValueError(f"jpeg_roundtrip_libjpeg expects an {layout} uint8 array, got {image.dtype} {image.shape}")
    quality = int(quality)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    if backend == "pillow":
        from PIL import Image

        if channels_first:
            pil = Image.merge("RGB", [Image.fromarray(np.ascontiguousarray(p)) for p in image])
        else:
            pil = Image.fromarray(image, mode="RGB")
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
        buf.seek(0)
        with Image.open(buf) as im:
            im = im if im.mode == "RGB" else im.convert("RGB")
            if channels_first:
                return np.stack([np.asarray(p) for p in im.split()])
            return np.array(im)
    if backend == "opencv":
        import cv2

        if channels_first:
            bgr = cv2.merge([np.ascontiguousarray(p) for p in image[::-1]])
        else:
            bgr = np.ascontiguousarray(image[..., ::-1])
        ok, enc = cv2.imencode(".jpg", bgr, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed to encode a JPEG")
        dec = cv2.imdecode(enc, cv2.IMREAD_COLOR)
        if channels_first:
            return np.stack(cv2.split(dec)[::-1])
        return np.ascontiguousarray(dec[..., ::-1])
    raise ValueError(f"Unknown JPEG backend {backend!r}; expected 'pillow' or 'opencv'")
