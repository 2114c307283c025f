"""MGD-SAM2's multi-view context enhancement module (MCEM, `sam_mask_decoder.new_multifieldcrossatt`).

Applied to the two-way transformer's image output (stride 16, 5B views): (1) the global view's tokens
attend to the tiled local tokens (all four tiles of the same image), (2) each local tile attends to the
matching quadrant of the updated global view. Post-norm residual blocks with ReLU MLPs, as released.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rass.modeling.transformer_decoder.layers import MLP
from rass.modeling.transformer_decoder.position_encoding import PositionEmbeddingSine
from rass.utils.errors import UserValueError

from .views import from_quadrants, quadrants, split_views, tiled_to_views, views_to_tiled

__all__ = ["DownsampledAttention", "CenteredSinePositionEmbedding", "MCEM"]


class DownsampledAttention(nn.Module):
    """Multi-head attention whose projections shrink the width by `downsample_rate` (SAM/SAM2's
    `Attention`; parameter names `q_proj`, `k_proj`, `v_proj`, `out_proj` as in their checkpoints).

    transformers' `Sam2Attention` computes the same but names the output `o_proj` and takes a config,
    so released MGD-SAM2 files would not load into it by name.

    Args:
        embedding_dim: width of queries, keys and values.
        num_heads: attention heads (must divide `embedding_dim // downsample_rate`).
        downsample_rate: internal width is `embedding_dim // downsample_rate`.
        dropout: attention dropout in training.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, dropout: float = 0.0):
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise UserValueError(f"DownsampledAttention: {num_heads} heads do not divide the internal width "
                                 f"{internal} (= {embedding_dim} // {downsample_rate})")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """
        Args:
            q: [B, Nq, C]; k, v: [B, Nk, C].

        Returns:
            [B, Nq, C].
        """
        out = F.scaled_dot_product_attention(self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                                             self._heads(self.v_proj(v)),
                                             dropout_p=self.dropout if self.training else 0.0)
        b, h, n, c = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


class CenteredSinePositionEmbedding(PositionEmbeddingSine):
    """The DETR sine encoding at pixel centres: position of row i of an H-row map is
    `(i + 0.5) / (H + eps) * scale` (the release's `PositionEmbeddingSine2`, normalised)."""

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x: N x C x H x W (only its shape and device are used).
            mask: unsupported (must be None); kept for the parent's signature.

        Returns:
            1 x (2 * num_pos_feats) x H x W, float32, on `x`'s device.
        """
        if mask is not None:
            raise UserValueError("CenteredSinePositionEmbedding: padding masks are not supported")
        h, w = x.shape[-2:]
        ones = torch.ones((1, h, w), dtype=torch.float32, device=x.device)
        y, xx = ones.cumsum(1), ones.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            xx = (xx - 0.5) / (xx[:, :, -1:] + eps) * self.scale
        return torch.cat((self._encode(y), self._encode(xx)), dim=-1).permute(0, 3, 1, 2)


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C]."""
    return x.flatten(2).transpose(1, 2)


def _map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, HW, C] -> [B, C, H, W]."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


class MCEM(nn.Module):
    """Multi-view context enhancement (`new_multifieldcrossatt`).

    Args:
        d_model: channels (256).
        num_heads: heads of the five attentions (8).
        attention_downsample_rate: internal width of the attentions is `d_model // rate` (2).
        mlp_dim: hidden width of the two MLPs (512).
        dropout: attention dropout in training (0).
        pe_reference_size: None (default): the sine position encoding of the tiled map is computed at
            the current size. (h, w): computed at (h, w) and resized bicubically to the current size —
            what the release does after its first call at that tiled size (it caches the encoding of
            the first call, e.g. 48 x 48 at its 0.75x TTA pass, and resizes it afterwards).
    """

    def __init__(self, d_model: int = 256, num_heads: int = 8, attention_downsample_rate: int = 2,
                 mlp_dim: int = 512, dropout: float = 0.0, pe_reference_size: Optional[Sequence[int]] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.norm4 = nn.LayerNorm(d_model)
        self.mlp1 = MLP(d_model, mlp_dim, d_model, num_layers=2)
        self.mlp2 = MLP(d_model, mlp_dim, d_model, num_layers=2)
        self.attention = nn.ModuleList(
            DownsampledAttention(d_model, num_heads, attention_downsample_rate, dropout) for _ in range(5))
        self.positional_encoding = CenteredSinePositionEmbedding(d_model // 2, normalize=True)
        if pe_reference_size is not None and len(pe_reference_size) != 2:
            raise UserValueError(f"MCEM: pe_reference_size must be (h, w), got {pe_reference_size!r}")
        self.pe_reference_size = None if pe_reference_size is None else tuple(int(s) for s in pe_reference_size)

    def position_encoding(self, h2: int, w2: int, like: torch.Tensor) -> torch.Tensor:
        """Sine encoding [1, C, h2, w2] of the tiled local map, in `like`'s device and dtype."""
        ref = self.pe_reference_size or (h2, w2)
        pe = self.positional_encoding(like.new_empty((1, 1, *ref), dtype=torch.float32))
        if ref != (h2, w2):
            pe = F.interpolate(pe, size=(h2, w2), mode="bicubic", align_corners=False)
        return pe.to(like.dtype)

    def forward(self, loc: torch.Tensor, glb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            loc: [4B, C, h, w] local views (image-major, TL, TR, BL, BR).
            glb: [B, C, h, w] global views; h and w must be even.

        Returns:
            (views [5B, C, h, w] = updated locals then globals, tiled updated locals [B, C, 2h, 2w]).
        """
        b, c, h, w = glb.shape
        if loc.shape != (4 * b, c, h, w) or h % 2 or w % 2:
            raise UserValueError(f"MCEM: expected locals [4B, C, h, w] and globals [B, C, h, w] with even h, w; "
                                 f"got {tuple(loc.shape)} and {tuple(glb.shape)}")
        tiled = views_to_tiled(loc)
        pe_l = self.position_encoding(2 * h, 2 * w, glb)
        pe_g = F.interpolate(pe_l, size=(h, w), mode="bicubic", align_corners=False)

        # (1) global tokens attend to the tiled local tokens of the same image
        l_tok = _tokens(tiled)
        g_tok = _tokens(glb)
        g_tok = self.norm1(g_tok + self.attention[0](g_tok + _tokens(pe_g), l_tok + _tokens(pe_l), l_tok))
        g_tok = self.norm2(g_tok + self.mlp1(g_tok))
        new_glb = _map(g_tok, h, w)

        # (2) local tile i attends to quadrant i of the updated global view
        l_q, pe_lq = quadrants(tiled), quadrants(pe_l)
        g_q, pe_gq = quadrants(new_glb), quadrants(pe_g)
        outs = []
        for i in range(4):
            g_i = _tokens(g_q[i])
            out = self.attention[i + 1](_tokens(l_q[i]) + _tokens(pe_lq[i]), g_i + _tokens(pe_gq[i]), g_i)
            outs.append(_map(out, h, w))
        l_tok = self.norm3(l_tok + _tokens(from_quadrants(torch.stack(outs))))
        l_tok = self.norm4(l_tok + self.mlp2(l_tok))
        new_tiled = _map(l_tok, 2 * h, 2 * w)
        return torch.cat((tiled_to_views(new_tiled), new_glb), dim=0), new_tiled

    def forward_views(self, views: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`forward` on a 5-view batch [5B, C, h, w]."""
        return self(*split_views(views))
