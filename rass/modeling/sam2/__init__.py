"""SAM 2 / SAM 2.1 on single images, composed from transformers' `Sam2*` classes (subclassed only where the
released models differ), loadable from the official `sam2.1_hiera_*.pt` files
(`rass.checkpoint.load_sam2_checkpoint`). MGD-SAM2 builds on the same parts.

Public API:
- `sam2_variant(name) -> Sam2Variant`, `SAM2_VARIANTS`: "tiny", "small", "base_plus", "large" (the official
  SAM 2.1 hyper-parameters) and "test" (about 0.3 M parameters, 64-px input, CPU tests).
- `build_sam2_image_encoder(variant, image_size, global_attn_blocks=None, fpn_interp="nearest", generator=None)`
  -> `Sam2ImageEncoder` with `.trunk` (transformers' Hiera; `.trunk.blocks` in order, `trunk_block_dims(encoder)`
  their input widths) and `.neck`; `forward(pixels [N, 3, S, S]) -> (features, pos)`: FPN maps at strides 4, 8,
  16 (256 channels; stride 32 dropped) and their position encodings, for any valid S.
- `build_sam2_mask_decoder(num_multimask_outputs=3, obj_score_head="mlp", use_high_res_features=True,
  generator=None)` (two-way transformer at `.transformer`) and `build_sam2_prompt_encoder(image_size,
  generator=None)` (`dense_pe(hw)`, `no_mask_dense(batch, hw)` for any feature size).
- `build_sam2(...) -> Sam2ImageModel` (`image_features`, `predict`), `Sam2ImageTransform`, `box_points`,
  `init_sam2_weights`.
Checkpoint names: `rass.checkpoint.sam2_keys.original_to_project` / `project_to_original`.
"""
from .heads import (
    OBJ_SCORE_HEADS, Sam2MaskDecoderHeads, Sam2PointEmbeddings, Sam2PromptEncoderAnySize, build_sam2_mask_decoder,
    build_sam2_prompt_encoder,
)
from .image_encoder import FPN_INTERP_MODES, Sam2FpnNeck, Sam2ImageEncoder, build_sam2_image_encoder, trunk_block_dims
from .init import init_sam2_weights
from .model import POINT_LABELS, Sam2ImageModel, box_points, build_sam2
from .transforms import Sam2ImageTransform
from .variants import SAM2_HIDDEN_DIM, SAM2_VARIANTS, Sam2Variant, check_sam2_image_size, hiera_config, sam2_variant

__all__ = [
    "OBJ_SCORE_HEADS", "Sam2MaskDecoderHeads", "Sam2PointEmbeddings", "Sam2PromptEncoderAnySize",
    "build_sam2_mask_decoder", "build_sam2_prompt_encoder", "FPN_INTERP_MODES", "Sam2FpnNeck", "Sam2ImageEncoder",
    "build_sam2_image_encoder", "trunk_block_dims", "init_sam2_weights", "POINT_LABELS", "Sam2ImageModel",
    "box_points", "build_sam2", "Sam2ImageTransform", "SAM2_HIDDEN_DIM", "SAM2_VARIANTS", "Sam2Variant",
    "check_sam2_image_size", "hiera_config", "sam2_variant",
]
