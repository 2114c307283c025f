"""Building blocks of the masked-attention transformer decoder.

Parameter names follow Mask2Former (`self_attn.*`, `multihead_attn.*`, `norm.*`, `linear1/2.*`,
`layers.{i}.*`) so that its checkpoints load unchanged. Tensors are batch-first (N x Q x C).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionBlock", "SelfAttentionLayer", "CrossAttentionLayer", "FFNLayer", "MLP", "activation_fn"]


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Activation function by name ("relu", "gelu" or "glu")."""
    table = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}
    if name not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[name]


def _add_pos(t: torch.Tensor, pos: Optional[torch.Tensor]) -> torch.Tensor:
    return t if pos is None else t + pos


def _xavier_matrices(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class AttentionBlock(nn.Module):
    """Residual multi-head attention with a LayerNorm after (post-norm) or before (pre-norm).

    Args:
        d_model: feature width.
        nhead: number of heads.
        dropout: dropout on attention weights and on the residual branch.
        normalize_before: pre-norm instead of post-norm.
        attn_name: attribute name of the `nn.MultiheadAttention` (checkpoint name).
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, normalize_before: bool = False,
                 attn_name: str = "self_attn"):
        super().__init__()
        self.attn_name = attn_name
        self.add_module(attn_name, nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True))
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def attend(
        self,
        query: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        residual: torch.Tensor,
        attn_mask: Optional[torch.Tensor],
        key_padding_mask: Optional[torch.Tensor],
        query_pos: Optional[torch.Tensor],
        key_pos: Optional[torch.Tensor],
    ) -> torch.Tensor:
        attn: nn.MultiheadAttention = getattr(self, self.attn_name)
        if self.normalize_before:
            query = self.norm(query)
            if key_input is residual:
                key_input = value_input = query
        out = attn(
            _add_pos(query, query_pos),
            _add_pos(key_input, key_pos),
            value_input,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
        )[0]
        out = residual + self.dropout(out)
        return out if self.normalize_before else self.norm(out)


class SelfAttentionLayer(AttentionBlock):
    """Self-attention among queries: `forward(tgt, tgt_mask, tgt_key_padding_mask, query_pos)`."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, activation: str = "relu",
                 normalize_before: bool = False):
        super().__init__(d_model, nhead, dropout, normalize_before, attn_name="self_attn")

    def forward(self, tgt: torch.Tensor, tgt_mask: Optional[torch.Tensor] = None,
                tgt_key_padding_mask: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: tgt N x Q x C; tgt_mask (N*heads) x Q x Q bool (True = blocked); query_pos like tgt."""
        return self.attend(tgt, tgt, tgt, tgt, tgt_mask, tgt_key_padding_mask, query_pos, query_pos)


class CrossAttentionLayer(AttentionBlock):
    """Queries attend to image features: `forward(tgt, memory, memory_mask, ..., pos, query_pos)`."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, activation: str = "relu",
                 normalize_before: bool = False):
        super().__init__(d_model, nhead, dropout, normalize_before, attn_name="multihead_attn")

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: Optional[torch.Tensor] = None,
                memory_key_padding_mask: Optional[torch.Tensor] = None, pos: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Args: tgt N x Q x C; memory N x HW x C; memory_mask (N*heads) x Q x HW bool (True = blocked)."""
        return self.attend(tgt, memory, memory, tgt, memory_mask, memory_key_padding_mask, query_pos, pos)


class FFNLayer(nn.Module):
    """Residual two-layer feed-forward block with LayerNorm (post- or pre-norm).

    Args:
        d_model: feature width.
        dim_feedforward: hidden width.
        dropout: dropout inside and after the block.
        activation: "relu", "gelu" or "glu".
        normalize_before: pre-norm instead of post-norm.
    """

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0,
                 activation: str = "relu", normalize_before: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.activation = activation_fn(activation)
        self.normalize_before = normalize_before
        _xavier_matrices(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        x = self.norm(tgt) if self.normalize_before else tgt
        x = tgt + self.dropout(self.linear2(self.dropout(self.activation(self.linear1(x)))))
        return x if self.normalize_before else self.norm(x)


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (`layers.{i}` in checkpoints).

    Args:
        input_dim: input width.
        hidden_dim: width of the hidden layers.
        output_dim: output width.
        num_layers: number of linear layers (>= 1).
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x
