"""Stable Diffusion parts shared by RASS and GleSAM: loading from a local diffusers folder or packaged
architecture configs (`configs/{sd21_base,sd15,tiny}`), the generated CLIP tokenizer, peft LoRA
(the OSEDiff restoration-LoRA merge, trainable adapters) and diffusers-format LoRA files."""
from .lora import add_trainable_lora, match_lora_targets, merge_and_unwrap, merge_osediff_lora, read_osediff_lora
from .lora_files import LoRALoadReport, load_lora_state_dict, lora_state_dict, read_lora_file, write_lora_file
from .sd_components import (
    DTYPES, SDParts, alphas_cumprod, arch_config, build_sd_parts, build_text_parts, build_unet, check_sd_folder,
    packaged_arch_dir)

__all__ = [
    "DTYPES", "SDParts", "alphas_cumprod", "arch_config", "build_sd_parts", "build_text_parts", "build_unet",
    "check_sd_folder", "packaged_arch_dir", "add_trainable_lora", "match_lora_targets", "merge_and_unwrap",
    "merge_osediff_lora", "read_osediff_lora", "LoRALoadReport", "load_lora_state_dict", "lora_state_dict",
    "read_lora_file", "write_lora_file",
]
