"""Multi-scale deformable attention layer (Deformable DETR), on top of `rass.ops.ms_deform_attn`."""
from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from rass.ops import BACKENDS, ms_deform_attn
from rass.utils.errors import UserValueError

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Each query samples `n_points` locations per head and level around its reference point.

    Parameter names (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`) follow
    Deformable DETR / Mask2Former.

    Args:
        d_model: feature width.
        n_levels: number of feature levels.
        n_heads: attention heads (d_model must be divisible by it).
        n_points: sampling points per head and level.
        backend: op backend, "auto", "kernel" or "torch" (see `rass.ops.ms_deform_attn`).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 backend: str = "auto"):
        super().__init__()
        if d_model % n_heads:
            raise UserValueError(f"MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if backend not in BACKENDS:
            raise UserValueError("MSDeformAttn: backend (MODEL.SEM_SEG_HEAD.DEFORMABLE_ATTENTION_BACKEND) must be one "
                                 f"of {BACKENDS}, got {backend!r}")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1):
            warnings.warn(f"MSDeformAttn: head width {head_dim} is not a power of 2 (slower CUDA kernel)")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.backend = backend
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation: offsets start on a ring of directions, one per head,
        at distances 1..n_points; uniform attention weights; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values  # on the unit square
        distance = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * distance  # heads x 1 x points x 2
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1).to(self.sampling_offsets.bias.device))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        input_spatial_shapes: torch.Tensor,
        input_level_start_index: torch.Tensor,
        input_padding_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend from queries to the flattened multi-level input.

        Args:
            query: N x Lq x C.
            reference_points: N x Lq x L x 2, normalised (x, y) in [0, 1].
            input_flatten: N x S x C, the L levels flattened and concatenated.
            input_spatial_shapes: L x 2 int64 (H, W).
            input_level_start_index: L int64 offsets in S.
            input_padding_mask: optional N x S bool, True at padded positions.

        Returns:
            N x Lq x C.
        """
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if reference_points.shape[-1] != 2:
            raise ValueError(f"MSDeformAttn: reference_points must end in (x, y), got {tuple(reference_points.shape)}")
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, dim=-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: divide by (W, H) to get normalised units.
        size_wh = input_spatial_shapes.flip(-1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / size_wh[None, None, None, :, None, :]
        out = ms_deform_attn(
            value, input_spatial_shapes, input_level_start_index, locations, weights, backend=self.backend
        )
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
            f"n_points={self.n_points}, backend={self.backend!r}"
        )
