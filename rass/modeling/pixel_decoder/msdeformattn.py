"""MSDeformAttn pixel decoder of Mask2Former.

The coarser backbone levels (DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES, e.g. res3..res5) are
projected to `conv_dim`, encoded jointly by a deformable transformer encoder, and the finer
levels (e.g. res2) are added FPN-style on top (lateral 1x1 conv + upsampled coarser map + 3x3
conv). Outputs: per-pixel mask features at the common stride, the encoder output at the coarsest
level, and the three lowest-resolution maps for the transformer decoder.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from rass.utils.errors import UserValueError

from ..transformer_decoder.position_encoding import PositionEmbeddingSine
from .build import PIXEL_DECODER_REGISTRY
from .deformable_encoder import MSDeformAttnTransformerEncoderOnly

__all__ = ["MSDeformAttnPixelDecoder"]


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention multi-scale pixel decoder.

    Args:
        input_shape: shapes of the backbone features it reads (by name).
        transformer_dropout: dropout of the encoder.
        transformer_nheads: heads of the deformable attention.
        transformer_dim_feedforward: FFN width of the encoder layers.
        transformer_enc_layers: number of encoder layers.
        conv_dim: width of the projections / FPN convs / encoder.
        mask_dim: channels of the output mask features.
        norm: normalisation of the FPN convs ("GN", "" ...).
        transformer_in_features: names of the levels the encoder reads.
        common_stride: stride of the mask features (FPN levels are added down to it).
        transformer_n_points: sampling points per head and level.
        deform_attn_backend: op backend ("auto", "kernel", "torch").
        num_output_levels: how many (lowest-resolution) maps go to the transformer decoder.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
        transformer_n_points: int = 4,
        deform_attn_backend: str = "auto",
        num_output_levels: int = 3,
    ):
        super().__init__()
        missing = [f for f in transformer_in_features if f not in input_shape]
        if missing:
            raise UserValueError(
                f"MSDeformAttnPixelDecoder: DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES {missing} are not among "
                f"the decoder inputs {sorted(input_shape)} (MODEL.SEM_SEG_HEAD.IN_FEATURES)"
            )
        if conv_dim % 32:
            raise UserValueError("MSDeformAttnPixelDecoder: CONVS_DIM must be a multiple of 32 (GroupNorm(32)), got "
                                 f"{conv_dim}")
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        self.feature_strides = [v.stride for _, v in ordered]
        self.feature_channels = [v.channels for _, v in ordered]
        enc_ordered = [(k, v) for k, v in ordered if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in enc_ordered]
        self.transformer_feature_strides = [v.stride for _, v in enc_ordered]
        self.transformer_num_feature_levels = len(enc_ordered)

        # One 1x1 conv + GroupNorm per encoder level, coarsest level first.
        self.input_proj = nn.ModuleList()
        for _, spec in reversed(enc_ordered):
            proj = nn.Sequential(nn.Conv2d(spec.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=transformer_nheads,
            num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward,
            dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
            backend=deform_attn_backend,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = num_output_levels
        self.common_stride = common_stride
        finest_encoder_stride = min(self.transformer_feature_strides)
        self.num_fpn_levels = max(0, int(round(math.log2(finest_encoder_stride) - math.log2(common_stride))))

        # FPN levels below the encoder: adapter_{i} (lateral 1x1) and layer_{i} (3x3 output).
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Kept coarse-to-fine (plain lists: the modules are registered above under their names).
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        head = cfg.MODEL.SEM_SEG_HEAD
        unknown = [f for f in head.IN_FEATURES if f not in input_shape]
        if unknown:
            raise UserValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES {unknown} are not backbone outputs {sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_dim_feedforward": head.DEFORMABLE_TRANSFORMER_ENCODER_DIM_FEEDFORWARD,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": list(head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES),
            "common_stride": head.COMMON_STRIDE,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "deform_attn_backend": head.DEFORMABLE_ATTENTION_BACKEND,
        }

    def forward_features(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        """Decode backbone features (always in float32, also under autocast).

        Args:
            features: backbone outputs by name (N x C x H x W).

        Returns:
            (mask_features N x mask_dim x H/common_stride x W/common_stride,
             encoder output at the coarsest level N x conv_dim x h x w,
             list of `maskformer_num_feature_levels` maps, lowest resolution first)
        """
        device_type = features[self.in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._decode(features)

    def forward(self, features: Dict[str, torch.Tensor]):
        """Same as `forward_features`."""
        return self.forward_features(features)

    def _decode(self, features: Dict[str, torch.Tensor]):
        srcs, pos = [], []
        for idx, name in enumerate(reversed(self.transformer_in_features)):
            x = features[name].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, level_start_index = self.transformer(srcs, pos)
        n = memory.shape[0]
        shapes = [(int(s.shape[-2]), int(s.shape[-1])) for s in srcs]
        sizes = [h * w for h, w in shapes]
        out = [
            chunk.transpose(1, 2).reshape(n, -1, h, w)
            for chunk, (h, w) in zip(torch.split(memory, sizes, dim=1), shapes)
        ]
        # FPN on the finer levels, coarse to fine.
        for idx, name in enumerate(reversed(self.in_features[: self.num_fpn_levels])):
            x = features[name].float()
            lateral = self.lateral_convs[idx](x)
            y = lateral + F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](y))
        multi_scale = out[: self.maskformer_num_feature_levels]
        return self.mask_features(out[-1]), out[0], multi_scale

