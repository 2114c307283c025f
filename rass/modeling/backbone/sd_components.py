"""Stable Diffusion parts of the backbone: stock diffusers `AutoencoderKL` / `UNet2DConditionModel`
and transformers `CLIPTextModel` / `CLIPTokenizer`.

They are loaded from a local diffusers folder (offline), or — with no folder — built with random
weights from architecture configs packaged under `configs/<arch>/` (`sd21_base`: Stable Diffusion
2.1-base, `tiny`: a few-thousand-parameter model for tests and the quickstart). On the `meta`
device nothing is allocated and no weight file is read.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .clip_tokenizer import tiny_clip_tokenizer

__all__ = ["SDParts", "build_sd_parts", "packaged_arch_dir", "check_sd_folder", "DTYPES"]

logger = logging.getLogger(__name__)

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# What a diffusers Stable Diffusion folder must hold: sub-folder -> (required file, alternatives of weight files).
_EXPECTED = {
    "unet": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                             "diffusion_pytorch_model.safetensors.index.json")),
    "vae": ("config.json", ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": ("config.json", ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")),
    "tokenizer": ("vocab.json", ("merges.txt",)),
}


@dataclass
class SDParts:
    """The Stable Diffusion modules the backbone uses."""

    vae: AutoencoderKL
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def _expected_layout() -> str:
    return "; ".join(f"{sub}/ ({req} and one of {', '.join(alts)})" for sub, (req, alts) in _EXPECTED.items())


def check_sd_folder(path: str) -> None:
    """Raise `FileNotFoundError` naming the first missing file of a diffusers SD folder.

    Args:
        path: the folder (MODEL.RASS.SD_PATH).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"MODEL.RASS.SD_PATH: folder {path!r} does not exist; expected a Stable Diffusion 2.1-base "
            f"folder in diffusers layout with {_expected_layout()}")
    for sub, (required, alternatives) in _EXPECTED.items():
        folder = os.path.join(path, sub)
        if not os.path.isfile(os.path.join(folder, required)):
            raise FileNotFoundError(
                f"MODEL.RASS.SD_PATH={path!r}: missing {sub}/{required}; expected {_expected_layout()}")
        if not any(os.path.isfile(os.path.join(folder, a)) for a in alternatives):
            raise FileNotFoundError(
                f"MODEL.RASS.SD_PATH={path!r}: {sub}/ has none of {list(alternatives)}; expected {_expected_layout()}")


def packaged_arch_dir(arch: str) -> str:
    """Folder with unet.json / vae.json / text_encoder.json for `arch` (a packaged name or a folder)."""
    folder = arch if os.path.isdir(arch) else os.path.join(CONFIG_ROOT, arch)
    missing = [f for f in ("unet.json", "vae.json", "text_encoder.json") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        known = sorted(d for d in os.listdir(CONFIG_ROOT) if os.path.isdir(os.path.join(CONFIG_ROOT, d)))
        raise FileNotFoundError(
            f"MODEL.RASS.ARCH={arch!r}: {folder!r} lacks {missing}; use one of {known} or a folder holding "
            "unet.json, vae.json and text_encoder.json")
    return folder


def _read_json(path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _text_config(d: Dict[str, Any]) -> CLIPTextConfig:
    return CLIPTextConfig(**{k: v for k, v in d.items() if k not in ("architectures", "_name_or_path", "transformers_version")})


def _build_from_configs(unet_cfg: dict, vae_cfg: dict, text_cfg: dict, device: torch.device):
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = CLIPTextModel(_text_config(text_cfg))
    return vae, unet, text_encoder


def build_sd_parts(sd_path: str = "", arch: str = "sd21_base", device: str | torch.device = "cpu",
                   frozen_dtype: str = "float32") -> SDParts:
    """Load (or build) the VAE, UNet, text encoder and tokenizer.

    Args:
        sd_path: local diffusers folder; "" builds `arch` with random weights (logs a warning).
        arch: packaged architecture name ("sd21_base", "tiny") or a folder of the three JSON configs.
        device: "meta" builds empty modules (configs only, no weights read); otherwise modules are
            created on the CPU (the model is moved to its device afterwards).
        frozen_dtype: dtype of the frozen VAE and text encoder ("float32", "float16", "bfloat16").

    Returns:
        The parts, UNet attention set to PyTorch scaled-dot-product attention.
    """
    if frozen_dtype not in DTYPES:
        raise ValueError(f"MODEL.RASS.FROZEN_DTYPE: {frozen_dtype!r} is not one of {sorted(DTYPES)}")
    device = torch.device(device)
    on_meta = device.type == "meta"
    if sd_path:
        check_sd_folder(sd_path)
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(sd_path, "tokenizer"), local_files_only=True)
        if on_meta:
            vae, unet, text_encoder = _build_from_configs(
                _read_json(os.path.join(sd_path, "unet", "config.json")),
                _read_json(os.path.join(sd_path, "vae", "config.json")),
                _read_json(os.path.join(sd_path, "text_encoder", "config.json")), device)
        else:
            unet = UNet2DConditionModel.from_pretrained(sd_path, subfolder="unet", local_files_only=True)
            vae = AutoencoderKL.from_pretrained(sd_path, subfolder="vae", local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(os.path.join(sd_path, "text_encoder"), local_files_only=True)
            logger.info("Loaded Stable Diffusion parts from %s", sd_path)
    else:
        folder = packaged_arch_dir(arch)
        vae, unet, text_encoder = _build_from_configs(
            _read_json(os.path.join(folder, "unet.json")), _read_json(os.path.join(folder, "vae.json")),
            _read_json(os.path.join(folder, "text_encoder.json")), device if on_meta else torch.device("cpu"))
        tokenizer = tiny_clip_tokenizer()
        if not on_meta:
            logger.warning(
                "MODEL.RASS.SD_PATH is empty: built the %r Stable Diffusion architecture with RANDOM weights and "
                "a generated tokenizer (fine for tests and shape checks, not for real use).", arch)
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the text encoder's vocab_size is "
                         f"{text_encoder.config.vocab_size}")
    unet.set_attn_processor(AttnProcessor2_0())
    dtype = DTYPES[frozen_dtype]
    if dtype != torch.float32:
        vae.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    return SDParts(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)


def tap_shape(parts_or_configs: Any, tap: str) -> Optional[tuple]:
    """(channels, stride w.r.t. the image) of a tapped VAE-encoder / UNet block, from the configs.

    Args:
        parts_or_configs: an `SDParts` (uses `.vae.config` / `.unet.config`).
        tap: "vae.encoder.down_blocks.<i>" or "unet.up_blocks.<i>" or "unet.down_blocks.<i>".

    Returns:
        (channels, stride), or None for other module paths.
    """
    vae_cfg, unet_cfg = parts_or_configs.vae.config, parts_or_configs.unet.config
    parts = tap.split(".")
    vae_channels = list(vae_cfg.block_out_channels)
    latent_stride = 2 ** (len(vae_channels) - 1)
    unet_channels = list(unet_cfg.block_out_channels)
    n = len(unet_channels)
    index = int(parts[-1]) if parts[-1].isdigit() else -1
    if parts[:3] == ["vae", "encoder", "down_blocks"] and len(parts) == 4 and 0 <= index < len(vae_channels):
        return vae_channels[index], 2 ** min(index + 1, len(vae_channels) - 1)
    if parts[:2] == ["unet", "down_blocks"] and len(parts) == 3 and 0 <= index < n:
        return unet_channels[index], latent_stride * 2 ** min(index + 1, n - 1)
    if parts[:2] == ["unet", "up_blocks"] and len(parts) == 3 and 0 <= index < n:
        return unet_channels[::-1][index], latent_stride * 2 ** max(n - 2 - index, 0)
    return None
