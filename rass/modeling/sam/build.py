"""SAM configurations (ViT-B/L/H as released, and a tiny one for tests) and the builder.

The model is transformers' `SamModel`, composed (not forked). The ViT variants follow
segment-anything's builders: patch 16, MLP ratio 4, window 14, LayerNorm eps 1e-6, neck 256,
prompt encoder and mask decoder 256-d (two-way transformer depth 2, 8 heads, MLP 2048).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

__all__ = ["SamVariant", "SAM_VARIANTS", "sam_config", "build_sam", "SAM_EMBED_CHANNELS"]

# Channels of SAM's image embedding (neck output = prompt encoder = mask decoder width); GleSAM's CRE
# UNet works on these.
SAM_EMBED_CHANNELS = 256


@dataclass(frozen=True)
class SamVariant:
    """Image-encoder hyper-parameters of one SAM variant (segment-anything `build_sam.py`)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: Tuple[int, ...]
    window_size: int = 14
    image_size: int = 1024
    # Smaller decoder / prompt-encoder internals (tiny only); None = SAM's.
    decoder_mlp_dim: Optional[int] = None
    iou_head_hidden_dim: Optional[int] = None
    mask_input_channels: Optional[int] = None


SAM_VARIANTS: Dict[str, SamVariant] = {
    "vit_b": SamVariant(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamVariant(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamVariant(1280, 32, 16, (7, 15, 23, 31)),
    # Tests / CPU demos: 256-px input (16x16 embedding grid), 2 blocks (block 1 global), window 4; the image
    # embedding keeps SAM's 256 channels, decoder MLPs are narrower (about 3M parameters in all).
    "tiny": SamVariant(32, 2, 2, (1,), window_size=4, image_size=256, decoder_mlp_dim=256,
                       iou_head_hidden_dim=64, mask_input_channels=16),
}


def _variant(variant: str) -> SamVariant:
    if variant not in SAM_VARIANTS:
        raise ValueError(f"MODEL.SAM.VARIANT: unknown SAM variant {variant!r}; expected one of {sorted(SAM_VARIANTS)}")
    return SAM_VARIANTS[variant]


def sam_config(variant: str, image_size: Optional[int] = None) -> SamConfig:
    """The transformers `SamConfig` of a SAM variant.

    Args:
        variant: "vit_b", "vit_l", "vit_h" or "tiny".
        image_size: side of the square input (default: 1024, tiny 256); a multiple of the patch
            size 16. Only the variant's default size matches the released weights' `pos_embed`.

    Returns:
        The config (vision, prompt-encoder and mask-decoder sub-configs filled in).
    """
    v = _variant(variant)
    size = v.image_size if image_size is None else int(image_size)
    if size <= 0 or size % 16:
        raise ValueError(f"MODEL.SAM.IMAGE_SIZE: {image_size} is not a positive multiple of the patch size 16")
    vision = SamVisionConfig(
        hidden_size=v.embed_dim, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
        global_attn_indexes=list(v.global_attn_indexes), window_size=v.window_size, image_size=size,
        patch_size=16, mlp_ratio=4.0, layer_norm_eps=1e-6, output_channels=SAM_EMBED_CHANNELS,
        num_pos_feats=SAM_EMBED_CHANNELS // 2, qkv_bias=True, use_abs_pos=True, use_rel_pos=True,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=SAM_EMBED_CHANNELS, image_size=size, patch_size=16,
        **({"mask_input_channels": v.mask_input_channels} if v.mask_input_channels else {}),
    )
    decoder_kwargs = {}
    if v.decoder_mlp_dim:
        decoder_kwargs["mlp_dim"] = v.decoder_mlp_dim
    if v.iou_head_hidden_dim:
        decoder_kwargs["iou_head_hidden_dim"] = v.iou_head_hidden_dim
    decoder = SamMaskDecoderConfig(hidden_size=SAM_EMBED_CHANNELS, iou_head_depth=3, **decoder_kwargs)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                     mask_decoder_config=decoder.to_dict())


def build_sam(variant: str, image_size: Optional[int] = None,
              device: Union[str, torch.device] = "cpu") -> SamModel:
    """Build a randomly initialised SAM (load weights with `rass.checkpoint.load_sam_checkpoint`).

    Args:
        variant: "vit_b", "vit_l", "vit_h" or "tiny".
        image_size: input side (see `sam_config`).
        device: where to build; "meta" builds the structure without allocating memory.

    Returns:
        The `SamModel` in eval mode.
    """
    config = sam_config(variant, image_size)
    device = torch.device(device)
    ctx = torch.device(device) if device.type == "meta" else contextlib.nullcontext()
    with ctx:
        model = SamModel(config)
    if device.type != "meta":
        model = model.to(device)
    return model.eval()
