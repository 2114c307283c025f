"""CRE (Channel Replication and Expansion): the Stable Diffusion UNet re-made for SAM's 256-channel
image embedding, as GleSAM releases it.

The UNet is built from its config with `in_channels = out_channels = channels`; every weight is the
pretrained one (or the random one of a packaged architecture) except conv_in / conv_out, whose
pretrained 4-channel weights are tiled:
  conv_in.weight[:, c]  = W_in[:, c mod 4]   (= W_in.repeat(1, 64, 1, 1) for 256 channels; no 1/64 rescaling)
  conv_in.bias          = b_in (unchanged)
  conv_out.weight[o]    = W_out[o mod 4]     (= W_out.repeat(64, 1, 1, 1))
  conv_out.bias[o]      = b_out[o mod 4]     (= b_out.repeat(64))
Only one UNet is built (the release builds three for inference). On `meta` nothing is allocated.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from rass.modeling.diffusion.sd_components import build_unet
from rass.utils.errors import UserValueError

__all__ = ["GLESAM_ARCHS", "expand_unet_channels", "build_cre_unet"]

# Packaged architectures GleSAM uses (MODEL.GLESAM.ARCH); a folder of JSON configs works too.
GLESAM_ARCHS = ("sd21_base", "sd15", "tiny")


def expand_unet_channels(unet: UNet2DConditionModel, channels: int) -> UNet2DConditionModel:
    """A copy of `unet` with `channels` input/output channels, conv_in/conv_out weights tiled (see module doc).

    The other tensors are moved, not copied (the returned UNet owns them; do not use `unet` afterwards).

    Args:
        unet: the pretrained (or randomly initialised) UNet.
        channels: new number of input and output channels (> 0).

    Returns:
        The CRE UNet, on the device of `unet` (meta stays meta).
    """
    if channels <= 0:
        raise UserValueError(f"MODEL.GLESAM.LATENT_CHANNELS must be > 0, got {channels}")
    c_in, c_out = int(unet.config.in_channels), int(unet.config.out_channels)
    state = unet.state_dict()
    device = state["conv_in.weight"].device
    idx_in = torch.arange(channels, device=device) % c_in
    idx_out = torch.arange(channels, device=device) % c_out
    state["conv_in.weight"] = state["conv_in.weight"][:, idx_in].contiguous()
    state["conv_out.weight"] = state["conv_out.weight"][idx_out].contiguous()
    state["conv_out.bias"] = state["conv_out.bias"][idx_out].contiguous()
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config.update(in_channels=channels, out_channels=channels)
    with torch.device("meta"):
        cre = UNet2DConditionModel.from_config(config)
    cre.load_state_dict(state, strict=True, assign=True)
    cre.set_attn_processor(AttnProcessor2_0())
    return cre


def build_cre_unet(sd_path: str = "", arch: str = "sd21_base", channels: int = 256,
                   device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """The CRE UNet of a local diffusers folder (pretrained weights) or of a packaged architecture
    (random weights, the tiling applied to them all the same).

    Args:
        sd_path: local diffusers folder (MODEL.GLESAM.SD_PATH) with unet/; "" = random init from `arch`.
        arch: "sd21_base", "sd15", "tiny" or a folder of JSON configs (used when `sd_path` is "").
        channels: latent channels (MODEL.GLESAM.LATENT_CHANNELS; SAM's embedding: 256).
        device: "meta" (no allocation, no file read) or "cpu".

    Returns:
        A float32 `UNet2DConditionModel` with `channels` in/out channels.
    """
    unet = build_unet(sd_path, arch, device, key="MODEL.GLESAM")
    return expand_unet_channels(unet.float(), channels)
