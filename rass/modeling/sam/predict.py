"""SAM calls on precomputed (optionally GleSAM-enhanced) image embeddings.

`sam_image_embeddings` runs the image encoder; `sam_predict` runs the prompt encoder and mask
decoder on embeddings, with prompts already in SAM's input frame (see
`SamImageTransform.apply_coords` / `apply_boxes`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from transformers import SamModel

__all__ = ["sam_image_embeddings", "sam_predict", "embedding_shape"]


def embedding_shape(model: SamModel) -> Tuple[int, int, int]:
    """(channels, h, w) of the model's image embedding (256, 64, 64 for SAM at 1024 px)."""
    size = int(model.config.prompt_encoder_config.image_embedding_size)
    return int(model.config.vision_config.output_channels), size, size


def sam_image_embeddings(model: SamModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image embeddings of SAM's image encoder (gradients flow unless the caller disables them).

    Args:
        model: the `SamModel`.
        pixel_values: [B, 3, S, S] preprocessed images (`SamImageTransform`), S = the model's input side.

    Returns:
        [B, 256, S/16, S/16] embeddings.
    """
    size = int(model.config.vision_config.image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
        raise ValueError(f"sam_image_embeddings: expected pixel values [B, 3, {size}, {size}] "
                         f"(SamImageTransform output), got {tuple(pixel_values.shape)}")
    weight = model.vision_encoder.patch_embed.projection.weight
    return model.vision_encoder(pixel_values.to(device=weight.device, dtype=weight.dtype)).last_hidden_state


def _check(name: str, value: Optional[torch.Tensor], dims: int, last: Optional[int], batch: int) -> None:
    if value is None:
        return
    if value.dim() != dims or (last is not None and value.shape[-1] != last) or value.shape[0] != batch:
        want = {"point_coords": "[B, P, N, 2]", "point_labels": "[B, P, N]", "boxes": "[B, P, 4]"}[name]
        raise ValueError(f"sam_predict: {name} must be {want} with B = {batch} (the embeddings' batch), "
                         f"got shape {tuple(value.shape)}")


def sam_predict(model: SamModel, image_embeddings: torch.Tensor, point_coords: Optional[torch.Tensor] = None,
                point_labels: Optional[torch.Tensor] = None, boxes: Optional[torch.Tensor] = None,
                multimask_output: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Prompted mask decoding on image embeddings.

    Args:
        model: the `SamModel`.
        image_embeddings: [B, 256, h, w] (h, w = the model's embedding grid, 64 x 64 for SAM).
        point_coords: [B, P, N, 2] (x, y) in SAM's input frame (e.g. 1024), or None.
        point_labels: [B, P, N] 1 positive, 0 negative, -1 not a point (padding); required with points.
        boxes: [B, P, 4] xyxy in SAM's input frame, or None. Points and boxes together need the same P;
            as in SAM, points alone get one padding point appended, points with a box do not.
        multimask_output: False: one mask (mask token 0); True: SAM's 3 masks (tokens 1-3).

    Returns:
        (low_res_logits [B, P, M, 4h, 4w], iou_pred [B, P, M]) with M = 3 or 1; P = 1 without prompts.
    """
    channels, h, w = embedding_shape(model)
    if image_embeddings.dim() != 4 or tuple(image_embeddings.shape[1:]) != (channels, h, w):
        raise ValueError(f"sam_predict: image_embeddings must be [B, {channels}, {h}, {w}] for this SAM, "
                         f"got {tuple(image_embeddings.shape)}")
    batch = image_embeddings.shape[0]
    _check("point_coords", point_coords, 4, 2, batch)
    _check("point_labels", point_labels, 3, None, batch)
    _check("boxes", boxes, 3, 4, batch)
    if (point_coords is None) != (point_labels is None):
        raise ValueError("sam_predict: point_coords and point_labels must be given together")
    if point_coords is not None:
        if tuple(point_labels.shape) != tuple(point_coords.shape[:3]):
            raise ValueError(f"sam_predict: point_labels {tuple(point_labels.shape)} must match point_coords "
                             f"{tuple(point_coords.shape)} in [B, P, N]")
        bad = ~((point_labels == 1) | (point_labels == 0) | (point_labels == -1))
        if point_labels.device.type != "meta" and bool(bad.any()):  # (no values on meta: shape runs)
            raise ValueError(f"sam_predict: point_labels must be 1 (positive), 0 (negative) or -1 (padding), "
                             f"got {sorted(set(point_labels[bad].tolist()))[:5]}")
    if point_coords is not None and boxes is not None and point_coords.shape[1] != boxes.shape[1]:
        raise ValueError(f"sam_predict: points and boxes together need the same number of prompts P, "
                         f"got {point_coords.shape[1]} and {boxes.shape[1]}")
    dtype = model.mask_decoder.iou_token.weight.dtype
    device = model.mask_decoder.iou_token.weight.device
    out = model(
        image_embeddings=image_embeddings.to(device=device, dtype=dtype),
        input_points=None if point_coords is None else point_coords.to(device=device, dtype=torch.float32),
        input_labels=None if point_labels is None else point_labels.to(device=device, dtype=torch.long),
        input_boxes=None if boxes is None else boxes.to(device=device, dtype=torch.float32),
        multimask_output=bool(multimask_output),
    )
    return out.pred_masks, out.iou_scores
