"""Blur kernels of the Real-ESRGAN degradation model, computed in float64 with torch.

Kernel shapes (all normalised to sum 1, centred on a size×size grid, size odd):
- Gaussian, isotropic or anisotropic: exp(-q/2) with q = pᵀ Σ⁻¹ p, Σ = R(θ) diag(σx², σy²) R(θ)ᵀ;
- generalized Gaussian: exp(-q^β / 2);
- plateau: 1 / (1 + q^β);
- sinc (circular low-pass with cut-off ω): ω J₁(ω r) / (2π r), value ω²/(4π) at r = 0;
- pulse: the identity (a single 1 in the centre).
Here p = (x, y) with x along columns and y along rows, as in Real-ESRGAN's mesh grid.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

__all__ = [
    "gaussian_kernel",
    "gaussian_kernel_1d",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "pulse_kernel",
    "pad_kernel",
    "kernel_from_params",
    "KERNEL_TYPES",
]

# Kernel type names of the mixed sampler (Real-ESRGAN's names).
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"Kernel size must be a positive odd integer, got {size!r}")
    return int(size)


def _quadratic_form(size: int, sigma_x: float, sigma_y: Optional[float], theta: float) -> torch.Tensor:
    """q = pᵀ Σ⁻¹ p on the size×size grid (float64)."""
    size = _check_size(size)
    if sigma_x <= 0 or (sigma_y is not None and sigma_y <= 0):
        raise ValueError(f"Kernel sigmas must be positive, got sigma_x={sigma_x}, sigma_y={sigma_y}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    # Σ⁻¹ = R diag(1/σx², 1/σy²) Rᵀ
    a, b = 1.0 / sigma_x**2, 1.0 / sigma_y**2
    i11 = c * c * a + s * s * b
    i22 = s * s * a + c * c * b
    i12 = c * s * (a - b)
    return i11 * xx * xx + 2 * i12 * xx * yy + i22 * yy * yy


def _normalise(k: torch.Tensor) -> torch.Tensor:
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.0) -> torch.Tensor:
    """Bivariate Gaussian kernel (isotropic when `sigma_y` is None).

    Args:
        size: odd kernel size.
        sigma_x: standard deviation along the (rotated) x axis, in pixels.
        sigma_y: standard deviation along the (rotated) y axis; None = `sigma_x`.
        theta: rotation in radians.

    Returns:
        size×size float64 tensor summing to 1.
    """
    return _normalise(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def gaussian_kernel_1d(size: int, sigma: float) -> torch.Tensor:
    """1-D Gaussian (float64, sum 1); its outer product with itself is `gaussian_kernel(size, sigma)`.

    Args:
        size: odd kernel size.
        sigma: standard deviation in pixels.
    """
    size = _check_size(size)
    if sigma <= 0:
        raise ValueError(f"Kernel sigma must be positive, got {sigma}")
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    return _normalise(torch.exp(-0.5 * (ax / sigma) ** 2))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """Generalized Gaussian exp(-q^β/2) (β = 1: Gaussian).

    Args:
        size, sigma_x, sigma_y, theta: as in `gaussian_kernel`.
        beta: shape exponent (> 0).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(torch.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta).pow(beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: Optional[float] = None, theta: float = 0.0, beta: float = 1.0
) -> torch.Tensor:
    """Plateau-shaped kernel 1 / (1 + q^β).

    Args:
        size, sigma_x, sigma_y, theta: as in `gaussian_kernel`.
        beta: shape exponent (> 0).
    """
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    return _normalise(1.0 / (_quadratic_form(size, sigma_x, sigma_y, theta).pow(beta) + 1.0))


def sinc_kernel(size: int, omega: float) -> torch.Tensor:
    """Circularly symmetric ideal low-pass (2-D sinc / jinc) kernel with cut-off `omega`.

    Args:
        size: odd kernel size.
        omega: cut-off angular frequency in radians per pixel, in (0, π].

    Returns:
        size×size float64 tensor summing to 1.
    """
    size = _check_size(size)
    if not 0 < omega <= math.pi + 1e-12:
        raise ValueError(f"Sinc cut-off omega must be in (0, pi], got {omega}")
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    r = torch.sqrt(xx * xx + yy * yy)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    k = omega * torch.special.bessel_j1(omega * safe_r) / (2 * math.pi * safe_r)
    k = torch.where(r > 0, k, torch.full_like(k, omega**2 / (4 * math.pi)))
    return _normalise(k)


def pulse_kernel(size: int) -> torch.Tensor:
    """The identity kernel: 1 at the centre of a size×size grid (float64)."""
    size = _check_size(size)
    k = torch.zeros(size, size, dtype=torch.float64)
    k[size // 2, size // 2] = 1.0
    return k


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad a centred odd kernel to size×size."""
    size = _check_size(size)
    k = kernel.shape[-1]
    if k > size:
        raise ValueError(f"Cannot pad a {k}×{k} kernel to {size}×{size}")
    p = (size - k) // 2
    return torch.nn.functional.pad(kernel, (p, p, p, p))


def kernel_from_params(params: Optional[Dict[str, object]], pad_to: Optional[int] = None) -> torch.Tensor:
    """Rebuild a kernel from the parameters recorded by the sampler.

    Args:
        params: dict with "type" (a `KERNEL_TYPES` entry, "sinc") and its size/shape values, or
            None for the pulse (identity) kernel.
        pad_to: size of the returned (zero-padded) kernel; None keeps the drawn size (the pulse
            is then 1×1).

    Returns:
        Square float64 kernel.
    """
    if params is None:
        return pulse_kernel(pad_to or 1)
    kind, size = params["type"], int(params["size"])  # type: ignore[arg-type]
    if kind == "sinc":
        k = sinc_kernel(size, float(params["omega"]))  # type: ignore[arg-type]
    elif kind in KERNEL_TYPES:
        sx = float(params["sigma_x"])  # type: ignore[arg-type]
        sy = None if kind.endswith("_iso") or kind == "iso" else float(params["sigma_y"])  # type: ignore[arg-type]
        theta = 0.0 if sy is None else float(params["theta"])  # type: ignore[arg-type]
        if kind in ("iso", "aniso"):
            k = gaussian_kernel(size, sx, sy, theta)
        elif kind.startswith("generalized"):
            k = generalized_gaussian_kernel(size, sx, sy, theta, float(params["beta"]))  # type: ignore[arg-type]
        else:
            k = plateau_kernel(size, sx, sy, theta, float(params["beta"]))  # type: ignore[arg-type]
    else:
        raise ValueError(f"Unknown kernel type {kind!r}; expected one of {KERNEL_TYPES + ('sinc',)}")
    return k if pad_to is None else pad_kernel(k, pad_to)

