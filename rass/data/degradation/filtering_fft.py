"""2-D filtering through the FFT: the same reflect-padded correlation as `filter2d`, for large kernels.

A direct k×k filter costs k² multiply-adds per pixel; through the FFT the cost hardly depends on
k. On CPU (one thread, 512×512) the FFT path is faster from k = 17 on (measured: k = 21,
8.7 → 4.3 ms; k = 13, 3.7 → 4.2 ms). Results equal the direct filter up to float rounding (about
1e-6 on [0, 1] images; tests check 1e-5).

Each sample is transformed on its own, with transform sizes that depend only on its own size and
kernel size, so a sample's result does not depend on the batch. FFT libraries (MKL) may round
differently with another thread count: the engine calls this only from its one-thread workers
(parallel.py), where the bits are fixed.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from .filtering import reflect_pad_hw

__all__ = ["filter2d_fft", "fft_size"]


@lru_cache(maxsize=1024)
def fft_size(n: int) -> int:
    """The smallest m >= n whose only prime factors are 2, 3 and 5 (fast transform lengths)."""
    m = max(1, int(n))
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def filter2d_fft(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each sample with its own kernel (reflect padding), through real 2-D FFTs.

    Args:
        x: B×C×H×W float tensor.
        kernels: B×kh×kw (or 1×kh×kw, shared) kernels with odd kh and kw.

    Returns:
        B×C×H×W tensor, equal to `filter2d(x, kernels)` up to float rounding.
    """
    if x.dim() != 4:
        raise ValueError(f"filter2d_fft expects B×C×H×W input, got shape {tuple(x.shape)}")
    if kernels.dim() != 3 or kernels.shape[-1] % 2 == 0 or kernels.shape[-2] % 2 == 0:
        raise ValueError(f"filter2d_fft expects B×kh×kw kernels with odd kh and kw, got shape {tuple(kernels.shape)}")
    b, _, h, w = x.shape
    if kernels.shape[0] not in (1, b):
        raise ValueError(f"filter2d_fft: {kernels.shape[0]} kernels for {b} samples")
    kh, kw = kernels.shape[-2:]
    size = (fft_size(h + kh - 1), fft_size(w + kw - 1))  # no wrap-around reaches the kept outputs
    out = []
    for i in range(b):
        padded = reflect_pad_hw(x[i : i + 1], kh // 2, kw // 2)
        kernel = kernels[min(i, kernels.shape[0] - 1)].to(x.dtype).flip(-2, -1)  # correlation = convolution with the flip
        spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kernel, s=size)
        full = torch.fft.irfft2(spectrum, s=size)
        out.append(full[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w])
    return torch.cat(out) if b > 1 else out[0].contiguous()
