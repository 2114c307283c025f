"""SAM2 as an image model (no memory): image encoder + prompt encoder + mask decoder + `no_mem_embed`,
run as SAM2's `SAM2ImagePredictor` runs the video model on single images.

Image path (`image_features`): FPN maps at strides 4 / 8 / 16; `conv_s0` / `conv_s1` of the decoder applied to
the stride-4 / 8 maps (SAM2's `forward_image`); `no_mem_embed` added to the stride-16 map
(`directly_add_no_mem_embed`). Prompt path (`predict`): points (boxes already turned into two corner points
labelled 2 / 3, see `box_points`) always get SAM2's padding point; the dense embedding is `no_mask_embed`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .heads import Sam2MaskDecoderHeads, Sam2PromptEncoderAnySize, build_sam2_mask_decoder, build_sam2_prompt_encoder
from .image_encoder import Sam2ImageEncoder, build_sam2_image_encoder
from .variants import SAM2_VARIANTS, Sam2Variant, check_sam2_image_size, sam2_variant

__all__ = ["Sam2ImageModel", "build_sam2", "box_points", "POINT_LABELS"]

# SAM2's point labels: 1 positive, 0 negative, -1 not a point (padding), 2 / 3 a box's top-left / bottom-right.
POINT_LABELS = (-1, 0, 1, 2, 3)


def box_points(boxes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """SAM2's box prompt: xyxy boxes [..., 4] -> corner points [..., 2, 2] labelled [2, 3]."""
    coords = boxes.reshape(*boxes.shape[:-1], 2, 2)
    labels = torch.tensor([2, 3], device=boxes.device).expand(*boxes.shape[:-1], 2)
    return coords, labels


class Sam2ImageModel(nn.Module):
    """SAM2 on single images.

    Args:
        image_encoder: the `Sam2ImageEncoder`.
        prompt_encoder: the `Sam2PromptEncoderAnySize` (its image size is the frame of point coordinates).
        mask_decoder: the `Sam2MaskDecoderHeads`.
        variant: the size it was built as (for messages and the loader's checks).
    """

    def __init__(self, image_encoder: Sam2ImageEncoder, prompt_encoder: Sam2PromptEncoderAnySize,
                 mask_decoder: Sam2MaskDecoderHeads, variant: Sam2Variant) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.no_memory_embedding = nn.Parameter(torch.zeros(1, 1, variant.hidden_dim))
        self.variant = variant
        self.image_size = int(prompt_encoder.input_image_size)

    @property
    def variant_name(self) -> str:
        """The `SAM2_VARIANTS` name of this model's size ("custom" for another `Sam2Variant`)."""
        return next((n for n, v in SAM2_VARIANTS.items() if v == self.variant), "custom")

    def image_features(self, pixels: torch.Tensor) -> Dict[str, object]:
        """SAM2's image features of normalised images.

        Args:
            pixels: [B, 3, S, S] (`Sam2ImageTransform` output).

        Returns:
            {"image_embed": [B, C, S/16, S/16] (+ no_mem_embed), "high_res_feats": [conv_s0(stride 4),
            conv_s1(stride 8)] (empty without high-resolution features)}.
        """
        features, _ = self.image_encoder(pixels)
        embed = features[-1] + self.no_memory_embedding.reshape(1, -1, 1, 1)
        high_res: List[torch.Tensor] = []
        if self.mask_decoder.use_high_res_features:
            high_res = [self.mask_decoder.conv_s0(features[0]), self.mask_decoder.conv_s1(features[1])]
        return {"image_embed": embed, "high_res_feats": high_res}

    def predict(self, features: Dict[str, object], point_coords: torch.Tensor, point_labels: torch.Tensor,
                multimask_output: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompted masks on image features.

        Args:
            features: `image_features` of B images.
            point_coords: [B, P, N, 2] (x, y) in the prompt encoder's frame (`image_size`), boxes as corner points.
            point_labels: [B, P, N], values in `POINT_LABELS`.
            multimask_output: the multimask tokens (1..) instead of token 0.

        Returns:
            (low-res mask logits [B, P, M, S/4, S/4], predicted IoU [B, P, M], object-score logits [B, P, 1]).
        """
        embed = features["image_embed"]
        batch = embed.shape[0]
        if point_coords.dim() != 4 or point_coords.shape[-1] != 2 or point_coords.shape[0] != batch:
            raise ValueError(f"Sam2ImageModel.predict: point_coords must be [B, P, N, 2] with B = {batch}, got "
                             f"{tuple(point_coords.shape)}")
        if tuple(point_labels.shape) != tuple(point_coords.shape[:3]):
            raise ValueError(f"Sam2ImageModel.predict: point_labels {tuple(point_labels.shape)} must match "
                             f"point_coords {tuple(point_coords.shape)} in [B, P, N]")
        labels = point_labels.to(device=embed.device, dtype=torch.long)
        if labels.device.type != "meta":
            bad = ~torch.isin(labels, torch.tensor(POINT_LABELS, device=labels.device))
            if bool(bad.any()):
                raise ValueError(f"Sam2ImageModel.predict: point labels must be in {POINT_LABELS}, got "
                                 f"{sorted(set(labels[bad].tolist()))[:5]}")
        coords = point_coords.to(device=embed.device, dtype=torch.float32)
        sparse, _ = self.prompt_encoder(input_points=coords, input_labels=labels, input_boxes=None, input_masks=None)
        hw = tuple(embed.shape[-2:])
        high_res = features["high_res_feats"] or None
        image_pe = self.prompt_encoder.dense_pe(hw).to(embed.dtype).expand(batch, -1, -1, -1)
        masks, iou, _, object_score = self.mask_decoder(
            image_embeddings=embed, image_positional_embeddings=image_pe,
            sparse_prompt_embeddings=sparse.to(embed.dtype),
            dense_prompt_embeddings=self.prompt_encoder.no_mask_dense(batch, hw).to(embed.dtype),
            multimask_output=bool(multimask_output), high_resolution_features=high_res)
        return masks, iou, object_score


def build_sam2(variant: Union[str, Sam2Variant], image_size: Optional[int] = None,
               global_attn_blocks: Optional[Sequence[int]] = None, fpn_interp: str = "nearest",
               num_multimask_outputs: int = 3, obj_score_head: str = "mlp", dynamic_multimask: bool = False,
               device: Union[str, torch.device] = "cpu",
               generator: Optional[torch.Generator] = None) -> Sam2ImageModel:
    """Build a SAM2 image model with SAM2's random initialisation (load weights with
    `rass.checkpoint.load_sam2_checkpoint`).

    Args:
        variant: "tiny", "small", "base_plus", "large", "test" or a `Sam2Variant`.
        image_size: input side (default the variant's: 1024; "test" 64); prompts are in this frame.
        global_attn_blocks: Hiera blocks with global attention (None: the variant's).
        fpn_interp: "nearest" (SAM2) or "bilinear" (MGD-SAM2) top-down FPN interpolation.
        num_multimask_outputs: masks of the multimask output (SAM2: 3).
        obj_score_head: "mlp" (SAM 2.1) or "linear".
        dynamic_multimask: single-mask output via SAM2's stability fallback (else token 0).
        device: where to build; "meta" builds the structure without memory (nothing drawn).
        generator: random stream of the initialisation (a CPU generator); None: torch's global RNG.

    Returns:
        The `Sam2ImageModel` in eval mode.
    """
    v = sam2_variant(variant)
    size = check_sam2_image_size(v, v.image_size if image_size is None else image_size)
    device = torch.device(device)
    with torch.device("meta" if device.type == "meta" else "cpu"):
        model = Sam2ImageModel(
            build_sam2_image_encoder(v, size, global_attn_blocks, fpn_interp, generator=generator),
            build_sam2_prompt_encoder(size, generator=generator, variant=v),
            build_sam2_mask_decoder(num_multimask_outputs, obj_score_head, True, generator=generator, variant=v,
                                    dynamic_multimask=dynamic_multimask),
            v)
    if device.type != "meta":
        nn.init.trunc_normal_(model.no_memory_embedding, std=0.02, generator=generator)
        model = model.to(device)
    return model.eval()
