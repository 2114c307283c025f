"""Per-image sampling of every random choice of the second-order degradation.

All draws of one image come from one CPU `torch.Generator` seeded with that image's seed, in a
fixed order, so the parameters depend only on the seed, the spec and the input size. The result
is a plain, JSON-serialisable dict (recorded in manifests and returned for logging).

Quirks of the release kept on purpose:
- the first-stage resize uses `scale_factor` (output size floor(H·s), sampling grid scaled by 1/s);
- the second-stage target is int(H / scale · s / divisor), relative to the *original* size; the
  divisor is `second_resize_divisor`, or drawn uniformly per image from `second_resize_divisors`
  when that list is set (GleSAM's training `ds_scale`; the draw is skipped otherwise, so the other
  presets' parameters are unchanged);
- anisotropic σy is drawn from the same range as σx; rotation in [-π, π];
- β of generalized/plateau kernels is drawn from [β_low, 1] or [1, β_high] with equal chance
  (so plateau β = 1 half the time with the published [1, 2]);
- the final sinc kernel is drawn with probability final_sinc_prob, otherwise the identity.
Deviation: JPEG qualities are integers drawn uniformly from [low, high] (libjpeg has no
fractional quality; the release fed a float into DiffJPEG).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from .presets import DegradationSpec

__all__ = ["sample_params", "ParamSampler"]


class ParamSampler:
    """Scalar draws from a seeded CPU generator (float64 uniforms).

    Args:
        seed: the image's seed (any Python int; reduced modulo 2**63).
    """

    def __init__(self, seed: int):
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(seed) % (1 << 63))

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        u = torch.rand((), generator=self.gen, dtype=torch.float64).item()
        return low + (high - low) * u

    def choice(self, items: Sequence[Any], weights: Optional[Sequence[float]] = None) -> Any:
        if weights is None:
            return items[int(torch.randint(len(items), (), generator=self.gen).item())]
        total, u, acc = float(sum(weights)), self.uniform(), 0.0
        for item, w in zip(items, weights):
            acc += w / total
            if u < acc:
                return item
        return items[-1]

    def randint(self, low: int, high: int) -> int:
        """Uniform integer in [low, high] (inclusive)."""
        return int(torch.randint(int(low), int(high) + 1, (), generator=self.gen).item())

    def seed63(self) -> int:
        return int(torch.randint(0, 1 << 62, (), generator=self.gen).item())


def _beta(s: ParamSampler, low: float, high: float) -> float:
    if low < 1.0 < high:
        return s.uniform(low, 1.0) if s.uniform() < 0.5 else s.uniform(1.0, high)
    return s.uniform(low, high)


def _blur_kernel(s: ParamSampler, spec: DegradationSpec, second: bool) -> Dict[str, Any]:
    sfx = "2" if second else ""
    size = int(s.choice(spec.kernel_range))
    if s.uniform() < getattr(spec, "sinc_prob" + sfx):
        lo, hi = spec.sinc_omega_small if size < 13 else spec.sinc_omega_large
        return {"type": "sinc", "size": size, "omega": s.uniform(lo, hi)}
    kind = s.choice(getattr(spec, "kernel_list" + sfx), getattr(spec, "kernel_prob" + sfx))
    lo, hi = getattr(spec, "blur_sigma" + sfx)
    out: Dict[str, Any] = {"type": kind, "size": size, "sigma_x": s.uniform(lo, hi)}
    if kind.endswith("aniso"):
        out["sigma_y"] = s.uniform(lo, hi)
        out["theta"] = s.uniform(*getattr(spec, "rotation_range" + sfx))
    if kind.startswith("generalized"):
        out["beta"] = _beta(s, *getattr(spec, "betag_range" + sfx))
    elif kind.startswith("plateau"):
        out["beta"] = _beta(s, *getattr(spec, "betap_range" + sfx))
    return out


def _updown_scale(s: ParamSampler, probs: Sequence[float], rng: Tuple[float, float]) -> float:
    kind = s.choice(("up", "down", "keep"), probs)
    if kind == "up":
        return s.uniform(1.0, rng[1])
    if kind == "down":
        return s.uniform(rng[0], 1.0)
    return 1.0


def _noise(s: ParamSampler, spec: DegradationSpec, second: bool) -> Dict[str, Any]:
    sfx = "2" if second else ""
    if s.uniform() < getattr(spec, "gaussian_noise_prob" + sfx):
        out = {"type": "gaussian", "sigma": s.uniform(*getattr(spec, "noise_range" + sfx))}
    else:
        out = {"type": "poisson", "scale": s.uniform(*getattr(spec, "poisson_scale_range" + sfx))}
    out["gray"] = bool(s.uniform() < getattr(spec, "gray_noise_prob" + sfx))
    return out


def sample_params(spec: DegradationSpec, seed: int, height: int, width: int) -> Dict[str, Any]:
    """Draw every random choice for one image.

    Args:
        spec: the degradation model.
        seed: the image's seed.
        height, width: the input image size.

    Returns:
        A JSON-serialisable dict: seed, input size, the kernels' parameters, resize scales/modes/
        sizes, noise types/strengths, JPEG qualities, the final order and a seed for the noise.
    """
    s = ParamSampler(seed)
    p: Dict[str, Any] = {"seed": int(seed), "size": [int(height), int(width)]}
    p["blur1"] = _blur_kernel(s, spec, second=False)
    scale1 = _updown_scale(s, spec.resize_prob, spec.resize_range)
    h1, w1 = max(1, math.floor(height * scale1)), max(1, math.floor(width * scale1))
    p["resize1"] = {"scale": scale1, "mode": s.choice(spec.resize_modes), "size": [h1, w1]}
    p["noise1"] = _noise(s, spec, second=False)
    p["jpeg1"] = s.randint(*spec.jpeg_range)

    p["blur2"] = _blur_kernel(s, spec, second=True) if s.uniform() < spec.second_blur_prob else None
    scale2 = _updown_scale(s, spec.resize_prob2, spec.resize_range2)
    divisor = spec.second_resize_divisor
    if spec.second_resize_divisors is not None:  # GleSAM's training `ds_scale`, drawn where the release draws it
        divisor = float(s.choice(spec.second_resize_divisors))
    div = spec.scale * divisor
    h2, w2 = max(1, int(height / div * scale2)), max(1, int(width / div * scale2))
    p["resize2"] = {"scale": scale2, "mode": s.choice(spec.resize_modes2), "size": [h2, w2], "divisor": float(divisor)}
    p["noise2"] = _noise(s, spec, second=True)

    order = "resize_sinc_jpeg" if s.uniform() < spec.final_resize_sinc_first_prob else "jpeg_resize_sinc"
    final: Dict[str, Any] = {"order": order, "mode": s.choice(spec.final_resize_modes)}
    final["size"] = [max(1, height // spec.scale), max(1, width // spec.scale)]
    if s.uniform() < spec.final_sinc_prob:
        final["sinc"] = {"type": "sinc", "size": int(s.choice(spec.kernel_range)), "omega": s.uniform(*spec.final_sinc_omega)}
    else:
        final["sinc"] = None
    final["jpeg"] = s.randint(*spec.jpeg_range2)
    p["final"] = final
    p["noise_seed"] = s.seed63()
    return p
