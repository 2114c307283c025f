"""MGD-SAM2's multi-view perception adapter (MPAdapter) for the Hiera trunk.

Before every trunk block i the adapter adds a correction computed from the block's input:
`x = x + adapter_i(x)` (in the release: `image_encoder.trunk.mpadapter.lightweight_mlp{k}_{j}`). Each
adapter is Linear(C -> C/r) -> DWConv3DAdapter -> GELU -> Linear(C/r -> C); the 3-D depth-wise
convolution mixes each local view with the global view of the same image (and back), see
`DWConv3DAdapter`. Blocks are grouped as the release groups them: group k holds the blocks of stage
k plus the first block of stage k+1 (whose input still has stage-k width); adapter j of group k is
`lightweight_mlp{k}_{j}`. The release creates `stages[k] + 1` adapters per group and one
`shared_mlp{k}` per group; some of them are never called but are in its state dict, so they are
created here too (a strict load of `model_epoch_*.pth` needs them).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rass.utils.errors import UserValueError

from .views import split_views, tiled_to_views, views_to_tiled

__all__ = ["DWConv3DAdapter", "MPAdapter"]


def _depthwise_pair_conv(dim: int) -> nn.Conv3d:
    """Depth-wise Conv3d over a stack of two maps: kernel (2, 3, 3), stride (2, 1, 1), padding (0, 1, 1)."""
    return nn.Conv3d(dim, dim, kernel_size=(2, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1), groups=dim)


class DWConv3DAdapter(nn.Module):
    """Local/global exchange of a 5-view batch (the release's `DWConv3D_adapter`).

    The 4 local maps of an image are tiled into one 2x map. The global map gets
    `dwconv_glb(stack([global, bilinear_down(tiled)]))`, the tiled locals get
    `dwconv_loc(stack([tiled, bilinear_up(global)]))`; both outputs are added to the input.

    Args:
        dim: channels.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv_loc = _depthwise_pair_conv(dim)
        self.dwconv_glb = _depthwise_pair_conv(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: [5B, H, W, C] (Hiera layout), 4B locals then B globals.

        Returns:
            [5B, H, W, C].
        """
        y = x.permute(0, 3, 1, 2)
        loc, glb = split_views(y)
        tiled = views_to_tiled(loc)
        loc_small = F.interpolate(tiled, size=glb.shape[-2:], mode="bilinear", align_corners=False)
        glb_big = F.interpolate(glb, size=tiled.shape[-2:], mode="bilinear", align_corners=False)
        new_glb = self.dwconv_glb(torch.stack((glb, loc_small), dim=2)).squeeze(2)
        new_tiled = self.dwconv_loc(torch.stack((tiled, glb_big), dim=2)).squeeze(2)
        out = torch.cat((tiled_to_views(new_tiled), new_glb), dim=0)
        return out.permute(0, 2, 3, 1) + x


def _adapter(dim: int, hidden: int) -> nn.Sequential:
    # indices 0..3 are the release's names: Linear, DWConv3D_adapter, GELU, Linear
    return nn.Sequential(nn.Linear(dim, hidden), DWConv3DAdapter(hidden), nn.GELU(), nn.Linear(hidden, dim))


class MPAdapter(nn.Module):
    """Per-block adapters of the Hiera trunk (`image_encoder.trunk.mpadapter` in the release).

    Register `forward(x, i)` as a forward pre-hook on trunk block i (for i in `range(num_blocks)`):
    the block then sees `x + adapter_i(x)`.

    Args:
        stages: blocks per Hiera stage, e.g. (2, 3, 16, 3) for Hiera-B+.
        dims: channel width per stage, e.g. (112, 224, 448, 896).
        reduction: hidden width of an adapter is `dim // reduction` (the release's `scale_factor`, 32).
    """

    def __init__(self, stages: Sequence[int] = (2, 3, 16, 3), dims: Sequence[int] = (112, 224, 448, 896),
                 reduction: int = 32):
        super().__init__()
        stages, dims = [int(s) for s in stages], [int(d) for d in dims]
        if len(stages) != len(dims) or not stages or min(stages) < 1:
            raise UserValueError(f"MPAdapter: `stages` {stages} and `dims` {dims} must be non-empty lists of "
                                 "the same length with at least one block per stage")
        if reduction < 1 or min(dims) // reduction < 1:
            raise UserValueError(f"MPAdapter: reduction {reduction} leaves no hidden channel for dims {dims}")
        self.stages, self.dims, self.reduction = stages, dims, reduction
        for k, (depth, dim) in enumerate(zip(stages, dims), start=1):
            hidden = dim // reduction
            for j in range(depth + 1):
                self.add_module(f"lightweight_mlp{k}_{j}", _adapter(dim, hidden))
            self.add_module(f"shared_mlp{k}", nn.Linear(hidden, dim))  # created, never used (release)
        self._block_map = self._group_blocks(stages)
        self.apply(self._init_weights)

    @staticmethod
    def _group_blocks(stages: List[int]) -> List[Tuple[int, int]]:
        """(group k, index j within the group) of every trunk block, as the release groups them."""
        out: List[Tuple[int, int]] = []
        for k, depth in enumerate(stages, start=1):
            size = depth + (k == 1) - (k == len(stages))  # group 1 gains a block, the last one loses one
            out.extend((k, j) for j in range(size))
        return out

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # the release: truncated normal (std 0.02, cut at +-2) Linear weights, zero biases; Conv3d default
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @property
    def num_blocks(self) -> int:
        """Number of trunk blocks the adapter serves (sum of `stages`)."""
        return len(self._block_map)

    @property
    def block_dims(self) -> List[int]:
        """Input width of every trunk block's adapter (block i's input channels)."""
        return [self.dims[k - 1] for k, _ in self._block_map]

    def adapter_name(self, block_index: int) -> str:
        """Name of the adapter called before trunk block `block_index`."""
        if not 0 <= block_index < self.num_blocks:
            raise UserValueError(f"MPAdapter: block index {block_index} out of range 0..{self.num_blocks - 1}")
        k, j = self._block_map[block_index]
        return f"lightweight_mlp{k}_{j}"

    def used_adapter_names(self) -> List[str]:
        """Names of the adapters that are called (the others exist only for the release's state dict)."""
        return [self.adapter_name(i) for i in range(self.num_blocks)]

    def forward(self, x: torch.Tensor, block_index: int) -> torch.Tensor:
        """
        Args:
            x: input of trunk block `block_index`, [5B, H, W, C] (4B locals then B globals).
            block_index: index of the trunk block (0-based).

        Returns:
            `x + adapter(x)`, same shape.
        """
        return x + getattr(self, self.adapter_name(block_index))(x)
