"""SAM2's image encoder: transformers' Hiera trunk (`Sam2HieraDetModel`) + an FPN neck whose top-down
interpolation is selectable, for any input size.

transformers' `Sam2VisionNeck` hard-codes nearest top-down upsampling (SAM 2.1's); MGD-SAM2's weights were
trained with bilinear (its `FpnNeck` default), so `Sam2FpnNeck` takes the mode. Feature sizes follow the
input (no fixed `backbone_feature_sizes` list as in `Sam2Model`): S x S pixels give maps of S/4, S/8, S/16.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2HieraDetModel, Sam2VisionConfig
from transformers.models.sam2.modeling_sam2 import Sam2VisionNeck

from rass.utils.errors import UserValueError

from .variants import Sam2Variant, check_sam2_image_size, hiera_config, sam2_variant

__all__ = ["FPN_INTERP_MODES", "Sam2FpnNeck", "Sam2ImageEncoder", "build_sam2_image_encoder", "trunk_block_dims"]

FPN_INTERP_MODES = ("nearest", "bilinear")


class Sam2FpnNeck(Sam2VisionNeck):
    """transformers' `Sam2VisionNeck` (same parameters) with a selectable top-down interpolation.

    Args:
        config: the `Sam2VisionConfig` (channels, top-down levels).
        interp: "nearest" (SAM 2.1) or "bilinear" (MGD-SAM2; align_corners False, as `FpnNeck`).
    """

    def __init__(self, config: Sam2VisionConfig, interp: str = "nearest") -> None:
        super().__init__(config)
        if interp not in FPN_INTERP_MODES:
            raise UserValueError(f"MODEL.SAM2.FPN_INTERP {interp!r}: expected one of {FPN_INTERP_MODES}")
        self.interp = interp

    def forward(self, hidden_states: Sequence[torch.Tensor]
                ) -> Tuple[Tuple[torch.Tensor, ...], Tuple[torch.Tensor, ...]]:
        """FPN maps and their sine position encodings, from the lowest resolution to the highest.

        Args:
            hidden_states: the trunk's stage outputs [B, H_i, W_i, C_i], highest resolution first.

        Returns:
            (maps [B, 256, H_i, W_i], position encodings of the same shape), stride 32 first.
        """
        maps, encodings = [], []
        last = len(self.convs) - 1
        previous = None
        for i in range(last, -1, -1):
            lateral = self.convs[last - i](hidden_states[i].permute(0, 3, 1, 2).to(self.convs[last - i].weight.dtype))
            if i in self.fpn_top_down_levels and i != last:
                top_down = F.interpolate(previous.float(), scale_factor=2.0, mode=self.interp,
                                         align_corners=None if self.interp == "nearest" else False, antialias=False)
                previous = lateral + top_down.to(lateral.dtype)
            else:
                previous = lateral
            maps.append(previous)
            encodings.append(self.position_encoding(previous.shape, previous.device, previous.dtype).to(previous.dtype))
        return tuple(maps), tuple(encodings)


class Sam2ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck (SAM2's `ImageEncoder` with scalp 1).

    Args:
        trunk: transformers' `Sam2HieraDetModel` (its `.blocks` are the ordered Hiera blocks).
        neck: the `Sam2FpnNeck`.
        scalp: number of lowest-resolution FPN levels dropped (SAM2: 1, the stride-32 map).
    """

    def __init__(self, trunk: Sam2HieraDetModel, neck: Sam2FpnNeck, scalp: int = 1) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.scalp = int(scalp)
        config = trunk.config
        self.min_side = max(4 * 2 ** (len(config.blocks_per_stage) - 1), 4 * config.window_size_per_stage[0])

    def forward(self, pixels: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """FPN features of normalised images.

        Args:
            pixels: [N, 3, S, S] (any S that is a multiple of 32 and of 4 x the first window).

        Returns:
            (features, pos): lists of [N, 256, S/4, S/4], [N, 256, S/8, S/8], [N, 256, S/16, S/16] (strides 4, 8,
            16) and their sine position encodings.
        """
        if pixels.dim() != 4 or pixels.shape[1] != 3 or any(int(s) % self.min_side for s in pixels.shape[-2:]):
            raise ValueError(f"Sam2ImageEncoder: expected pixels [N, 3, S, S] with S a multiple of {self.min_side}, "
                             f"got {tuple(pixels.shape)}")
        weight = self.trunk.patch_embed.projection.weight
        stages = self.trunk(pixel_values=pixels.to(dtype=weight.dtype)).intermediate_hidden_states
        maps, encodings = self.neck(stages)
        keep = len(maps) - self.scalp
        return list(maps[-keep:])[::-1], list(encodings[-keep:])[::-1]


def trunk_block_dims(encoder: Sam2ImageEncoder) -> List[int]:
    """Input channels of each Hiera block, in order: the first block of a stage still takes the previous
    stage's width, so base_plus gives [112] * 3 + [224] * 3 + [448] * 16 + [896] * 2."""
    return [int(block.dim) for block in encoder.trunk.blocks]


def build_sam2_image_encoder(variant: Union[str, Sam2Variant], image_size: Optional[int] = None,
                             global_attn_blocks: Optional[Sequence[int]] = None, fpn_interp: str = "nearest",
                             generator: Optional[torch.Generator] = None) -> Sam2ImageEncoder:
    """Build SAM2's image encoder with SAM2's random initialisation.

    Args:
        variant: "tiny", "small", "base_plus", "large", "test" or a `Sam2Variant`.
        image_size: nominal input side (checked; the encoder takes any valid side); default the variant's.
        global_attn_blocks: blocks with global attention (None: the variant's).
        fpn_interp: top-down interpolation of the neck, "nearest" (SAM2) or "bilinear" (MGD-SAM2).
        generator: random stream of the initialisation; None draws from torch's global RNG. Under a
            `torch.device("meta")` context nothing is drawn.

    Returns:
        The `Sam2ImageEncoder` (on the current default device).
    """
    from .init import init_sam2_weights

    v = sam2_variant(variant)
    size = check_sam2_image_size(v, v.image_size if image_size is None else image_size)
    trunk_config = hiera_config(v, size, global_attn_blocks)
    neck_config = Sam2VisionConfig(backbone_config=trunk_config, backbone_channel_list=v.stage_dims[::-1],
                                   fpn_hidden_size=v.hidden_dim, fpn_top_down_levels=[2, 3], num_feature_levels=3)
    meta = torch.get_default_device().type == "meta"
    with torch.random.fork_rng(devices=[]):  # transformers' construction draws do not advance the caller's RNG
        encoder = Sam2ImageEncoder(Sam2HieraDetModel(trunk_config), Sam2FpnNeck(neck_config, fpn_interp))
    if not meta:
        init_sam2_weights(encoder, generator)
    return encoder
