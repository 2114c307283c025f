"""Restoration-adapted Stable Diffusion backbone (`RASS`), its feature taps and projection, prompt
embeddings and sliding-window inference (SD loading and LoRA are shared: `rass.modeling.diffusion`)."""
from .feature_projection import FeatureProjection
from .rass_backbone import RASS
from .sliding_window import sliding_window_features, window_boxes

__all__ = ["RASS", "FeatureProjection", "sliding_window_features", "window_boxes"]
