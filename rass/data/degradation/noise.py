"""Additive Gaussian and Poisson (shot) noise, colour or gray, drawn from a given generator.

Images are 3×H×W float tensors in [0, 1]. Noise is drawn per image from that image's own
generator (on the image's device), so it never depends on other images.

Gaussian: x + σ/255 · n, n ~ N(0, 1) per pixel and channel (gray: one plane for all channels).
Poisson (Real-ESRGAN's definition): the image is rounded to 8 bits, its number of distinct levels
v is rounded up to a power of two, and noise = scale · (Poisson(v·x̂)/v − x̂) with x̂ the rounded
image (gray: computed on the luma x̂ = round(0.2989 R + 0.587 G + 0.114 B) and shared by all
channels). The noisy image is clamped to [0, 1]. The Poisson counts are drawn exactly, by
inversion of tabulated distribution functions (poisson.py; about 3× faster than `torch.poisson`).
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

from .poisson import poisson_from_levels

__all__ = ["gaussian_noise", "poisson_noise", "add_noise", "count_levels"]

_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights, as in Real-ESRGAN


def gaussian_noise(image: torch.Tensor, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise for one image.

    Args:
        image: 3×H×W tensor (only its shape/dtype/device are used).
        sigma: standard deviation on the 0..255 scale.
        gray: one noise plane shared by the three channels.
        generator: the image's generator (same device as `image`).

    Returns:
        3×H×W noise in [0, 1] units.
    """
    c, h, w = image.shape
    planes = 1 if gray else c
    n = torch.randn((planes, h, w), generator=generator, device=image.device, dtype=image.dtype)
    n = n * (sigma / 255.0)
    return n.expand(c, h, w) if gray else n


def count_levels(quantised: torch.Tensor) -> int:
    """Number of distinct values of a tensor holding integers 0..255."""
    flat = quantised.reshape(-1)
    hist = torch.bincount(flat if flat.dtype == torch.uint8 else flat.to(torch.int64), minlength=256)
    return int(torch.count_nonzero(hist).item())


def poisson_noise(image: torch.Tensor, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Poisson noise for one image (see the module docstring).

    Args:
        image: 3×H×W tensor in [0, 1].
        scale: noise multiplier.
        gray: luma-only noise shared by the three channels.
        generator: the image's generator (same device as `image`).

    Returns:
        3×H×W noise.
    """
    c, h, w = image.shape
    src = image
    if gray:
        r, g, b = image[0], image[1], image[2]
        src = (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b)[None]
    levels = src.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
    vals = float(2 ** math.ceil(math.log2(max(count_levels(levels), 1))))
    counts = poisson_from_levels(levels, vals, generator)
    noise = counts.to(image.dtype).div_(vals).sub_(levels.to(image.dtype).div_(255.0)).mul_(scale)
    return noise.expand(c, h, w) if gray else noise


def add_noise(image: torch.Tensor, params: Dict[str, Any], generator: torch.Generator) -> torch.Tensor:
    """Add the noise described by sampled `params` and clamp to [0, 1].

    Args:
        image: 3×H×W tensor in [0, 1].
        params: {"type": "gaussian", "sigma": σ, "gray": bool} or
            {"type": "poisson", "scale": s, "gray": bool}.
        generator: the image's generator.
    """
    if params["type"] == "gaussian":
        noise = gaussian_noise(image, float(params["sigma"]), bool(params["gray"]), generator)
    elif params["type"] == "poisson":
        noise = poisson_noise(image, float(params["scale"]), bool(params["gray"]), generator)
    else:
        raise ValueError(f"Unknown noise type {params['type']!r}; expected 'gaussian' or 'poisson'")
    return (image + noise).clamp_(0.0, 1.0)
