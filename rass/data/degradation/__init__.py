"""Real-ESRGAN second-order degradation: kernels, noise, JPEG, resize, presets; batched + seeded.

Public entry point::

    deg = build_degradation("rass", jpeg_range=(40, 95))
    lq = deg(images, seeds=[0, 1, 2])            # B×3×H×W in [0, 1] → same, on 8-bit levels
    lq, params = deg(images, seeds, return_params=True)

`OnlineDegradation` (online.py) is the config-driven wrapper used in training.
"""
from __future__ import annotations

from typing import Any, Optional

from .filtering import filter2d
from .jpeg import jpeg_roundtrip, jpeg_roundtrip_libjpeg
from .kernels import (
    gaussian_kernel,
    generalized_gaussian_kernel,
    kernel_from_params,
    plateau_kernel,
    pulse_kernel,
    sinc_kernel,
)
from .noise import add_noise, gaussian_noise, poisson_noise
from .online import OnlineDegradation, derive_seed, model_side_degradation
from .pipeline import Degradation, quantize_8bit
from .presets import PRESETS, DegradationSpec, get_spec
from .resize import resize
from .sampling import sample_params

__all__ = [
    "build_degradation",
    "Degradation",
    "DegradationSpec",
    "OnlineDegradation",
    "model_side_degradation",
    "derive_seed",
    "PRESETS",
    "get_spec",
    "sample_params",
    "filter2d",
    "resize",
    "add_noise",
    "gaussian_noise",
    "poisson_noise",
    "jpeg_roundtrip",
    "jpeg_roundtrip_libjpeg",
    "gaussian_kernel",
    "generalized_gaussian_kernel",
    "plateau_kernel",
    "sinc_kernel",
    "pulse_kernel",
    "kernel_from_params",
    "quantize_8bit",
]


def build_degradation(
    preset: str,
    seed: Optional[int] = None,
    jpeg_backend: str = "auto",
    chunk_size: Optional[int] = None,
    num_threads: Optional[int] = None,
    **overrides: Any,
) -> Degradation:
    """Build the degradation callable of a preset.

    Args:
        preset: "rass", "realesrgan_x4", "realesrgan_x2", "lqseg_1", "lqseg_2" or "lqseg_3".
        seed: seed for the per-image seeds drawn when a call passes none (None: OS entropy).
        jpeg_backend: "auto", "tensor", "pillow" or "opencv" (identical results with libjpeg-turbo).
        chunk_size: images run through the stages together (None: 1 on CPU, all on GPU).
        num_threads: CPU worker threads, one image chunk each at a time, every torch operation
            on one thread (None: `torch.get_num_threads()` at call time). Outputs do not depend
            on it.
        **overrides: preset values to replace, by `DegradationSpec` field name.

    Returns:
        `deg(images, seeds=None, return_params=False)`: B×3×H×W float in [0, 1] on any device →
        degraded batch (same shape/device, 8-bit levels); see `Degradation.__call__`.
    """
    spec = get_spec(preset, **overrides)
    return Degradation(spec, seed=seed, jpeg_backend=jpeg_backend, chunk_size=chunk_size, num_threads=num_threads)
