"""Stable-SAM (arXiv 2311.15776): deformable sampling + dynamic routing plugins on SAM's mask decoder,
the robust training strategy (RTS) and plugin files. See docs/STABLE_SAM.md."""
from .plugin_io import (
    load_plugin_file, plugin_config, plugin_state_from_model_state, sam_encoder_shape, sam_size_name, save_plugin_file)
from .plugins import DeformableSamplingPlugin, DynamicRoutingPlugin, StableSamPlugins, shift_sample
from .rts import RtsPromptSampler, rts_mask_loss

__all__ = ["DeformableSamplingPlugin", "DynamicRoutingPlugin", "StableSamPlugins", "shift_sample",
           "RtsPromptSampler", "rts_mask_loss", "load_plugin_file", "save_plugin_file", "plugin_config",
           "sam_size_name", "sam_encoder_shape", "plugin_state_from_model_state"]
