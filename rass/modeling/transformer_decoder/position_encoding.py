"""Sine position encoding of a 2-D feature map (the DETR / Mask2Former variant)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Fixed sin/cos encoding of (y, x) positions, normalised to [0, scale] per image.

    The output has `2 * num_pos_feats` channels: first the y encoding, then the x encoding; each
    is `sin(p / T^(2k/F)), cos(p / T^(2k/F))` for k = 0 .. F/2 - 1, interleaved. Position `p` of
    row/column i (0-based) of an H-row map is `(i + 1) / (H + eps) * scale` when normalised.

    Args:
        num_pos_feats: channels per axis (F); must be even.
        temperature: base T of the frequencies.
        normalize: divide positions by the map size (then multiply by `scale`).
        scale: multiplier of normalised positions (default 2*pi); needs `normalize`.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = False,
        scale: Optional[float] = None,
    ):
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats must be even, got {num_pos_feats}")
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: `scale` is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def _encode(self, pos: torch.Tensor) -> torch.Tensor:
        """(..., ) positions -> (..., num_pos_feats) interleaved sin/cos."""
        half = self.num_pos_feats // 2
        exponents = torch.arange(half, dtype=torch.float32, device=pos.device) * (2.0 / self.num_pos_feats)
        angles = pos[..., None] / (self.temperature**exponents)
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode the positions of `x`.

        Args:
            x: N x C x H x W (only its shape and device are used).
            mask: optional N x H x W bool, True at padded positions (they are not counted).

        Returns:
            N x (2 * num_pos_feats) x H x W, float32.
        """
        n, _, h, w = x.shape
        if mask is None:
            valid = torch.ones((n, h, w), dtype=torch.float32, device=x.device)
        else:
            valid = (~mask).float()
        y = valid.cumsum(1)
        xx = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = y / (y[:, -1:, :] + eps) * self.scale
            xx = xx / (xx[:, :, -1:] + eps) * self.scale
        pos = torch.cat((self._encode(y), self._encode(xx)), dim=-1)
        return pos.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
