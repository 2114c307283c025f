"""GleSAM's generative latent enhancement: the CRE UNet (SD UNet re-made for 256 channels), its LoRA
and file format, and the one-step x0 enhancer of SAM's image embedding."""
from .cre import GLESAM_ARCHS, build_cre_unet, expand_unet_channels
from .dmd import ClassifierHead, DistributionMatchingLoss
from .gle import LatentEnhancer, empty_prompt_embedding, x0_from_eps
from .lora import (
    GLESAM_ADAPTER, GLESAM_LORA_TARGETS, add_glesam_lora, glesam_lora_state_dict, load_glesam_lora, read_glesam_lora,
    save_glesam_lora)
from .losses import reconstruction_loss, release_dice_loss, release_focal_loss, release_mask_target, segmentation_loss

__all__ = [
    "GLESAM_ARCHS", "build_cre_unet", "expand_unet_channels", "LatentEnhancer", "empty_prompt_embedding",
    "x0_from_eps", "GLESAM_ADAPTER", "GLESAM_LORA_TARGETS", "add_glesam_lora", "glesam_lora_state_dict",
    "load_glesam_lora", "read_glesam_lora", "save_glesam_lora", "ClassifierHead", "DistributionMatchingLoss",
    "reconstruction_loss", "release_dice_loss", "release_focal_loss", "release_mask_target", "segmentation_loss",
]
