"""Stable Diffusion parts shared by RASS and GleSAM: stock diffusers `AutoencoderKL` /
`UNet2DConditionModel` / `DDIMScheduler` and transformers `CLIPTextModel` / `CLIPTokenizer`.

They are loaded from a local diffusers folder (offline), or — with no folder — built with random
weights from architecture configs packaged under `configs/<arch>/` (`sd21_base`: Stable Diffusion
2.1-base, `sd15`: Stable Diffusion 1.5, `tiny`: a few-thousand-parameter model for tests and the
quickstart). On the `meta` device nothing is allocated and no weight file is read.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rass.utils.errors import UserFileNotFoundError, UserValueError

from .clip_tokenizer import tiny_clip_tokenizer

__all__ = ["SDParts", "build_sd_parts", "packaged_arch_dir", "check_sd_folder", "DTYPES", "arch_config",
           "build_unet", "build_vae", "build_text_parts", "alphas_cumprod"]

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


def _expected_layout(parts: Sequence[str] = tuple(_EXPECTED)) -> str:
    return "; ".join(f"{sub}/ ({_EXPECTED[sub][0]} and one of {', '.join(_EXPECTED[sub][1])})" for sub in parts)


def check_sd_folder(path: str, parts: Sequence[str] = tuple(_EXPECTED), key: str = "MODEL.RASS.SD_PATH") -> None:
    """Raise `FileNotFoundError` naming the first missing file of a diffusers SD folder.

    Args:
        path: the folder (e.g. MODEL.RASS.SD_PATH).
        parts: the sub-folders that must be there (of "unet", "vae", "text_encoder", "tokenizer").
        key: config key named in the messages.
    """
    layout = _expected_layout(parts)
    if not os.path.isdir(path):
        raise UserFileNotFoundError(
            f"{key}: folder {path!r} does not exist; expected a Stable Diffusion folder in diffusers layout "
            f"with {layout}")
    for sub in parts:
        required, alternatives = _EXPECTED[sub]
        folder = os.path.join(path, sub)
        if not os.path.isfile(os.path.join(folder, required)):
            raise UserFileNotFoundError(f"{key}={path!r}: missing {sub}/{required}; expected {layout}")
        if not any(os.path.isfile(os.path.join(folder, a)) for a in alternatives):
            raise UserFileNotFoundError(f"{key}={path!r}: {sub}/ has none of {list(alternatives)}; expected {layout}")


def packaged_arch_dir(arch: str, key: str = "MODEL.RASS.ARCH") -> str:
    """Folder with unet.json / vae.json / text_encoder.json for `arch` (a packaged name or a folder).

    Args:
        arch: packaged name ("sd21_base", "sd15", "tiny") or a folder.
        key: config key named in the error message.
    """
    folder = arch if os.path.isdir(arch) else os.path.join(CONFIG_ROOT, arch)
    missing = [f for f in ("unet.json", "vae.json", "text_encoder.json") if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        known = sorted(d for d in os.listdir(CONFIG_ROOT) if os.path.isdir(os.path.join(CONFIG_ROOT, d)))
        raise UserFileNotFoundError(
            f"{key}={arch!r}: {folder!r} lacks {missing}; use one of {known} or a folder holding "
            "unet.json, vae.json and text_encoder.json")
    return folder


def _read_json(path: str) -> Dict[str, Any]:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def _text_config(d: Dict[str, Any]) -> CLIPTextConfig:
    return CLIPTextConfig(**{k: v for k, v in d.items() if k not in ("architectures", "_name_or_path", "transformers_version")})


def build_sd_parts(sd_path: str = "", arch: str = "sd21_base", device: str | torch.device = "cpu",
                   frozen_dtype: str = "float32") -> SDParts:
    """Load (or build) the VAE, UNet, text encoder and tokenizer (RASS; keys MODEL.RASS.*).

    Args:
        sd_path: local diffusers folder; "" builds `arch` with random weights (logs a warning).
        arch: packaged architecture name ("sd21_base", "sd15", "tiny") or a folder of the three JSON configs.
        device: "meta" builds empty modules (configs only, no weights read); otherwise modules are
            created on the CPU (the model is moved to its device afterwards).
        frozen_dtype: dtype of the frozen VAE and text encoder ("float32", "float16", "bfloat16").

    Returns:
        The parts, UNet attention set to PyTorch scaled-dot-product attention.
    """
    if frozen_dtype not in DTYPES:
        raise UserValueError(f"MODEL.RASS.FROZEN_DTYPE: {frozen_dtype!r} is not one of {sorted(DTYPES)}")
    device = torch.device(device)
    on_meta = device.type == "meta"
    if sd_path:
        check_sd_folder(sd_path)  # the whole layout first, so the first missing file is named
    else:
        packaged_arch_dir(arch)
    unet = build_unet(sd_path, arch, device)
    vae = build_vae(sd_path, arch, device)
    tokenizer, text_encoder = build_text_parts(sd_path, arch, device)
    if sd_path and not on_meta:
        logger.info("Loaded Stable Diffusion parts from %s", sd_path)
    elif not on_meta:
        logger.warning(
            "MODEL.RASS.SD_PATH is empty: built the %r Stable Diffusion architecture with RANDOM weights and "
            "a generated tokenizer (fine for tests and shape checks, not for real use).", arch)
    dtype = DTYPES[frozen_dtype]
    if dtype != torch.float32:
        vae.to(dtype=dtype)
        text_encoder.to(dtype=dtype)
    return SDParts(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer)


def arch_config(sd_path: str, arch: str, part: str, key: str = "MODEL.RASS") -> Dict[str, Any]:
    """The config dict of one SD part: `<sd_path>/<part>/config.json`, else the packaged `<arch>/<part>.json`.

    Args:
        sd_path: local diffusers folder, or "".
        arch: packaged architecture (used when `sd_path` is "").
        part: "unet", "vae" or "text_encoder".
        key: config-key prefix named in error messages (e.g. "MODEL.GLESAM").
    """
    if sd_path:
        check_sd_folder(sd_path, (part,), key=f"{key}.SD_PATH")
        return _read_json(os.path.join(sd_path, part, "config.json"))
    return _read_json(os.path.join(packaged_arch_dir(arch, key=f"{key}.ARCH"), f"{part}.json"))


def build_unet(sd_path: str = "", arch: str = "sd21_base", device: str | torch.device = "cpu",
               key: str = "MODEL.RASS") -> UNet2DConditionModel:
    """The UNet of a local diffusers folder (weights loaded), or `arch` with random weights.

    Args:
        sd_path: local diffusers folder; "" = random init from the packaged `arch` config.
        arch: packaged architecture name or folder of JSON configs.
        device: "meta" builds without allocation and reads no weight file; else built on the CPU.
        key: config-key prefix named in error messages.

    Returns:
        The UNet, attention set to PyTorch scaled-dot-product attention.
    """
    unet = _build_part(UNet2DConditionModel, "unet", sd_path, arch, device, key)
    unet.set_attn_processor(AttnProcessor2_0())
    return unet


def _build_part(cls, part: str, sd_path: str, arch: str, device: str | torch.device, key: str):
    """`cls` (a diffusers model class) from `sd_path/part` with its weights, else from the packaged
    `arch` config with random weights (on "meta" without allocation)."""
    device = torch.device(device)
    if sd_path and device.type != "meta":
        check_sd_folder(sd_path, (part,), key=f"{key}.SD_PATH")
        return cls.from_pretrained(sd_path, subfolder=part, local_files_only=True)
    config = arch_config(sd_path, arch, part, key)
    with torch.device(device if device.type == "meta" else "cpu"):
        return cls.from_config(config)


def build_vae(sd_path: str = "", arch: str = "sd21_base", device: str | torch.device = "cpu",
              key: str = "MODEL.RASS") -> AutoencoderKL:
    """The VAE of a local diffusers folder (weights loaded), or `arch` with random weights.

    Args:
        sd_path: local diffusers folder; "" = random init from the packaged `arch` config.
        arch: packaged architecture name or folder of JSON configs.
        device: "meta" builds without allocation and reads no weight file; else built on the CPU.
        key: config-key prefix named in error messages.
    """
    return _build_part(AutoencoderKL, "vae", sd_path, arch, device, key)


def build_text_parts(sd_path: str = "", arch: str = "sd21_base", device: str | torch.device = "cpu",
                     key: str = "MODEL.RASS") -> Tuple[CLIPTokenizer, CLIPTextModel]:
    """Tokenizer and text encoder of a local diffusers folder, or of `arch` (random weights and the
    generated tokenizer).

    Args:
        sd_path: local diffusers folder, or "".
        arch: packaged architecture (used when `sd_path` is "").
        device: "meta" builds the text encoder without allocation; else built on the CPU.
        key: config-key prefix named in error messages.
    """
    device = torch.device(device)
    if sd_path:
        check_sd_folder(sd_path, ("text_encoder", "tokenizer"), key=f"{key}.SD_PATH")
        tokenizer = CLIPTokenizer.from_pretrained(os.path.join(sd_path, "tokenizer"), local_files_only=True)
        if device.type == "meta":
            with torch.device(device):
                text_encoder = CLIPTextModel(_text_config(arch_config(sd_path, arch, "text_encoder", key)))
        else:
            text_encoder = CLIPTextModel.from_pretrained(os.path.join(sd_path, "text_encoder"), local_files_only=True)
    else:
        tokenizer = tiny_clip_tokenizer()
        with torch.device(device if device.type == "meta" else "cpu"):
            text_encoder = CLIPTextModel(_text_config(arch_config(sd_path, arch, "text_encoder", key)))
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise UserValueError(f"tokenizer has {len(tokenizer)} tokens but the text encoder's vocab_size is "
                             f"{text_encoder.config.vocab_size}")
    return tokenizer, text_encoder


# Stable Diffusion's training noise schedule (used when a folder has no scheduler/scheduler_config.json).
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def alphas_cumprod(sd_path: str = "") -> torch.Tensor:
    """ᾱ_t of the folder's noise schedule (`scheduler/scheduler_config.json`, read by diffusers'
    `DDIMScheduler` as GleSAM does), else of SD's scaled-linear schedule (betas 0.00085 → 0.012,
    1000 steps). The scheduler computes them in float32; they are returned as float64.

    Args:
        sd_path: local diffusers folder, or "".
    """
    config_file = os.path.join(sd_path, "scheduler", "scheduler_config.json") if sd_path else ""
    if config_file and os.path.isfile(config_file):
        scheduler = DDIMScheduler.from_config(_read_json(config_file))
    else:
        if sd_path:
            logger.info("%s has no scheduler/scheduler_config.json: using SD's scaled-linear schedule", sd_path)
        scheduler = DDIMScheduler(**SD_SCHEDULE)
    return scheduler.alphas_cumprod.to(torch.float64)
