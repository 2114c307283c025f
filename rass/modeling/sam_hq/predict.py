"""HQ-SAM calls: the image encoder with its first global block's output, and prompted decoding.

`sam_hq_image_embeddings` runs `SamHQModel`'s image encoder, whose output also lists the outputs of the
global-attention blocks (`intermediate_embeddings`); HQ-SAM's decoder reads the first one (interm[0] in the
release). `sam_hq_predict` decodes on precomputed embeddings through `rass.modeling.sam.sam_predict` (one
prompt check for SAM and HQ-SAM), adding the early features and the output rule `hq_token_only`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from transformers import SamHQModel

from rass.modeling.sam.predict import sam_predict

__all__ = ["sam_hq_image_embeddings", "sam_hq_predict"]


def sam_hq_image_embeddings(model: SamHQModel, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings and the first global-attention block's output (gradients flow unless disabled).

    Args:
        model: the `SamHQModel`.
        pixel_values: [B, 3, S, S] preprocessed images (`SamImageTransform`), S = the model's input side.

    Returns:
        ([B, 256, S/16, S/16] embeddings, [B, S/16, S/16, C_vit] early features, channels last as released).
    """
    size = int(model.config.vision_config.image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise ValueError(f"sam_hq_image_embeddings: expected pixel values [B, 3, {size}, {size}] "
                         f"(SamImageTransform output), got {tuple(pixel_values.shape)}")
    if not model.config.vision_config.global_attn_indexes:
        raise ValueError("sam_hq_image_embeddings: HQ-SAM reads the first global-attention block, but this encoder "
                         "has none (MODEL.SAM.GLOBAL_ATTN_INDEXES is empty)")
    weight = model.vision_encoder.patch_embed.projection.weight
    out = model.vision_encoder(pixel_values.to(device=weight.device, dtype=weight.dtype))
    return out.last_hidden_state, out.intermediate_embeddings[0]


class _WithHQInputs:
    """A `SamHQModel` seen by `sam_predict`: its calls get the early features and `hq_token_only`."""

    def __init__(self, model: SamHQModel, early: torch.Tensor, hq_token_only: bool) -> None:
        self.model, self.early, self.hq_token_only = model, early, bool(hq_token_only)
        self.config, self.mask_decoder = model.config, model.mask_decoder

    def __call__(self, **kwargs):
        early = self.early.to(device=self.mask_decoder.hq_token.weight.device,
                              dtype=self.mask_decoder.hq_token.weight.dtype)
        return self.model(**kwargs, intermediate_embeddings=[early], hq_token_only=self.hq_token_only)


def sam_hq_predict(model: SamHQModel, image_embeddings: torch.Tensor, early: torch.Tensor,
                   point_coords: Optional[torch.Tensor] = None, point_labels: Optional[torch.Tensor] = None,
                   boxes: Optional[torch.Tensor] = None, multimask_output: bool = False,
                   hq_token_only: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prompted HQ-SAM decoding on image embeddings (prompts as `sam_predict`).

    Args:
        model: the `SamHQModel`.
        image_embeddings: [B, 256, h, w].
        early: [B, h, w, C_vit] first global block's output (`sam_hq_image_embeddings`).
        point_coords, point_labels, boxes: prompts in SAM's input frame (see `sam_predict`).
        multimask_output: False: SAM's mask token 0; True: SAM's 3 masks (tokens 1-3), sorted by predicted IoU,
            best first (the release returns only the best one: index 0 here).
        hq_token_only: True: the HQ token's mask alone; False (the release predictor's default): SAM's mask +
            the HQ mask (logits added).

    Returns:
        (low_res_logits [B, P, M, 4h, 4w], iou_pred [B, P, M]); the IoU is SAM's head (HQ-SAM adds none).
    """
    if early.dim() != 4 or early.shape[0] != image_embeddings.shape[0] or \
            tuple(early.shape[1:3]) != tuple(image_embeddings.shape[-2:]):
        raise ValueError(f"sam_hq_predict: early features must be [B, h, w, C_vit] with B, h, w of the embeddings "
                         f"{tuple(image_embeddings.shape)}, got {tuple(early.shape)}")
    return sam_predict(_WithHQInputs(model, early, hq_token_only), image_embeddings, point_coords, point_labels,
                       boxes, multimask_output)
