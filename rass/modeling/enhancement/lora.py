"""GleSAM's UNet LoRA: peft adapter `default` (rank 8, alpha 8, dropout 0, peft's default init) on the
16 released target types, and its file `pytorch_lora_weights.safetensors` (diffusers key style, fp32).

For the SD-2.1 CRE UNet at rank 8 this is 280 wrapped layers, 560 tensors, 8,518,144 values; the
file is 34,149,184 bytes (the released GleSAM-H file). Reading accepts both diffusers key styles and
peft's own names (see `rass.modeling.diffusion.lora_files`); loading is strict. The file stores no
alpha: MODEL.GLESAM.LORA_ALPHA must be the value it was trained with (8 as released; scale alpha / rank).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Union

import torch
from torch import nn

from rass.modeling.diffusion.lora import add_trainable_lora, match_lora_targets, set_lora_merged
from rass.modeling.diffusion.lora_files import (
    LoRALoadReport, canonical_lora_state, load_lora_state_dict, lora_state_dict, read_lora_file, write_lora_file)

__all__ = ["GLESAM_LORA_TARGETS", "GLESAM_ADAPTER", "add_glesam_lora", "read_glesam_lora", "load_glesam_lora",
           "glesam_lora_state_dict", "save_glesam_lora"]

# The release's target_modules (a peft list: a module matches when its name ends with one of them).
GLESAM_LORA_TARGETS = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
    "conv_in", "conv_out",
)
# peft's adapter name, as diffusers' `unet.add_adapter(config)` uses.
GLESAM_ADAPTER = "default"


def add_glesam_lora(unet: nn.Module, rank: int = 8, alpha: float = 8.0,
                    targets: Sequence[str] = GLESAM_LORA_TARGETS) -> Dict[str, int]:
    """Freeze the UNet and add the trainable GleSAM adapter.

    Args:
        unet: the CRE UNet (no adapters yet).
        rank: LoRA rank (MODEL.GLESAM.LORA_RANK).
        alpha: LoRA alpha (MODEL.GLESAM.LORA_ALPHA; scaling alpha / rank).
        targets: module-name suffixes (MODEL.GLESAM.LORA_TARGETS).

    Returns:
        {"layers": wrapped layers, "params": LoRA values}.
    """
    unet.requires_grad_(False)
    modules = match_lora_targets(unet, targets, key="MODEL.GLESAM.LORA_TARGETS")
    return add_trainable_lora(unet, modules, rank, alpha, adapter_name=GLESAM_ADAPTER, init_lora_weights=True,
                              key="MODEL.GLESAM")


def read_glesam_lora(path: str) -> Dict[str, torch.Tensor]:
    """A GleSAM LoRA file in canonical names (`<module>.lora_A.weight`), any supported key style.

    Args:
        path: the file (MODEL.GLESAM.LORA_PATH).
    """
    return read_lora_file(path, key="MODEL.GLESAM.LORA_PATH")


def load_glesam_lora(unet: nn.Module, path_or_state: Union[str, Mapping[str, torch.Tensor]]) -> LoRALoadReport:
    """Load a GleSAM LoRA file (or state dict) into the UNet's adapter, strictly.

    Args:
        unet: the CRE UNet with `add_glesam_lora` applied.
        path_or_state: a file path or name -> tensor mapping.

    Returns:
        The load report (raises `ValueError` naming mismatching tensors and both shapes).
    """
    set_lora_merged(unet, False)  # new LoRA values must not meet a delta merged from the old ones
    if isinstance(path_or_state, str):
        state, source = read_glesam_lora(path_or_state), path_or_state
    else:
        state, source = canonical_lora_state(path_or_state), "<dict>"
    return load_lora_state_dict(unet, state, adapter_name=GLESAM_ADAPTER, source=source)


def glesam_lora_state_dict(unet: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter's tensors under the release file's names (`unet.<m>.lora.down.weight`, ...)."""
    return lora_state_dict(unet, adapter_name=GLESAM_ADAPTER, prefix="unet.")


def save_glesam_lora(unet: nn.Module, path: str) -> int:
    """Write the release format (safetensors, {"format": "pt"}, fp32); returns the file size in bytes.

    Args:
        unet: the CRE UNet with the GleSAM adapter.
        path: output file (written atomically).
    """
    return write_lora_file(glesam_lora_state_dict(unet), path, dtype=torch.float32)
