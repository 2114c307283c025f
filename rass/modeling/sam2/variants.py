"""SAM 2.1 model sizes: the Hiera image-encoder hyper-parameters of the released `sam2.1_hiera_*` models
(facebookresearch/sam2 `sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml` and the `Hiera` defaults they
inherit), plus a tiny size for tests, and the transformers `Sam2HieraDetConfig` built from one.

Shared by every SAM 2.1 size: patch embedding 7x7 stride 4 (padding 3), query pooling 2x2 after stages
1-3, width and heads doubled per stage, MLP ratio 4, LayerNorm eps 1e-6; FPN neck 256-d on the four stage
outputs, top-down at levels 2-3, the stride-32 level dropped (scalp 1); prompt encoder / mask decoder
256-d (two-way transformer depth 2, 8 heads, MLP 2048, IoU head 3 x 256, mask-input 16 channels).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from transformers import Sam2HieraDetConfig

from rass.utils.errors import UserValueError

__all__ = ["Sam2Variant", "SAM2_VARIANTS", "sam2_variant", "hiera_config", "check_sam2_image_size",
           "SAM2_HIDDEN_DIM", "SAM2_PATCH_STRIDE"]

# Width of the FPN maps, prompt encoder and mask decoder of every released SAM 2.1.
SAM2_HIDDEN_DIM = 256
# The patch embedding's stride: the first Hiera stage is at stride 4.
SAM2_PATCH_STRIDE = 4
_LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class Sam2Variant:
    """Hyper-parameters of one SAM 2.1 size.

    Args:
        embed_dim: Hiera width of stage 1 (doubled per stage).
        num_heads: attention heads of stage 1 (doubled per stage).
        stages: blocks per stage (4 stages).
        global_attn_blocks: indexes (over all blocks) of the blocks with global attention.
        window_spec: attention window per stage (the first block of a stage keeps the previous stage's).
        bkg_size: side of the background positional embedding (`window_pos_embed_bkg_spatial_size`).
        image_size: the input side the released weights were trained at.
        hidden_dim: FPN / prompt encoder / mask decoder width.
        decoder_mlp_dim: MLP width of the two-way transformer.
        decoder_heads: attention heads of the two-way transformer.
        iou_head_hidden_dim: hidden width of the IoU head.
        mask_in_chans: channels of the prompt encoder's mask-input branch.
    """

    embed_dim: int
    num_heads: int
    stages: Tuple[int, ...]
    global_attn_blocks: Tuple[int, ...]
    window_spec: Tuple[int, ...] = (8, 4, 14, 7)
    bkg_size: int = 7
    image_size: int = 1024
    hidden_dim: int = SAM2_HIDDEN_DIM
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = SAM2_HIDDEN_DIM
    mask_in_chans: int = 16

    @property
    def depth(self) -> int:
        """Number of Hiera blocks."""
        return sum(self.stages)

    @property
    def stage_dims(self) -> List[int]:
        """Width of each stage's output (e.g. [112, 224, 448, 896] for base_plus)."""
        return [self.embed_dim * 2 ** i for i in range(len(self.stages))]

    @property
    def stage_heads(self) -> List[int]:
        """Attention heads of each stage."""
        return [self.num_heads * 2 ** i for i in range(len(self.stages))]


SAM2_VARIANTS: Dict[str, Sam2Variant] = {
    "tiny": Sam2Variant(96, 1, (1, 2, 7, 2), (5, 7, 9)),
    "small": Sam2Variant(96, 1, (1, 2, 11, 2), (7, 10, 13)),
    "base_plus": Sam2Variant(112, 2, (2, 3, 16, 3), (12, 16, 20), bkg_size=14),
    "large": Sam2Variant(144, 2, (2, 6, 36, 4), (23, 33, 43), window_spec=(8, 4, 16, 8)),
    # Tests / CPU demos (about 0.3 M parameters): 64-px input, 5 blocks (block 3 global), 64-d FPN and heads.
    "test": Sam2Variant(8, 1, (1, 1, 2, 1), (3,), window_spec=(4, 4, 2, 2), bkg_size=4, image_size=64,
                        hidden_dim=64, decoder_mlp_dim=128, iou_head_hidden_dim=64, mask_in_chans=8),
}


def sam2_variant(variant: Union[str, Sam2Variant]) -> Sam2Variant:
    """The `Sam2Variant` of MODEL.SAM2.VARIANT.

    Args:
        variant: "tiny", "small", "base_plus", "large", "test" (CPU tests), or a `Sam2Variant` (returned as is).

    Returns:
        The variant.

    Raises:
        UserValueError: unknown name.
    """
    if isinstance(variant, Sam2Variant):
        return variant
    if variant not in SAM2_VARIANTS:
        raise UserValueError(f"MODEL.SAM2.VARIANT: unknown SAM2 variant {variant!r}; expected one of "
                             f"{sorted(SAM2_VARIANTS)}")
    return SAM2_VARIANTS[variant]


def check_sam2_image_size(variant: Sam2Variant, image_size: int) -> int:
    """`image_size` if the Hiera trunk of `variant` takes it (a multiple of 32 and of 4 x the first window,
    so that every stage has an integer size and the window positional embedding tiles); else a one-line error."""
    size = int(image_size)
    step = max(SAM2_PATCH_STRIDE * 2 ** (len(variant.stages) - 1), SAM2_PATCH_STRIDE * variant.window_spec[0])
    if size <= 0 or size % step:
        raise UserValueError(f"MODEL.SAM2.IMAGE_SIZE {image_size}: expected a positive multiple of {step} for this "
                             f"SAM2 (stride-32 last stage, first window {variant.window_spec[0]} patches of 4 px)")
    return size


def hiera_config(variant: Sam2Variant, image_size: Optional[int] = None,
                 global_attn_blocks: Optional[Sequence[int]] = None) -> Sam2HieraDetConfig:
    """The transformers `Sam2HieraDetConfig` of a variant.

    Args:
        variant: the `Sam2Variant`.
        image_size: nominal input side (the trunk itself takes any valid size; default the variant's).
        global_attn_blocks: blocks with global attention (None: the variant's; MGD-SAM2 uses [12, 16, 10]).

    Returns:
        The config (lists, not tuples: transformers' strict config rejects tuples).
    """
    size = check_sam2_image_size(variant, variant.image_size if image_size is None else image_size)
    blocks = variant.global_attn_blocks if global_attn_blocks is None else tuple(int(b) for b in global_attn_blocks)
    if len(set(blocks)) != len(blocks) or any(not 0 <= b < variant.depth for b in blocks):
        raise UserValueError(f"MODEL.SAM2.GLOBAL_ATTN_BLOCKS {list(blocks)}: expected distinct block indexes in "
                             f"0..{variant.depth - 1} (this SAM2 has {variant.depth} blocks)")
    pooling = [sum(variant.stages[:k]) for k in range(1, len(variant.stages))]  # first blocks of stages 2-4
    if set(blocks) & set(pooling):
        raise UserValueError(f"MODEL.SAM2.GLOBAL_ATTN_BLOCKS {list(blocks)}: blocks {sorted(set(blocks) & set(pooling))} "
                             f"pool their queries (first blocks of stages 2-4: {pooling}) and must stay windowed")
    return Sam2HieraDetConfig(
        hidden_size=variant.embed_dim, num_attention_heads=variant.num_heads, image_size=[size, size],
        patch_kernel_size=[7, 7], patch_stride=[SAM2_PATCH_STRIDE] * 2, patch_padding=[3, 3], query_stride=[2, 2],
        window_positional_embedding_background_size=[variant.bkg_size] * 2, num_query_pool_stages=3,
        blocks_per_stage=list(variant.stages), embed_dim_per_stage=variant.stage_dims,
        num_attention_heads_per_stage=variant.stage_heads, window_size_per_stage=list(variant.window_spec),
        global_attention_blocks=list(blocks), mlp_ratio=4.0, hidden_act="gelu", layer_norm_eps=_LAYER_NORM_EPS,
    )
