"""Registry of transformer decoders (the "predictor" of the Mask2Former head)."""
from __future__ import annotations

from torch import nn

from rass.utils.registry import NamedRegistry, registered

__all__ = ["TRANSFORMER_DECODER_REGISTRY", "build_transformer_decoder"]

TRANSFORMER_DECODER_REGISTRY = NamedRegistry("TRANSFORMER_DECODER")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of the mask-classification head, selected by
`MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`. Called as `cls(cfg, in_channels, mask_classification)`.
"""


def build_transformer_decoder(cfg, in_channels: int, mask_classification: bool = True) -> nn.Module:
    """Build the decoder named by `MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME`.

    Args:
        cfg: the project config.
        in_channels: channels of the multi-scale features it attends to.
        mask_classification: predict a class per query (always True for Mask2Former).
    """
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    decoder = registered(TRANSFORMER_DECODER_REGISTRY, "MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", name)
    return decoder(cfg, in_channels, mask_classification)
