"""MGD-SAM2 as released (sevenshr/MGD-SAM2 `models/sam.py`): SAM 2.1's Hiera trunk + FPN neck with an
MPAdapter before every trunk block, the multi-view mask decoder (`MgdSam2MaskDecoder`) and the detail
refinement head (DRM), on five views of each image.

Forward on normalised images [B, 3, S, S] (S = 1024 for the released weights):
1. views: 4 tiles of S/2 (image-major, TL, TR, BL, BR) + the image at half size (`image_to_views`);
2. image encoder on the 5B views: FPN maps at strides 4 / 8 / 16 (bilinear top-down, stride 32 dropped),
   adapters called by forward pre-hooks on the trunk blocks;
3. decoder with empty sparse prompts, `no_mask_embed` as dense prompt and the model-level random-Fourier
   PE (`pe_layer`, SAM's `PositionEmbeddingRandom(C/2)`) of the stride-16 grid. The release adds a fresh
   zero tensor where SAM2 adds `no_mem_embed` (`torch.nn.Parameter(torch.zeros(1, 1, 256))` made in its
   forward): adding zero is a no-op, so nothing is added here and the model has no such parameter;
4. DRM on the full image and the views' upscaled embeddings -> [B, 1, S, S] logits.

Names: the project's names follow transformers' (`mask_decoder.*`, `upscale_conv1`, ...); the released
`model_epoch_*.pth` (original SAM2 names: `sam_mask_decoder.*`, `pe_layer.positional_encoding_gaussian_matrix`)
is renamed when loaded (`rass.checkpoint.mgd_sam2_loader`, also through `load_state_dict`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from rass.modeling.sam2.heads import Sam2PromptEncoderAnySize, build_sam2_mask_decoder
from rass.modeling.sam2.image_encoder import Sam2ImageEncoder, build_sam2_image_encoder, trunk_block_dims
from rass.modeling.sam2.variants import SAM2_VARIANTS, Sam2Variant, check_sam2_image_size, sam2_variant
from rass.utils.errors import UserValueError

from .decoder import MGD_SAM2_NUM_MULTIMASK_OUTPUTS, MgdSam2MaskDecoder
from .drm import DetailRefinement
from .hmim import HMIM
from .mcem import MCEM
from .mpadapter import MPAdapter
from .views import image_to_views

__all__ = ["MgdSam2Model", "DensePositionEmbedding", "build_mgd_sam2", "build_mgd_sam2_parts",
           "check_mgd_sam2_input_size", "MGD_SAM2_GLOBAL_ATTN_BLOCKS"]

# Global-attention blocks of the released MGD-SAM2 (its config; SAM 2.1-B+ itself uses [12, 16, 20]).
MGD_SAM2_GLOBAL_ATTN_BLOCKS = (12, 16, 10)


class DensePositionEmbedding(nn.Module):
    """The model-level random-Fourier positional encoding of MGD-SAM2 (`pe_layer`, SAM's
    `PositionEmbeddingRandom`): transformers' `Sam2PositionalEmbedding` as `shared_embedding`, and SAM2's
    dense grid encoding (`Sam2PromptEncoderAnySize.dense_pe`, shared, not copied).

    Args:
        shared_embedding: the `Sam2PositionalEmbedding` (its `positional_embedding` is the [2, C/2] table).
    """

    dense_pe = Sam2PromptEncoderAnySize.dense_pe  # uses only `self.shared_embedding`

    def __init__(self, shared_embedding: nn.Module) -> None:
        super().__init__()
        self.shared_embedding = shared_embedding

    def forward(self, hw: Tuple[int, int]) -> torch.Tensor:
        """[1, C, h, w] encoding of an h x w grid (cell centres in [0, 1])."""
        return self.dense_pe(hw)


def check_mgd_sam2_input_size(variant: Sam2Variant, size: int, key: str = "MODEL.MGD_SAM2.IMAGE_SIZE") -> int:
    """`size` if MGD-SAM2 takes S x S inputs of it: the S/2 views must suit the Hiera trunk (a multiple of 32
    and of 4 x its first window) and their stride-16 map must have an even side (MCEM splits it in quadrants),
    i.e. S a multiple of 64 for every released size; else a one-line error."""
    s = int(size)
    step = max(64, 2 * max(32, 4 * variant.window_spec[0]))
    if s <= 0 or s % step:
        raise UserValueError(f"{key} {size}: MGD-SAM2 needs a square input side divisible by {step} (views of "
                             f"half the side for the Hiera trunk, a multiple of 32 ({step // 2}), with an even "
                             f"stride-16 map for MCEM: 32 x 2)")
    return s


class MgdSam2Model(nn.Module):
    """MGD-SAM2 (see the module doc).

    Args:
        image_encoder: the `Sam2ImageEncoder` (bilinear FPN); its trunk gets `mpadapter` as a child
            (`image_encoder.trunk.mpadapter`, the release's place) and one forward pre-hook per block.
        mpadapter: the `MPAdapter` (one adapter per trunk block, of the block's input width).
        mask_decoder: the `MgdSam2MaskDecoder`.
        detail_enhance: the `DetailRefinement` head.
        pe_layer: the `DensePositionEmbedding`.
        no_mask_embed: the dense prompt embedding (`nn.Embedding(1, C)`).
        variant: the SAM2 size it was built as.
    """

    def __init__(self, image_encoder: Sam2ImageEncoder, mpadapter: MPAdapter, mask_decoder: MgdSam2MaskDecoder,
                 detail_enhance: DetailRefinement, pe_layer: DensePositionEmbedding, no_mask_embed: nn.Embedding,
                 variant: Sam2Variant) -> None:
        super().__init__()
        dims = trunk_block_dims(image_encoder)
        if mpadapter.block_dims != dims:
            raise UserValueError(f"MGD-SAM2: the adapters' widths {mpadapter.block_dims} do not match the trunk "
                                 f"blocks' input widths {dims}")
        self.image_encoder = image_encoder
        image_encoder.trunk.mpadapter = mpadapter
        self.mask_decoder = mask_decoder
        self.detail_enhance = detail_enhance
        self.no_mask_embed = no_mask_embed
        self.pe_layer = pe_layer
        self.variant = variant
        self._adapter_hooks = [block.register_forward_pre_hook(self._adapter_hook(i))
                               for i, block in enumerate(image_encoder.trunk.blocks)]
        from rass.checkpoint.mgd_sam2_loader import release_names_pre_hook

        self.register_load_state_dict_pre_hook(release_names_pre_hook)

    def _adapter_hook(self, index: int):
        def hook(module: nn.Module, args: tuple) -> tuple:  # `x = x + adapter(x); x = blk(x)`
            return (self.mpadapter(args[0], index),) + tuple(args[1:])
        return hook

    @property
    def mpadapter(self) -> MPAdapter:
        """The trunk adapters (`image_encoder.trunk.mpadapter`)."""
        return self.image_encoder.trunk.mpadapter

    @property
    def variant_name(self) -> str:
        """The `SAM2_VARIANTS` name of the SAM2 size ("custom" otherwise)."""
        return next((n for n, v in SAM2_VARIANTS.items() if v == self.variant), "custom")

    def logits(self, pixels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """MGD-SAM2 on normalised images (also `forward`; the meta-architecture's forward takes dataset dicts).

        Args:
            pixels: [B, 3, S, S] (ImageNet mean / std), S as `check_mgd_sam2_input_size` allows.

        Returns:
            (mask logits [B, 1, S, S] (DRM), view logits [5B, 1, S/8, S/8] of the decoder (the auxiliary
            output; 4B locals then B globals)).
        """
        if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[-1] != pixels.shape[-2]:
            raise UserValueError(f"MGD-SAM2: expected square images [B, 3, S, S], got {tuple(pixels.shape)}")
        check_mgd_sam2_input_size(self.variant, int(pixels.shape[-1]), key="MGD-SAM2 input side")
        views = image_to_views(pixels)
        features, _ = self.image_encoder(views)
        feat_s0, feat_s1, embed = features
        hw = tuple(int(s) for s in embed.shape[-2:])
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(embed.shape[0], -1, *hw)
        image_pe = self.pe_layer(hw).to(embed.dtype)
        view_logits, upscaled, _, _ = self.mask_decoder(embed, image_pe, dense.to(embed.dtype), feat_s0, feat_s1)
        return self.detail_enhance(pixels, upscaled), view_logits

    forward = logits


def _seeded(generator: Optional[torch.Generator]) -> int:
    return int(torch.randint(0, 2**62, (), generator=generator))


def build_mgd_sam2_parts(variant: Union[str, Sam2Variant] = "base_plus", image_size: Optional[int] = None,
                         global_attn_blocks: Optional[Sequence[int]] = MGD_SAM2_GLOBAL_ATTN_BLOCKS,
                         fpn_interp: str = "bilinear", adapter_reduction: int = 32, meta: bool = False,
                         generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
    """The constructor arguments of `MgdSam2Model` with random weights (on CPU, or on meta): SAM2's initialisation
    for the SAM2 parts, the release's (PyTorch defaults, adapters truncated-normal) for MGD-SAM2's own modules.

    Args:
        variant: SAM2 size ("base_plus" as released; "test" for CPU tests) or a `Sam2Variant`.
        image_size: input side S (default 2 x the variant's input side: 1024 for base_plus, 128 for "test").
        global_attn_blocks: trunk blocks with global attention (default the release's [12, 16, 10]; None: the
            variant's own).
        fpn_interp: FPN top-down interpolation ("bilinear" as the release trained).
        adapter_reduction: adapter hidden width = block width // this (the release: 32).
        meta: build the structure only (nothing drawn).
        generator: random stream of the initialisation (None: torch's global RNG).

    Returns:
        {"image_encoder", "mpadapter", "mask_decoder", "detail_enhance", "pe_layer", "no_mask_embed", "variant"}.
    """
    v = sam2_variant(variant)
    size = check_mgd_sam2_input_size(v, 2 * v.image_size if image_size is None else image_size)
    view = check_sam2_image_size(v, size // 2)
    c = v.hidden_dim
    with torch.device("meta" if meta else "cpu"):
        encoder = build_sam2_image_encoder(v, view, global_attn_blocks, fpn_interp, generator=generator)
        base = build_sam2_mask_decoder(MGD_SAM2_NUM_MULTIMASK_OUTPUTS, "linear", True, generator=generator,
                                       variant=v)
        pe = build_prompt_pe(view, v, generator)
        with torch.random.fork_rng(devices=[]):  # the release's initialisation of its own modules, seeded
            if not meta:
                torch.manual_seed(_seeded(generator))
            parts = {"image_encoder": encoder, "mpadapter": MPAdapter(v.stages, v.stage_dims, adapter_reduction),
                     "mask_decoder": MgdSam2MaskDecoder(base.config, MCEM(c, 8, 2, 2 * c), HMIM(c), HMIM(c)),
                     "detail_enhance": DetailRefinement(c // 8, c // 8), "pe_layer": DensePositionEmbedding(pe),
                     "no_mask_embed": nn.Embedding(1, c), "variant": v}  # nn.Embedding: N(0, 1), as released
    if not meta:
        missing, unexpected = parts["mask_decoder"].load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(not n.startswith("new_") for n in missing):
            raise RuntimeError(f"build_mgd_sam2: SAM2 decoder init did not fit ({unexpected[:3]}, {missing[:3]})")
    return parts


def build_mgd_sam2(variant: Union[str, Sam2Variant] = "base_plus", image_size: Optional[int] = None,
                   global_attn_blocks: Optional[Sequence[int]] = MGD_SAM2_GLOBAL_ATTN_BLOCKS,
                   fpn_interp: str = "bilinear", adapter_reduction: int = 32,
                   device: Union[str, torch.device] = "cpu",
                   generator: Optional[torch.Generator] = None) -> MgdSam2Model:
    """Build MGD-SAM2 with random weights (`build_mgd_sam2_parts`; load weights with
    `rass.checkpoint.mgd_sam2_loader`).

    Args:
        variant, image_size, global_attn_blocks, fpn_interp, adapter_reduction, generator: see
            `build_mgd_sam2_parts`.
        device: where to build; "meta" builds the structure only.

    Returns:
        The `MgdSam2Model` in eval mode.
    """
    device = torch.device(device)
    meta = device.type == "meta"
    parts = build_mgd_sam2_parts(variant, image_size, global_attn_blocks, fpn_interp, adapter_reduction, meta,
                                 generator)
    with torch.device("meta" if meta else "cpu"):
        model = MgdSam2Model(**parts)
    return (model if meta else model.to(device)).eval()


def build_prompt_pe(image_size: int, variant: Sam2Variant, generator: Optional[torch.Generator]) -> nn.Module:
    """The random-Fourier table (transformers' `Sam2PositionalEmbedding`, N(0, 1) as SAM's
    `PositionEmbeddingRandom`) of a SAM2 prompt encoder of `variant`'s width."""
    from rass.modeling.sam2.heads import build_sam2_prompt_encoder

    return build_sam2_prompt_encoder(image_size, generator=generator, variant=variant).shared_embedding
