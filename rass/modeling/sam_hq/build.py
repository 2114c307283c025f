"""HQ-SAM (NeurIPS 2023) on transformers' `SamHQModel`: configs of the released sizes, the builder, and the
random initialisation (segment-anything's rules, as for SAM).

HQ-SAM = SAM (same image encoder, prompt encoder and two-way decoder, frozen in the release) + the HQ output
token and its MLP, and three small conv fusions (`compress_vit_*` on the first global-attention block's
output, `encoder_*` on the image embedding, `mask_*` on SAM's upscaled mask features) — SysCV/sam-hq
`segment_anything/modeling/mask_decoder_hq.py`. The SAM part of the config is `rass.modeling.sam.sam_config`'s
(every LayerNorm eps as segment-anything; the HQ LayerNorm2d's 1e-6 is `SamHQLayerNorm`'s default); the HQ
decoder's `vit_dim` is the ViT width. Tiny and "custom" variants work as for SAM.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn
from transformers import SamHQConfig, SamHQModel, SamModel

from rass.checkpoint.sam_hq_keys import HQ_HF_MODULES
from rass.modeling.sam.build import SamVariant, init_sam_weights, sam_config, sam_variant

from .decoder import ReleasedSamHQMaskDecoder

__all__ = ["HQ_MODULES", "sam_hq_config", "build_sam_hq", "init_sam_hq_weights"]

# The modules HQ-SAM adds to SAM's mask decoder (SamHQModel names, under `mask_decoder.`).
HQ_MODULES = HQ_HF_MODULES


def sam_hq_config(variant: Union[str, SamVariant], image_size: Optional[int] = None) -> SamHQConfig:
    """The transformers `SamHQConfig` of a SAM variant (the SAM part exactly `sam_config`'s).

    Args:
        variant: "vit_b", "vit_l", "vit_h", "tiny", or a `SamVariant`.
        image_size: side of the square input (default: the variant's).

    Returns:
        The config, with the HQ decoder's `vit_dim` = the variant's ViT width.
    """
    v = sam_variant(variant)
    sam = sam_config(v, image_size)
    return SamHQConfig(vision_config=sam.vision_config.to_dict(),
                       prompt_encoder_config=sam.prompt_encoder_config.to_dict(),
                       mask_decoder_config={**sam.mask_decoder_config.to_dict(), "vit_dim": int(v.embed_dim)})


@torch.no_grad()
def init_sam_hq_weights(model: SamHQModel, generator: Optional[torch.Generator] = None) -> SamHQModel:
    """Re-initialise a `SamHQModel` as the release's plain PyTorch modules start: the SAM part exactly as
    `init_sam_weights` initialises a `SamModel` of the same config (drawn first, from `generator`), then the
    HQ modules (`HQ_MODULES`) with the same rules (Linear / conv: PyTorch defaults, LayerNorm 1 / 0,
    the HQ token N(0, 1)).

    Args:
        model: the `SamHQModel` (not on the meta device).
        generator: the random stream; None draws from torch's global RNG.

    Returns:
        The model (initialised in place).
    """
    with torch.random.fork_rng(devices=[]), torch.device(model.mask_decoder.hq_token.weight.device):
        sam = SamModel(sam_config_of(model))
    init_sam_weights(sam, generator)
    missing, unexpected = model.load_state_dict(sam.state_dict(), strict=False)
    hq_only = {n for n in missing if n.split(".")[1] in HQ_MODULES}
    if unexpected or set(missing) != hq_only:
        raise RuntimeError(f"init_sam_hq_weights: SamModel and SamHQModel differ outside the HQ modules "
                           f"(missing {sorted(set(missing) - hq_only)[:3]}, unexpected {unexpected[:3]})")
    init_sam_weights(nn.ModuleDict({n: getattr(model.mask_decoder, n) for n in HQ_MODULES}), generator)
    return model


def sam_config_of(model: SamHQModel):
    """The `SamConfig` of the SAM inside a `SamHQModel` (same sub-configs, without the HQ decoder's vit_dim)."""
    from transformers import SamConfig

    c = model.config
    decoder = {k: v for k, v in c.mask_decoder_config.to_dict().items() if k != "vit_dim"}
    return SamConfig(vision_config=c.vision_config.to_dict(), prompt_encoder_config=c.prompt_encoder_config.to_dict(),
                     mask_decoder_config=decoder)


def build_sam_hq(variant: Union[str, SamVariant], image_size: Optional[int] = None,
                 device: Union[str, torch.device] = "cpu", generator: Optional[torch.Generator] = None,
                 init: bool = True) -> SamHQModel:
    """Build an HQ-SAM with the release's random initialisation (load weights with
    `rass.checkpoint.sam_hq_loader.load_sam_hq_checkpoint`).

    Args:
        variant: "vit_b", "vit_l", "vit_h", "tiny" or a `SamVariant`.
        image_size: input side (see `sam_config`).
        device: where to build; "meta" builds the structure without allocating memory.
        generator: random stream of the initialisation; None: torch's global RNG.
        init: False keeps transformers' initialisation (when every tensor is loaded from a file next).

    Returns:
        The `SamHQModel` in eval mode.
    """
    config = sam_hq_config(variant, image_size)
    device = torch.device(device)
    ctx = torch.device(device) if device.type == "meta" else torch.random.fork_rng(devices=[])
    with ctx:
        model = SamHQModel(config)
        model.mask_decoder = ReleasedSamHQMaskDecoder(config.mask_decoder_config)  # the release's data flow
    if device.type != "meta":
        if init:
            init_sam_hq_weights(model, generator)
        model = model.to(device)
    return model.eval()
