"""MGD-SAM2's mask decoder (`sam_mask_decoder` in the release): SAM2's decoder (transformers' `Sam2MaskDecoder`
through `Sam2MaskDecoderHeads`: two-way transformer, tokens, upscaling, hypernetwork MLPs, IoU head, Linear
object-score head) with MCEM and two HMIMs between the transformer and the upscaling.

Wiring on a 5-view batch (4B locals then B globals; `rass.modeling.mgd_sam2.views`), shapes for 512-px views:
1. tokens [obj_score, iou, mask_0, mask_1]; `src = image_embeddings + dense` ([5B, C, 32, 32]); no sparse
   prompts; the two-way transformer gives the tokens and `src` back.
2. MCEM (`new_multifieldcrossatt`) on `src`; HMIM at stride 8 (`new_fusion2`) on the raw FPN map `feat_s1`
   with MCEM's tiled locals; HMIM at stride 4 (`new_fusion1`) on `feat_s0` with those of stride 8.
3. `conv_s0` / `conv_s1` (inside the decoder, unlike SAM2's image path), SAM2's upscaling
   `GELU(dc2(GELU(LN(dc1(src) + feat_s1))) + feat_s0)` -> [5B, C/8, 128, 128].
4. Hypernetwork masks of both mask tokens; the release's `multimask_output=True` keeps token 1: the view logits.
"""
from __future__ import annotations

from typing import Tuple

import torch
from transformers import Sam2MaskDecoderConfig

from rass.modeling.sam2.heads import Sam2MaskDecoderHeads

from .hmim import HMIM
from .mcem import MCEM
from .views import split_views

__all__ = ["MgdSam2MaskDecoder", "MGD_SAM2_NUM_MULTIMASK_OUTPUTS"]

# The release's decoder: `num_multimask_outputs=1`, i.e. two mask tokens; the output is token 1.
MGD_SAM2_NUM_MULTIMASK_OUTPUTS = 1


class MgdSam2MaskDecoder(Sam2MaskDecoderHeads):
    """SAM2's mask decoder with MGD-SAM2's multi-view modules.

    Args:
        config: the decoder's `Sam2MaskDecoderConfig` (`num_multimask_outputs` 1 for the release).
        mcem: the `MCEM` (`new_multifieldcrossatt`), at the stride-16 map.
        fusion_s8: the `HMIM` at stride 8 (`new_fusion2`).
        fusion_s4: the `HMIM` at stride 4 (`new_fusion1`).
    """

    def __init__(self, config: Sam2MaskDecoderConfig, mcem: MCEM, fusion_s8: HMIM, fusion_s4: HMIM) -> None:
        super().__init__(config, obj_score_head="linear", use_high_res_features=True)
        self.new_multifieldcrossatt = mcem
        self.new_fusion2 = fusion_s8
        self.new_fusion1 = fusion_s4

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, dense_embeddings: torch.Tensor,
                feat_s0: torch.Tensor, feat_s1: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode a 5-view batch without prompts.

        Args:
            image_embeddings: [5B, C, h, w] FPN stride-16 maps (h, w even).
            image_pe: [1, C, h, w] dense positional encoding of the h x w grid.
            dense_embeddings: [5B or 1, C, h, w] dense prompt embedding (`no_mask_embed` broadcast).
            feat_s0: [5B, C, 4h, 4w] raw FPN stride-4 maps (256-d, before `conv_s0`).
            feat_s1: [5B, C, 2h, 2w] raw FPN stride-8 maps (before `conv_s1`).

        Returns:
            (view logits [5B, 1, 4h, 4w] of mask token 1, upscaled embeddings [5B, C/8, 4h, 4w] (DRM input),
            IoU predictions [5B, 1] of token 1, object-score logits [5B, 1]).
        """
        n, c, h, w = image_embeddings.shape
        tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = tokens.to(image_embeddings.dtype)[None, None].expand(n, 1, -1, -1)
        src = image_embeddings + dense_embeddings
        queries, keys = self.transformer(point_embeddings=tokens, image_embeddings=src,
                                         image_positional_embeddings=image_pe.expand(n, -1, -1, -1),
                                         attention_similarity=None)
        queries = queries[:, 0]  # [5B, T, C]
        src = keys[:, 0].transpose(1, 2).reshape(n, c, h, w)

        src, tiled16 = self.new_multifieldcrossatt(*split_views(src))
        feat_s1, tiled8 = self.new_fusion2(feat_s1, tiled16)
        feat_s0, _ = self.new_fusion1(feat_s0, tiled8)
        feat_s0, feat_s1 = self.conv_s0(feat_s0), self.conv_s1(feat_s1)

        up = self.activation(self.upscale_layer_norm(self.upscale_conv1(src) + feat_s1))
        up = self.activation(self.upscale_conv2(up) + feat_s0)
        mask_tokens = queries[:, 2:2 + self.num_mask_tokens]
        hyper = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = (hyper @ up.flatten(2)).view(n, self.num_mask_tokens, *up.shape[-2:])
        iou = self.iou_prediction_head(queries[:, 1])
        object_score = self.pred_obj_score_head(queries[:, 0])
        return masks[:, 1:], up, iou[:, 1:], object_score
