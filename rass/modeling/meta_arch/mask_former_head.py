"""The Mask2Former segmentation head: a pixel decoder followed by a transformer decoder.

Registered in detectron2's SEM_SEG_HEADS_REGISTRY as "MaskFormerHead"; its submodules are named
`pixel_decoder` and `predictor` as in Mask2Former checkpoints.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from rass.utils.errors import UserValueError

from ..pixel_decoder.build import build_pixel_decoder
from ..transformer_decoder.build import build_transformer_decoder

__all__ = ["MaskFormerHead"]

# Values of MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE that name a pixel-decoder output.
_DECODER_OUTPUTS = ("multi_scale_pixel_decoder", "transformer_encoder", "pixel_embedding")


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Pixel decoder + transformer decoder ("predictor").

    Args:
        input_shape: backbone features the head reads.
        num_classes: number of classes K.
        pixel_decoder: module with `forward_features(features) -> (mask_features,
            transformer_encoder_features, multi_scale_features)`.
        loss_weight: kept for config compatibility (the criterion weighs the losses).
        ignore_value: label of unlabelled pixels.
        transformer_predictor: the transformer decoder.
        transformer_in_feature: what the predictor reads: "multi_scale_pixel_decoder" (Mask2Former),
            "transformer_encoder", "pixel_embedding", or a backbone feature name.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in ordered]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        head, mf = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
        feature = mf.TRANSFORMER_IN_FEATURE
        if feature in ("multi_scale_pixel_decoder", "transformer_encoder"):
            in_channels = head.CONVS_DIM
        elif feature == "pixel_embedding":
            in_channels = head.MASK_DIM
        elif feature in input_shape:
            in_channels = input_shape[feature].channels
        else:
            raise UserValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={feature!r} is neither one of {_DECODER_OUTPUTS} "
                f"nor a backbone output {sorted(input_shape)}"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": feature,
            "transformer_predictor": build_transformer_decoder(cfg, in_channels, mask_classification=True),
        }

    def forward(self, features: Dict[str, torch.Tensor], mask: Optional[torch.Tensor] = None) -> Dict:
        """Predict class and mask logits per query.

        Args:
            features: backbone outputs by name.
            mask: optional padding mask passed to the predictor (Mask2Former ignores it).

        Returns:
            the predictor's output dict ("pred_logits", "pred_masks", "aux_outputs").
        """
        mask_features, encoder_features, multi_scale = self.pixel_decoder.forward_features(features)
        source = self.transformer_in_feature
        if source == "multi_scale_pixel_decoder":
            return self.predictor(multi_scale, mask_features, mask)
        if source == "transformer_encoder":
            if encoder_features is None:
                raise UserValueError("TRANSFORMER_IN_FEATURE='transformer_encoder' needs a pixel decoder with an "
                                     "encoder")
            return self.predictor(encoder_features, mask_features, mask)
        if source == "pixel_embedding":
            return self.predictor(mask_features, mask_features, mask)
        return self.predictor(features[source], mask_features, mask)
