"""Custom operators of the project.

`ms_deform_attn` is the multi-scale deformable attention sampling op of Deformable DETR, with a
compiled kernel (the `torch-ms-deform-attn` package) when it is installed and built for the
device, and a pure-PyTorch `grid_sample` path otherwise. Importing this package never fails
because the kernel is missing.
"""
from .deformable_attention import (
    BACKENDS,
    kernel_available,
    kernel_import_error,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    resolve_backend,
)

__all__ = [
    "BACKENDS",
    "kernel_available",
    "kernel_import_error",
    "ms_deform_attn",
    "ms_deform_attn_pytorch",
    "resolve_backend",
]
