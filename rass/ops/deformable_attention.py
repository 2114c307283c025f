"""Multi-scale deformable attention sampling (Deformable DETR), with backend dispatch.

Shapes (the usual Deformable-DETR convention):
    value               N x S x M x D      S = sum of H_l * W_l over the L levels, M heads
    spatial_shapes      L x 2 (int64)      (H_l, W_l) of each level
    level_start_index   L (int64)          offset of each level in S
    sampling_locations  N x Lq x M x L x P x 2   normalised (x, y) in [0, 1]
    attention_weights   N x Lq x M x L x P
    output              N x Lq x (M * D)

Backends: "kernel" (the compiled op of the `torch-ms-deform-attn` package), "torch" (bilinear
`grid_sample`, zero padding, align_corners=False: the same sampling rule as the kernel) and
"auto" (the kernel where it is installed and built for the tensor's device, else "torch").
Under autocast, and for float16/bfloat16 inputs, the sampling runs in float32; under autocast the
output stays float32.
"""
from __future__ import annotations

import contextlib
import logging
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from rass.utils.errors import UserRuntimeError

__all__ = [
    "BACKENDS",
    "kernel_available",
    "kernel_import_error",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "resolve_backend",
]

logger = logging.getLogger(__name__)

#: Accepted values of the `backend` argument.
BACKENDS = ("auto", "kernel", "torch")

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_NOT_LOADED = object()
# Lazily filled cache: the imported kernel package (or None) and why the import failed.
_KERNEL = {"module": _NOT_LOADED, "native": None, "error": None}


def _load_kernel():
    """Import `torch_ms_deform_attn` once; return the module, or None when it cannot be used."""
    if _KERNEL["module"] is _NOT_LOADED:
        try:
            import torch_ms_deform_attn as module
            from torch_ms_deform_attn import _C as native
        except Exception as e:  # ImportError, or OSError/RuntimeError from a stale binary
            _KERNEL.update(module=None, native=None, error=f"{type(e).__name__}: {e}")
            logger.info("torch-ms-deform-attn kernel unavailable (%s); using the grid_sample path.", e)
        else:
            _KERNEL.update(module=module, native=native, error=None)
    return _KERNEL["module"]


def _reset_kernel_cache() -> None:
    """Forget the import result so that the next call imports again (for tests)."""
    _KERNEL.update(module=_NOT_LOADED, native=None, error=None)


def kernel_import_error() -> Optional[str]:
    """Why the kernel package could not be imported, or None when it imported fine."""
    _load_kernel()
    return _KERNEL["error"]


def kernel_available(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether the compiled kernel is installed and built for `device`'s type.

    Args:
        device: a device or device string ("cpu", "cuda:0", ...).
    """
    if _load_kernel() is None:
        return False
    kind = torch.device(device).type
    native = _KERNEL["native"]
    if kind == "cpu":
        return True
    if kind == "cuda":
        return bool(getattr(native, "with_cuda", False))
    if kind == "mps":
        return bool(getattr(native, "with_mps", False))
    return False


def resolve_backend(backend: str, device: Union[str, torch.device]) -> str:
    """Turn a requested backend into the one that will run ("kernel" or "torch").

    Args:
        backend: "auto", "kernel" or "torch".
        device: the device of the inputs.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: "kernel" was forced but is not available for the device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"ms_deform_attn: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    available = kernel_available(device)
    if backend == "kernel" and not available:
        why = kernel_import_error() or f"the installed kernel is not built for device type {torch.device(device).type!r}"
        raise UserRuntimeError(
            f"ms_deform_attn: backend='kernel' requested but the torch-ms-deform-attn kernel is unavailable ({why}). "
            "Install it with `pip install --no-build-isolation torch-ms-deform-attn` or use backend='auto'/'torch'."
        )
    return "kernel" if available else "torch"


def _as_int_pairs(spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]]) -> List[Tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_pytorch(
    value: torch.Tensor,
    spatial_shapes: Union[torch.Tensor, Sequence[Sequence[int]]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    level_start_index: Union[torch.Tensor, Sequence[int], None] = None,
) -> torch.Tensor:
    """Deformable attention sampling with `grid_sample` (any device/dtype, twice differentiable).

    Args:
        value: N x S x M x D.
        spatial_shapes: L x 2 tensor or list of (H, W).
        sampling_locations: N x Lq x M x L x P x 2, (x, y) in [0, 1].
        attention_weights: N x Lq x M x L x P (used as given, no softmax).
        level_start_index: L offsets into S; default: cumulative sizes of the levels.

    Returns:
        N x Lq x (M * D).
    """
    n, s, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = _as_int_pairs(spatial_shapes)
    if level_start_index is None:
        starts = [sum(h * w for h, w in shapes[:i]) for i in range(len(shapes))]
    elif isinstance(level_start_index, torch.Tensor):
        starts = [int(v) for v in level_start_index.tolist()]
    else:
        starts = [int(v) for v in level_start_index]
    # grid_sample expects coordinates in [-1, 1] with align_corners=False semantics.
    grids = sampling_locations * 2.0 - 1.0
    out = None
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        # (N, HW, M, D) -> (N*M, D, H, W)
        v = value[:, start : start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p, 2)
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        # (N, Lq, M, P) -> (N*M, Lq, P); weighted sum over the points of this level.
        wts = attention_weights[:, :, :, lvl].transpose(1, 2).reshape(n * m, lq, p)
        level_out = torch.einsum("bdqp,bqp->bdq", sampled, wts)
        out = level_out if out is None else out + level_out
    # (N*M, D, Lq) -> (N, Lq, M*D) with the head index outermost in the channel dimension.
    return out.view(n, m, d, lq).permute(0, 3, 1, 2).reshape(n, lq, m * d)


def _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights) -> None:
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be N x S x M x D, got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(
            f"ms_deform_attn: sampling_locations must be N x Lq x M x L x P x 2, got {tuple(sampling_locations.shape)}"
        )
    n, _, m, _ = value.shape
    ln, lq, lm, num_levels, p, _ = sampling_locations.shape
    if (ln, lm) != (n, m):
        raise ValueError(
            f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} do not match value "
            f"{tuple(value.shape)} in batch size / number of heads"
        )
    if tuple(attention_weights.shape) != (n, lq, m, num_levels, p):
        raise ValueError(
            f"ms_deform_attn: attention_weights must have shape {(n, lq, m, num_levels, p)}, "
            f"got {tuple(attention_weights.shape)}"
        )
    if tuple(spatial_shapes.shape) != (num_levels, 2) or tuple(level_start_index.shape) != (num_levels,):
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must be {num_levels} x 2 and level_start_index {num_levels}, "
            f"got {tuple(spatial_shapes.shape)} and {tuple(level_start_index.shape)}"
        )


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    backend: str = "auto",
) -> torch.Tensor:
    """Multi-scale deformable attention: bilinear samples of `value`, weighted and summed.

    Args:
        value: N x S x M x D.
        spatial_shapes: L x 2 int64 tensor of (H, W) per level.
        level_start_index: L int64 tensor, the offset of each level in S.
        sampling_locations: N x Lq x M x L x P x 2, normalised (x, y) (0 = left/top border).
        attention_weights: N x Lq x M x L x P.
        backend: "auto", "kernel" or "torch" (see the module docstring).

    Returns:
        N x Lq x (M * D); float32 under autocast, else the dtype of `value`.
    """
    spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=value.device)
    level_start_index = torch.as_tensor(level_start_index, dtype=torch.long, device=value.device)
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    chosen = resolve_backend(backend, value.device)
    device_type = value.device.type
    amp_on = torch.amp.autocast_mode.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    in_dtype = value.dtype
    if amp_on or in_dtype in _LOW_PRECISION:
        value, sampling_locations, attention_weights = (
            t.float() if t.dtype in _LOW_PRECISION else t for t in (value, sampling_locations, attention_weights)
        )
    if sampling_locations.dtype != value.dtype or attention_weights.dtype != value.dtype:
        raise ValueError(
            f"ms_deform_attn: value, sampling_locations and attention_weights must share a dtype, got "
            f"{value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}"
        )
    with torch.autocast(device_type=device_type, enabled=False) if amp_on else contextlib.nullcontext():
        if chosen == "kernel":
            kernel = _load_kernel()
            out = kernel.ms_deform_attn(
                value.contiguous(),
                spatial_shapes,
                level_start_index,
                sampling_locations.contiguous(),
                attention_weights.contiguous(),
            )
        else:
            out = ms_deform_attn_pytorch(
                value, spatial_shapes, sampling_locations, attention_weights, level_start_index
            )
    if not amp_on and in_dtype in _LOW_PRECISION:
        out = out.to(in_dtype)
    return out

