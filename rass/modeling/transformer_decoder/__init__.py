"""Transformer decoders of the Mask2Former head and their position encoding."""
from .build import TRANSFORMER_DECODER_REGISTRY, build_transformer_decoder
from .masked_attention_decoder import MultiScaleMaskedTransformerDecoder
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "TRANSFORMER_DECODER_REGISTRY",
    "build_transformer_decoder",
    "MultiScaleMaskedTransformerDecoder",
    "PositionEmbeddingSine",
]
