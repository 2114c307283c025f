"""SAM2's prompt encoder and mask decoder: transformers' `Sam2PromptEncoder` / `Sam2MaskDecoder`, subclassed
where the released modules differ from them.

- `Sam2PointEmbeddings`: the four point-label embeddings as four 1 x C tables, as SAM2 stores them
  (`point_embeddings.{0..3}`); transformers stacks them into one 4 x C table. Same values, same use.
- `Sam2PromptEncoderAnySize`: dense prompt embedding and image-wide positional encoding for any feature
  size (transformers fixes them to the configured image size).
- `Sam2MaskDecoderHeads`: number of multimask outputs, object-score head "mlp" (SAM 2.1: 3-layer MLP) or
  "linear" (MGD-SAM2: one Linear), optional high-resolution skip features (transformers always uses them),
  stability-based single-mask selection on or off.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Sam2MaskDecoderConfig, Sam2PromptEncoderConfig
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder, Sam2PromptEncoder

from rass.utils.errors import UserValueError

from .variants import SAM2_VARIANTS, Sam2Variant, sam2_variant

__all__ = ["OBJ_SCORE_HEADS", "Sam2PointEmbeddings", "Sam2PromptEncoderAnySize", "Sam2MaskDecoderHeads",
           "build_sam2_prompt_encoder", "build_sam2_mask_decoder"]

OBJ_SCORE_HEADS = ("mlp", "linear")


class Sam2PointEmbeddings(nn.ModuleList):
    """SAM2's per-label point embeddings (label 0 negative, 1 positive, 2 / 3 box corners), one 1 x C
    `nn.Embedding` each, usable where transformers expects one `nn.Embedding(4, C)`.

    Args:
        num: number of labels (4).
        dim: embedding width.
    """

    def __init__(self, num: int, dim: int) -> None:
        super().__init__([nn.Embedding(1, dim) for _ in range(num)])

    @property
    def weight(self) -> torch.Tensor:
        """The num x C table (the per-label rows stacked)."""
        return torch.cat([embedding.weight for embedding in self], dim=0)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """Embeddings of integer labels (any shape) -> [..., C]."""
        return F.embedding(labels, self.weight)


class Sam2PromptEncoderAnySize(Sam2PromptEncoder):
    """transformers' `Sam2PromptEncoder` with SAM2's per-label point embeddings and feature-size-free
    dense embeddings. Point coordinates stay in the frame of the configured `image_size`.

    Args:
        config: the `Sam2PromptEncoderConfig`.
    """

    def __init__(self, config: Sam2PromptEncoderConfig) -> None:
        super().__init__(config)
        self.point_embed = Sam2PointEmbeddings(config.num_point_embeddings, config.hidden_size)

    def dense_pe(self, hw: Tuple[int, int]) -> torch.Tensor:
        """Image-wide positional encoding [1, C, h, w] of an h x w feature grid (SAM2's `get_dense_pe`)."""
        table = self.shared_embedding.positional_embedding
        h, w = int(hw[0]), int(hw[1])
        y = (torch.arange(h, device=table.device, dtype=table.dtype) + 0.5) / h
        x = (torch.arange(w, device=table.device, dtype=table.dtype) + 0.5) / w
        grid = torch.stack([x[None, :].expand(h, w), y[:, None].expand(h, w)], dim=-1)
        return self.shared_embedding(grid).permute(2, 0, 1).unsqueeze(0)

    def no_mask_dense(self, batch: int, hw: Tuple[int, int]) -> torch.Tensor:
        """The dense embedding without a mask prompt: `no_mask_embed` broadcast to [batch, C, h, w]."""
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, int(hw[0]), int(hw[1]))


class Sam2MaskDecoderHeads(Sam2MaskDecoder):
    """transformers' `Sam2MaskDecoder` with SAM2's options. `.transformer` is the two-way transformer.

    Args:
        config: the `Sam2MaskDecoderConfig` (`num_multimask_outputs`, `dynamic_multimask_via_stability`).
        obj_score_head: "mlp" (SAM 2.1) or "linear" (MGD-SAM2).
        use_high_res_features: add the stride-4 / stride-8 skip features in the upscaling (SAM2: True;
            False removes `conv_s0` / `conv_s1` and upscales the decoder output alone).
    """

    def __init__(self, config: Sam2MaskDecoderConfig, obj_score_head: str = "mlp",
                 use_high_res_features: bool = True) -> None:
        super().__init__(config)
        if obj_score_head not in OBJ_SCORE_HEADS:
            raise UserValueError(f"MODEL.SAM2.OBJ_SCORE_HEAD {obj_score_head!r}: expected one of {OBJ_SCORE_HEADS}")
        if obj_score_head == "linear":
            self.pred_obj_score_head = nn.Linear(config.hidden_size, 1)
        self.obj_score_head = obj_score_head
        self.use_high_res_features = bool(use_high_res_features)
        if not self.use_high_res_features:
            del self.conv_s0, self.conv_s1

    def forward(self, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool, high_resolution_features: Optional[List[torch.Tensor]] = None,
                **kwargs) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """transformers' decoder forward (masks [B, P, M, 4h, 4w], IoU [B, P, M], mask tokens, object-score
        logits [B, P, 1]); without high-resolution features the skip terms are zero, i.e. SAM2's plain
        `output_upscaling`."""
        if not self.use_high_res_features:
            if high_resolution_features is not None:
                raise ValueError("Sam2MaskDecoderHeads built with use_high_res_features=False got high-resolution "
                                 "features")
            zero = image_embeddings.new_zeros(image_embeddings.shape[0], 1, 1, 1)
            high_resolution_features = [zero, zero]
        elif high_resolution_features is None:
            raise ValueError("Sam2MaskDecoderHeads: high_resolution_features [feat_s0, feat_s1] (after conv_s0 / "
                             "conv_s1) are required with use_high_res_features=True")
        return super().forward(image_embeddings, image_positional_embeddings, sparse_prompt_embeddings,
                               dense_prompt_embeddings, multimask_output, high_resolution_features, **kwargs)


def _variant(variant: Union[str, Sam2Variant, None]) -> Sam2Variant:
    return SAM2_VARIANTS["base_plus"] if variant is None else sam2_variant(variant)


def build_sam2_prompt_encoder(image_size: int, generator: Optional[torch.Generator] = None,
                              variant: Union[str, Sam2Variant, None] = None) -> Sam2PromptEncoderAnySize:
    """Build SAM2's prompt encoder with SAM2's random initialisation.

    Args:
        image_size: side of the square frame the point coordinates are given in (the model's input side).
        generator: random stream of the initialisation (None: torch's global RNG; nothing under meta).
        variant: takes its width and mask-input channels (None: SAM 2.1's 256 / 16, as every released size).

    Returns:
        The prompt encoder.
    """
    from .init import init_sam2_weights

    v = _variant(variant)
    config = Sam2PromptEncoderConfig(hidden_size=v.hidden_dim, image_size=int(image_size), patch_size=16,
                                     mask_input_channels=v.mask_in_chans, num_point_embeddings=4, hidden_act="gelu",
                                     layer_norm_eps=1e-6, scale=1)
    with torch.random.fork_rng(devices=[]):
        encoder = Sam2PromptEncoderAnySize(config)
    if torch.get_default_device().type != "meta":
        init_sam2_weights(encoder, generator)
    return encoder


def build_sam2_mask_decoder(num_multimask_outputs: int = 3, obj_score_head: str = "mlp",
                            use_high_res_features: bool = True, generator: Optional[torch.Generator] = None,
                            variant: Union[str, Sam2Variant, None] = None,
                            dynamic_multimask: bool = False) -> Sam2MaskDecoderHeads:
    """Build SAM2's mask decoder with SAM2's random initialisation.

    Args:
        num_multimask_outputs: masks of the multimask output (SAM2: 3, i.e. 4 mask tokens; MGD-SAM2: 1).
        obj_score_head: "mlp" (SAM 2.1) or "linear" (MGD-SAM2).
        use_high_res_features: use the stride-4 / 8 skip features (`conv_s0` / `conv_s1`).
        generator: random stream of the initialisation (None: torch's global RNG; nothing under meta).
        variant: takes the decoder sizes (None: SAM 2.1's, as every released size).
        dynamic_multimask: single-mask output falls back to the best multimask output when token 0 is
            unstable (SAM2's `build_sam2(apply_postprocessing=True)`); False: token 0.

    Returns:
        The decoder (`.transformer` is the two-way transformer).
    """
    from .init import init_sam2_weights

    if int(num_multimask_outputs) < 1:
        raise UserValueError(f"MODEL.SAM2.NUM_MULTIMASK_OUTPUTS {num_multimask_outputs}: expected >= 1")
    v = _variant(variant)
    config = Sam2MaskDecoderConfig(
        hidden_size=v.hidden_dim, mlp_dim=v.decoder_mlp_dim, num_hidden_layers=2, num_attention_heads=v.decoder_heads,
        attention_downsample_rate=2, num_multimask_outputs=int(num_multimask_outputs), iou_head_depth=3,
        iou_head_hidden_dim=v.iou_head_hidden_dim, dynamic_multimask_via_stability=bool(dynamic_multimask),
        dynamic_multimask_stability_delta=0.05, dynamic_multimask_stability_thresh=0.98)
    config._attn_implementation = "sdpa"  # SAM2's attention is scaled_dot_product_attention (as Sam2Model sets it)
    with torch.random.fork_rng(devices=[]):
        decoder = Sam2MaskDecoderHeads(config, obj_score_head, use_high_res_features)
    if torch.get_default_device().type != "meta":
        init_sam2_weights(decoder, generator)
    return decoder
