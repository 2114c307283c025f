"""Registry of pixel decoders of the Mask2Former head."""
from __future__ import annotations

from typing import Dict

from detectron2.layers import ShapeSpec
from torch import nn

from rass.utils.registry import NamedRegistry, registered

__all__ = ["PIXEL_DECODER_REGISTRY", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = NamedRegistry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Pixel decoders, selected by `MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME`. Called as
`cls(cfg, input_shape)`; must provide `forward_features(features) -> (mask_features,
transformer_encoder_features, multi_scale_features)`.
"""


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the pixel decoder named by `MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME`.

    Args:
        cfg: the project config.
        input_shape: backbone output shapes by feature name.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = registered(PIXEL_DECODER_REGISTRY, "MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise TypeError(f"pixel decoder {name!r} has no forward_features(features) method")
    return model
