"""Degradation presets: every value of the second-order model, named after Real-ESRGAN's options.

A preset is a `DegradationSpec`; `get_spec(name, **overrides)` returns a validated copy with some
values replaced. Ranges are (low, high) pairs; probabilities of `resize_prob*` are ordered
(up, down, keep). Noise σ is given on the 0..255 scale, as in Real-ESRGAN.

Presets:
- "rass": the RASS training degradation (Real-ESRGAN second-order model at scale 1).
- "realesrgan_x4" / "realesrgan_x2": Real-ESRGAN's own training degradation (scale 4 / 2); the
  low-resolution result is resized back to the input size (bilinear) and re-quantised.
- "lqseg_1" / "lqseg_2" / "lqseg_3": GleSAM's LQSeg levels — the "rass" model with the
  second-stage resize target divided by 1 / 2 / 4 (slight → severe); "lqseg_1" therefore equals
  "rass" (same parameters, byte-identical outputs for the same seed).
- "lqseg_train": GleSAM's online training degradation (`options/lrseg_add_mask_multi_dataset_ms.yaml`):
  first-stage resize probabilities [0.1, 0.2, 0.7] over [0.5, 1.5], the second-stage divisor drawn
  per image from [1, 2, 3, 3, 4, 4, 4, 4] (P(1) = P(2) = 1/8, P(3) = 1/4, P(4) = 1/2), output at
  the input size; kernels, noise and JPEG as "rass".
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

from rass.utils.errors import UserValueError

from .kernels import KERNEL_TYPES

__all__ = ["DegradationSpec", "PRESETS", "get_spec", "spec_field_names"]

_ODD_SIZES = tuple(range(7, 22, 2))
_PROBS6 = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
_MODES = ("area", "bilinear", "bicubic")


@dataclasses.dataclass(frozen=True)
class DegradationSpec:
    """All parameters of the second-order degradation model (defaults = the "rass" preset)."""

    scale: int = 1  # the LQ image is 1/scale of the input before being resized back
    kernel_range: Tuple[int, ...] = _ODD_SIZES  # odd blur-kernel sizes drawn uniformly
    kernel_pad_to: int = 21  # the release zero-pads kernels to this size (no effect on the filtered image)
    sinc_omega_small: Tuple[float, float] = (math.pi / 3, math.pi)  # sinc cut-off range for size < 13
    sinc_omega_large: Tuple[float, float] = (math.pi / 5, math.pi)  # sinc cut-off range for size >= 13
    # ---- first degradation
    kernel_list: Tuple[str, ...] = KERNEL_TYPES
    kernel_prob: Tuple[float, ...] = _PROBS6
    sinc_prob: float = 0.1
    blur_sigma: Tuple[float, float] = (0.2, 3.0)
    rotation_range: Tuple[float, float] = (-math.pi, math.pi)
    betag_range: Tuple[float, float] = (0.5, 4.0)
    betap_range: Tuple[float, float] = (1.0, 2.0)
    resize_prob: Tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: Tuple[float, float] = (0.15, 1.5)
    resize_modes: Tuple[str, ...] = _MODES
    gaussian_noise_prob: float = 0.5
    noise_range: Tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: Tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: Tuple[int, int] = (30, 95)
    # ---- second degradation
    second_blur_prob: float = 0.8
    kernel_list2: Tuple[str, ...] = KERNEL_TYPES
    kernel_prob2: Tuple[float, ...] = _PROBS6
    sinc_prob2: float = 0.1
    blur_sigma2: Tuple[float, float] = (0.2, 1.5)
    rotation_range2: Tuple[float, float] = (-math.pi, math.pi)
    betag_range2: Tuple[float, float] = (0.5, 4.0)
    betap_range2: Tuple[float, float] = (1.0, 2.0)
    resize_prob2: Tuple[float, float, float] = (0.3, 0.4, 0.3)
    resize_range2: Tuple[float, float] = (0.3, 1.2)
    resize_modes2: Tuple[str, ...] = _MODES
    second_resize_divisor: float = 1.0  # LQSeg level factor dividing the second-stage target size
    # per-image divisor drawn uniformly from this list (repeats = weights; replaces the fixed one); None: fixed
    second_resize_divisors: Optional[Tuple[float, ...]] = None
    gaussian_noise_prob2: float = 0.5
    noise_range2: Tuple[float, float] = (1.0, 25.0)
    poisson_scale_range2: Tuple[float, float] = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: Tuple[int, int] = (30, 95)
    # ---- final stage
    final_sinc_prob: float = 0.8
    final_sinc_omega: Tuple[float, float] = (math.pi / 3, math.pi)
    final_resize_modes: Tuple[str, ...] = _MODES
    final_resize_sinc_first_prob: float = 0.5  # P[(resize back + sinc) then JPEG]; else JPEG first

    def to_dict(self) -> Dict[str, Any]:
        """Plain-Python dict (lists for tuples), e.g. for a manifest. Optional values that are off
        (None) are left out, so a spec recorded before such a value existed still compares equal."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if v is not None}


def spec_field_names() -> Tuple[str, ...]:
    """Names of every overridable preset value."""
    return tuple(f.name for f in dataclasses.fields(DegradationSpec))


_RASS = DegradationSpec()
PRESETS: Dict[str, DegradationSpec] = {
    "rass": _RASS,
    "realesrgan_x4": dataclasses.replace(_RASS, scale=4),
    "realesrgan_x2": dataclasses.replace(_RASS, scale=2),
    "lqseg_1": dataclasses.replace(_RASS, second_resize_divisor=1.0),
    "lqseg_2": dataclasses.replace(_RASS, second_resize_divisor=2.0),
    "lqseg_3": dataclasses.replace(_RASS, second_resize_divisor=4.0),
    "lqseg_train": dataclasses.replace(
        _RASS, resize_prob=(0.1, 0.2, 0.7), resize_range=(0.5, 1.5),
        second_resize_divisors=(1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0),
    ),
}

_PAIRS = {f.name for f in dataclasses.fields(DegradationSpec) if f.type.startswith("Tuple[float, float]") or f.type == "Tuple[int, int]"}
_PROB_LISTS = {"kernel_prob", "kernel_prob2", "resize_prob", "resize_prob2"}
_PROBS = {n for n in spec_field_names() if n.endswith("_prob") or n.endswith("_prob2")} - _PROB_LISTS


_INT_TUPLES = ("kernel_range", "jpeg_range", "jpeg_range2")


_OPTIONAL_FLOAT_TUPLES = ("second_resize_divisors",)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Give an override the type of the preset value (YAML lists → tuples, ints → floats)."""
    if name in _OPTIONAL_FLOAT_TUPLES:
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
            return None  # an empty list switches the per-image draw off
        default = default if default is not None else (1.0,)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserValueError(f"Degradation value {name!r} must be a list, got {value!r}")
        if default and isinstance(default[0], str):
            return tuple(str(v) for v in value)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise UserValueError(f"Degradation value {name!r} must be a list of numbers, got {value!r}")
        if name in _INT_TUPLES:
            if any(float(v) != int(v) for v in value):
                raise UserValueError(f"Degradation value {name!r} must be a list of integers, got {value!r}")
            return tuple(int(v) for v in value)
        return tuple(float(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserValueError(f"Degradation value {name!r} must be a number, got {value!r}")
    if isinstance(default, int) and float(value) != int(value):
        raise UserValueError(f"Degradation value {name!r} must be an integer, got {value!r}")
    return type(default)(value)


def _validate(spec: DegradationSpec) -> None:
    def fail(name: str, msg: str) -> None:
        raise UserValueError(f"Degradation value {name}={getattr(spec, name)!r}: {msg}")

    if spec.scale < 1:
        fail("scale", "expected an integer >= 1")
    if not spec.kernel_range or any(k < 1 or k % 2 == 0 or k > spec.kernel_pad_to for k in spec.kernel_range):
        fail("kernel_range", f"expected odd sizes between 1 and kernel_pad_to={spec.kernel_pad_to}")
    if spec.kernel_pad_to % 2 == 0:
        fail("kernel_pad_to", "expected an odd size")
    for name in _PAIRS:
        if len(getattr(spec, name)) != 2 or getattr(spec, name)[0] > getattr(spec, name)[1]:
            fail(name, "expected [low, high] with low <= high")
    for name in _PROBS:
        if not 0.0 <= getattr(spec, name) <= 1.0:
            fail(name, "expected a probability in [0, 1]")
    for name in _PROB_LISTS:
        p = getattr(spec, name)
        if any(v < 0 for v in p) or sum(p) <= 0:
            fail(name, "expected non-negative weights with a positive sum")
    for lst, prob in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
        if len(getattr(spec, lst)) != len(getattr(spec, prob)):
            fail(prob, f"expected one weight per entry of {lst}")
        bad = [k for k in getattr(spec, lst) if k not in KERNEL_TYPES]
        if bad:
            fail(lst, f"unknown kernel types {bad}; expected some of {KERNEL_TYPES}")
    for name in ("resize_prob", "resize_prob2"):
        if len(getattr(spec, name)) != 3:
            fail(name, "expected three weights (up, down, keep)")
    for name in ("resize_modes", "resize_modes2", "final_resize_modes"):
        modes = getattr(spec, name)
        if not modes or any(m not in _MODES for m in modes):
            fail(name, f"expected a non-empty list of {_MODES}")
    for name in ("jpeg_range", "jpeg_range2"):
        lo, hi = getattr(spec, name)
        if not 1 <= lo <= hi <= 100:
            fail(name, "expected integer qualities with 1 <= low <= high <= 100")
    for name in ("blur_sigma", "blur_sigma2", "betag_range", "betag_range2", "betap_range", "betap_range2"):
        if getattr(spec, name)[0] <= 0:
            fail(name, "expected positive values")
    for name in ("sinc_omega_small", "sinc_omega_large", "final_sinc_omega"):
        lo, hi = getattr(spec, name)
        if not 0 < lo <= hi <= math.pi + 1e-9:
            fail(name, "expected 0 < low <= high <= pi")
    for name in ("resize_range", "resize_range2"):
        lo, hi = getattr(spec, name)
        if not lo <= 1.0 <= hi or lo <= 0:
            fail(name, "expected 0 < low <= 1 <= high (up-scales are drawn in [1, high], down-scales in [low, 1])")
    if spec.second_resize_divisor <= 0:
        fail("second_resize_divisor", "expected a positive number")
    if spec.second_resize_divisors is not None and any(v <= 0 for v in spec.second_resize_divisors):
        fail("second_resize_divisors", "expected a list of positive numbers (or None / [] for the fixed second_resize_divisor)")


def get_spec(preset: str, **overrides: Any) -> DegradationSpec:
    """A preset with some values replaced, validated.

    Args:
        preset: one of `PRESETS`.
        **overrides: preset values by name (see `DegradationSpec`), e.g. `jpeg_range=(50, 95)`.

    Returns:
        The `DegradationSpec`.
    """
    if preset not in PRESETS:
        raise UserValueError(f"Unknown degradation preset {preset!r}; expected one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    names = spec_field_names()
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UserValueError(f"Unknown degradation value(s) {unknown}; valid names: {list(names)}")
    values = {k: _coerce(k, v, getattr(base, k)) for k, v in overrides.items()}
    spec = dataclasses.replace(base, **values)
    _validate(spec)
    return spec
