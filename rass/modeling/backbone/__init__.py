"""Restoration-adapted Stable Diffusion backbone (`RASS`), its feature projection, LoRA handling,
prompt embeddings and sliding-window inference."""
from .feature_projection import FeatureProjection
from .rass_backbone import RASS
from .sliding_window import sliding_window_features, window_boxes

__all__ = ["RASS", "FeatureProjection", "sliding_window_features", "window_boxes"]
