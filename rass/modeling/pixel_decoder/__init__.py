"""Pixel decoders of the Mask2Former head (MSDeformAttn) and their registry."""
from .build import PIXEL_DECODER_REGISTRY, build_pixel_decoder
from .deformable_encoder import MSDeformAttnTransformerEncoderOnly
from .ms_deform_attn import MSDeformAttn
from .msdeformattn import MSDeformAttnPixelDecoder

__all__ = [
    "PIXEL_DECODER_REGISTRY",
    "build_pixel_decoder",
    "MSDeformAttn",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnPixelDecoder",
]
