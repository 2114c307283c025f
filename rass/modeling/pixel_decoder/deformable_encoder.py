"""Encoder-only deformable transformer of the MSDeformAttn pixel decoder.

Every position of every level is a query that attends, through `MSDeformAttn`, to all levels
around its own location. Post-norm layers (attention, then FFN), no padding masks.
Parameter names follow Mask2Former (`level_embed`, `encoder.layers.{i}.{self_attn,norm1,linear1,
linear2,norm2}`).
"""
from __future__ import annotations

import copy
from typing import List, Sequence, Tuple

import torch
from torch import nn

from ..transformer_decoder.layers import activation_fn
from .ms_deform_attn import MSDeformAttn

__all__ = [
    "MSDeformAttnTransformerEncoderLayer",
    "MSDeformAttnTransformerEncoder",
    "MSDeformAttnTransformerEncoderOnly",
    "encoder_reference_points",
]


def encoder_reference_points(
    spatial_shapes: Sequence[Tuple[int, int]], device: torch.device, num_levels: int
) -> torch.Tensor:
    """Normalised pixel centres of every level, one reference point per query and level.

    Args:
        spatial_shapes: (H, W) of each level.
        device: device of the result.
        num_levels: number of levels the attention reads (the same point is used on each).

    Returns:
        1 x S x num_levels x 2 tensor of (x, y) in (0, 1).
    """
    points = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
    ref = torch.cat(points, dim=0)  # S x 2
    return ref[None, :, None, :].expand(1, -1, num_levels, -1)


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Deformable self-attention + FFN, each with residual and LayerNorm after.

    Args:
        d_model: width.
        d_ffn: FFN hidden width.
        dropout: dropout probability.
        activation: FFN activation name.
        n_levels, n_heads, n_points: of the deformable attention.
        backend: deformable attention op backend.
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.1, activation: str = "relu",
                 n_levels: int = 4, n_heads: int = 8, n_points: int = 4, backend: str = "auto"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend=backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = activation_fn(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        """Args: src/pos N x S x C; reference_points N x S x L x 2; shapes L x 2; starts L."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.dropout2(self.activation(self.linear1(src)))
        return self.norm2(src + self.dropout3(self.linear2(hidden)))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of `num_layers` independent copies of an encoder layer (`layers.{i}`)."""

    def __init__(self, encoder_layer: nn.Module, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(encoder_layer) for _ in range(num_layers))
        self.num_layers = num_layers

    def forward(self, src, spatial_shapes, level_start_index, reference_points, pos, padding_mask=None):
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return out


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds position + level embeddings and runs the deformable encoder.

    Args:
        d_model: width.
        nhead: attention heads.
        num_encoder_layers: number of layers.
        dim_feedforward: FFN hidden width.
        dropout: dropout probability.
        activation: FFN activation.
        num_feature_levels: number of input levels.
        enc_n_points: sampling points per head and level.
        backend: deformable attention op backend.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, dim_feedforward: int = 1024,
                 dropout: float = 0.1, activation: str = "relu", num_feature_levels: int = 4, enc_n_points: int = 4,
                 backend: str = "auto"):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        layer = MSDeformAttnTransformerEncoderLayer(
            d_model, dim_feedforward, dropout, activation, num_feature_levels, nhead, enc_n_points, backend
        )
        self.encoder = MSDeformAttnTransformerEncoder(layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """Encode the levels jointly.

        Args:
            srcs: L maps N x C x H_l x W_l.
            pos_embeds: L position encodings of the same shapes.

        Returns:
            (memory N x S x C, spatial_shapes L x 2 int64, level_start_index L int64)
        """
        flat, flat_pos, shapes = [], [], []
        for lvl, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(tuple(src.shape[-2:]))
            flat.append(src.flatten(2).transpose(1, 2))
            flat_pos.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flatten = torch.cat(flat, dim=1)
        pos_flatten = torch.cat(flat_pos, dim=1)
        device = src_flatten.device
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=device)
        sizes = spatial_shapes.prod(dim=1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        reference_points = encoder_reference_points(shapes, device, len(shapes)).to(src_flatten.dtype)
        reference_points = reference_points.expand(src_flatten.shape[0], -1, -1, -1)
        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, reference_points, pos_flatten)
        return memory, spatial_shapes, level_start_index
