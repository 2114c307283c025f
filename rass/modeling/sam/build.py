"""SAM configurations (ViT-B/L/H as released, a tiny one for tests, or any SAM-shaped "custom" encoder),
the builder, and SAM's own random initialisation.

The model is transformers' `SamModel`, composed (not forked). The ViT variants follow
segment-anything's builders: patch 16, MLP ratio 4, window 14, neck 256, prompt encoder and mask
decoder 256-d (two-way transformer depth 2, 8 heads, MLP 2048).

LayerNorm epsilons as segment-anything (`modeling/*.py`, `build_sam.py`), every one set explicitly:
  - image encoder: ViT blocks `partial(nn.LayerNorm, eps=1e-6)`, neck `LayerNorm2d` (1e-6);
  - prompt encoder: `mask_downscaling` `LayerNorm2d` (1e-6);
  - mask decoder: `TwoWayTransformer` / `TwoWayAttentionBlock` plain `nn.LayerNorm` (1e-5, PyTorch's
    default: norm1-4 of each block and norm_final_attn), `output_upscaling` `LayerNorm2d` (1e-6).
transformers reads the vision and prompt-encoder values from their configs' `layer_norm_eps`, the
two-way blocks' from `SamMaskDecoderConfig.layer_norm_eps` (its default 1e-6 is NOT SAM's), and has
1e-5 (`layer_norm_final_attn`) and 1e-6 (neck, `upscale_layer_norm`) built in.

Random initialisation (`init_sam_weights`): segment-anything builds plain PyTorch modules, so a randomly
built SAM gets PyTorch's default scales, not transformers' `_init_weights` (whose vision
`initializer_range` of 1e-10 makes the image embedding a constant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig
from transformers.models.sam.modeling_sam import SamPositionalEmbedding, SamVisionAttention, SamVisionEncoder

from rass.modeling.default_init import init_like_pytorch
from rass.utils.errors import UserValueError

__all__ = ["SamVariant", "SAM_VARIANTS", "sam_variant", "sam_config", "build_sam", "init_sam_weights",
           "SAM_EMBED_CHANNELS", "SAM_LAYER_NORM_EPS", "SAM_PATCH_SIZE"]

# Channels of SAM's image embedding (neck output = prompt encoder = mask decoder width); GleSAM's CRE
# UNet works on these.
SAM_EMBED_CHANNELS = 256
SAM_PATCH_SIZE = 16
# segment-anything's LayerNorm eps per part (see the module doc).
SAM_LAYER_NORM_EPS = {"image_encoder": 1e-6, "prompt_encoder": 1e-6, "two_way_transformer": 1e-5,
                      "output_upscaling": 1e-6}


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
# The config keys of a "custom" variant (MODEL.SAM.*), by SamVariant field.
CUSTOM_KEYS = {"embed_dim": "EMBED_DIM", "depth": "DEPTH", "num_heads": "NUM_HEADS",
               "global_attn_indexes": "GLOBAL_ATTN_INDEXES", "window_size": "WINDOW_SIZE"}


def sam_variant(variant: Union[str, SamVariant], embed_dim: int = 0, depth: int = 0, num_heads: int = 0,
                global_attn_indexes: Sequence[int] = (), window_size: int = 0) -> SamVariant:
    """The encoder hyper-parameters of MODEL.SAM.VARIANT (a name of `SAM_VARIANTS`, or "custom").

    Args:
        variant: "vit_b", "vit_l", "vit_h", "tiny", "custom", or a `SamVariant` (returned as is).
        embed_dim, depth, num_heads: ViT width, number of blocks and attention heads (MODEL.SAM.EMBED_DIM,
            DEPTH, NUM_HEADS); required with "custom", must be left 0 with a named variant.
        global_attn_indexes: blocks with global attention (MODEL.SAM.GLOBAL_ATTN_INDEXES; "custom" only;
            empty = every block windowed).
        window_size: window of the other blocks (MODEL.SAM.WINDOW_SIZE; "custom" only; 0 = SAM's 14).

    Returns:
        The `SamVariant` (a "custom" one has SAM's prompt encoder and mask decoder).

    Raises:
        UserValueError: unknown variant, custom keys with a named variant, or invalid custom values.
    """
    if isinstance(variant, SamVariant):
        return variant
    given = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
             "global_attn_indexes": list(global_attn_indexes), "window_size": window_size}
    if variant != "custom":
        if variant not in SAM_VARIANTS:
            raise UserValueError(f"MODEL.SAM.VARIANT: unknown SAM variant {variant!r}; expected one of "
                                 f"{sorted(SAM_VARIANTS) + ['custom']}")
        set_keys = [f"MODEL.SAM.{CUSTOM_KEYS[k]} = {v}" for k, v in given.items() if v]
        if set_keys:
            raise UserValueError(f"{', '.join(set_keys)} given with MODEL.SAM.VARIANT {variant!r}: these keys shape "
                                 f"a 'custom' SAM only", hint="set MODEL.SAM.VARIANT 'custom' (and every size key), "
                                 "or leave them at 0 / [] for the named variant")
        return SAM_VARIANTS[variant]
    for field in ("embed_dim", "depth", "num_heads"):
        if int(given[field]) <= 0:
            raise UserValueError(f"MODEL.SAM.{CUSTOM_KEYS[field]} = {given[field]}: MODEL.SAM.VARIANT 'custom' needs "
                                 f"a positive {field.replace('_', ' ')}")
    embed_dim, depth, num_heads = int(embed_dim), int(depth), int(num_heads)
    if embed_dim % num_heads:
        raise UserValueError(f"MODEL.SAM.EMBED_DIM {embed_dim} is not divisible by MODEL.SAM.NUM_HEADS {num_heads}")
    glob = tuple(int(i) for i in global_attn_indexes)
    if len(set(glob)) != len(glob) or any(not 0 <= i < depth for i in glob):
        raise UserValueError(f"MODEL.SAM.GLOBAL_ATTN_INDEXES {list(glob)}: expected distinct block indexes in "
                             f"0..{depth - 1} (MODEL.SAM.DEPTH {depth})")
    window = 14 if int(window_size) == 0 else int(window_size)
    if window < 0:
        raise UserValueError(f"MODEL.SAM.WINDOW_SIZE {window_size}: expected a positive window (0 = SAM's 14)")
    return SamVariant(embed_dim, depth, num_heads, tuple(sorted(glob)), window_size=window)


def sam_config(variant: Union[str, SamVariant], image_size: Optional[int] = None) -> SamConfig:
    """The transformers `SamConfig` of a SAM variant.

    Args:
        variant: "vit_b", "vit_l", "vit_h", "tiny", or a `SamVariant` (e.g. from `sam_variant("custom", ...)`).
        image_size: side of the square input (default: the variant's, 1024, tiny 256); a multiple of the
            patch size 16. Only the size the weights were trained at matches their `pos_embed`.

    Returns:
        The config (vision, prompt-encoder and mask-decoder sub-configs filled in, every LayerNorm eps
        as segment-anything's).
    """
    v = sam_variant(variant)
    size = v.image_size if image_size is None else int(image_size)
    if size <= 0 or size % SAM_PATCH_SIZE:
        raise UserValueError(f"MODEL.SAM.IMAGE_SIZE: {image_size} is not a positive multiple of the patch size "
                             f"{SAM_PATCH_SIZE}")
    vision = SamVisionConfig(
        hidden_size=v.embed_dim, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
        global_attn_indexes=list(v.global_attn_indexes), window_size=v.window_size, image_size=size,
        patch_size=SAM_PATCH_SIZE, mlp_ratio=4.0, layer_norm_eps=SAM_LAYER_NORM_EPS["image_encoder"],
        output_channels=SAM_EMBED_CHANNELS, num_pos_feats=SAM_EMBED_CHANNELS // 2, qkv_bias=True,
        use_abs_pos=True, use_rel_pos=True,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=SAM_EMBED_CHANNELS, image_size=size, patch_size=SAM_PATCH_SIZE,
        layer_norm_eps=SAM_LAYER_NORM_EPS["prompt_encoder"],
        **({"mask_input_channels": v.mask_input_channels} if v.mask_input_channels else {}),
    )
    decoder_kwargs = {}
    if v.decoder_mlp_dim:
        decoder_kwargs["mlp_dim"] = v.decoder_mlp_dim
    if v.iou_head_hidden_dim:
        decoder_kwargs["iou_head_hidden_dim"] = v.iou_head_hidden_dim
    decoder = SamMaskDecoderConfig(hidden_size=SAM_EMBED_CHANNELS, iou_head_depth=3,
                                   layer_norm_eps=SAM_LAYER_NORM_EPS["two_way_transformer"], **decoder_kwargs)
    return SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                     mask_decoder_config=decoder.to_dict())


@torch.no_grad()
def init_sam_weights(model: SamModel, generator: Optional[torch.Generator] = None) -> SamModel:
    """Re-initialise every parameter of a `SamModel` as segment-anything's plain PyTorch modules start.

    Linear / Conv2d / ConvTranspose2d: PyTorch's default (weight kaiming-uniform with a = sqrt(5), bias
    U(+-1/sqrt(fan_in))); LayerNorms: ones / zeros; Embeddings (point, not-a-point, no-mask, IoU and mask
    tokens): N(0, 1); `pos_embed` and the relative position tables: zeros; the random Fourier matrix of the
    positional encoding: N(0, 1) (segment-anything's scale 1.0; transformers uses the vision width / 2).

    Args:
        model: the `SamModel` (not on the meta device).
        generator: the random stream; None draws from torch's global RNG (seed it, or fork it, to reproduce).

    Returns:
        The model (initialised in place).
    """
    done = set()

    def mark(*params: Optional[torch.Tensor]) -> None:
        done.update(id(p) for p in params if p is not None)

    for module in model.modules():
        plain = init_like_pytorch(module, generator)
        if plain:
            mark(*plain)
        elif isinstance(module, SamPositionalEmbedding):
            if id(module.positional_embedding) not in done:  # tied: shared_image_embedding = prompt encoder's
                nn.init.normal_(module.positional_embedding, 0.0, 1.0, generator=generator)
            mark(module.positional_embedding)
        elif isinstance(module, SamVisionAttention) and module.use_rel_pos:
            nn.init.zeros_(module.rel_pos_h)
            nn.init.zeros_(module.rel_pos_w)
            mark(module.rel_pos_h, module.rel_pos_w)
        elif isinstance(module, SamVisionEncoder) and module.pos_embed is not None:
            nn.init.zeros_(module.pos_embed)
            mark(module.pos_embed)
    left = [n for n, p in model.named_parameters() if id(p) not in done]
    if left:  # a transformers version with parameters this function does not know
        raise RuntimeError(f"init_sam_weights: no segment-anything initialisation for {left[:5]}")
    return model


def build_sam(variant: Union[str, SamVariant], image_size: Optional[int] = None,
              device: Union[str, torch.device] = "cpu", generator: Optional[torch.Generator] = None,
              init: bool = True) -> SamModel:
    """Build a SAM with segment-anything's random initialisation (load weights with
    `rass.checkpoint.load_sam_checkpoint`).

    Args:
        variant: "vit_b", "vit_l", "vit_h", "tiny" or a `SamVariant` (see `sam_variant`).
        image_size: input side (see `sam_config`).
        device: where to build; "meta" builds the structure without allocating memory.
        generator: random stream of the initialisation (a CPU generator); None: torch's global RNG (only
            `init_sam_weights` draws from it; building the modules leaves it as it was).
        init: False keeps transformers' initialisation (when every tensor is loaded from a file next).

    Returns:
        The `SamModel` in eval mode.
    """
    config = sam_config(variant, image_size)
    device = torch.device(device)
    # construction draws (PyTorch's and transformers' inits, overwritten next) do not advance the caller's RNG
    ctx = torch.device(device) if device.type == "meta" else torch.random.fork_rng(devices=[])
    with ctx:
        model = SamModel(config)
    if device.type != "meta":
        if init:
            init_sam_weights(model, generator)
        model = model.to(device)
    return model.eval()
