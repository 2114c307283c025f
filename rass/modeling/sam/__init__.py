"""SAM (transformers' `SamModel`, composed): variant configs and builder, SAM's preprocessing and
mask postprocessing, and prompted decoding on (optionally enhanced) image embeddings. Weights in
segment-anything names load with `rass.checkpoint.load_sam_checkpoint`."""
from .build import (
    SAM_EMBED_CHANNELS, SAM_LAYER_NORM_EPS, SAM_PATCH_SIZE, SAM_VARIANTS, SamVariant, build_sam, init_sam_weights,
    sam_config, sam_variant,
)
from .predict import embedding_shape, sam_image_embeddings, sam_predict
from .transforms import SAM_PIXEL_MEAN, SAM_PIXEL_STD, SamImageTransform

__all__ = [
    "SAM_EMBED_CHANNELS", "SAM_LAYER_NORM_EPS", "SAM_PATCH_SIZE", "SAM_VARIANTS", "SamVariant", "build_sam",
    "init_sam_weights", "sam_config", "sam_variant", "embedding_shape", "sam_image_embeddings", "sam_predict",
    "SAM_PIXEL_MEAN", "SAM_PIXEL_STD", "SamImageTransform",
]
