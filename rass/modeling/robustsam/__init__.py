"""RobustSAM (CVPR 2024) on the project's SAM: the added decoder modules (names as released) and the robust
decoding path; the promptable model is `rass.modeling.meta_arch.robustsam.RobustSAM`."""
from .components import (
    ChannelAttention, DegradationNormalization, EncoderFeatureBlock, FourierGuidance, MaskFeatureBlock, TokenBlock,
)
from .decoder import ROBUST_MASKS, RobustDecoderAdditions, prompt_embeddings, robust_decode

__all__ = ["ChannelAttention", "DegradationNormalization", "EncoderFeatureBlock", "FourierGuidance",
           "MaskFeatureBlock", "TokenBlock", "ROBUST_MASKS", "RobustDecoderAdditions", "prompt_embeddings",
           "robust_decode"]
