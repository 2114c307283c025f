"""Names of the released HQ-SAM (`sam_hq_vit_{b,l,h}.pth`, SysCV/sam-hq's segment-anything tree) <->
names of transformers' `SamHQModel`.

SAM's tensors follow `rass.checkpoint.sam_keys` (the same table and engine: `_TABLE` there); the HQ modules
that sam-hq's `MaskDecoderHQ` adds get the rules below (placeholders as in `sam_keys`: `{p}` the last name
segment):

| sam-hq (`mask_decoder.` ...) | transformers (`mask_decoder.` ...) |
|---|---|
| `hf_token` | `hq_token` |
| `hf_mlp.layers.0/1/2` | `hq_mask_mlp.proj_in/layers.0/proj_out` |
| `compress_vit_feat.0/1/3` (ConvT C_vit->256, LayerNorm2d, ConvT 256->32) | `compress_vit_conv1/compress_vit_norm/compress_vit_conv2` |
| `embedding_encoder.0/1/3` (ConvT 256->64, LayerNorm2d, ConvT 64->32) | `encoder_conv1/encoder_norm/encoder_conv2` |
| `embedding_maskfeature.0/1/3` (Conv3x3 32->64, LayerNorm2d, Conv3x3 64->32) | `mask_conv1/mask_norm/mask_conv2` |

(`.2` of each Sequential is a GELU, without tensors.) The mapping is tested name by name and shape by shape
against the lists of `tools/reference/sam_hq_reference_keys.py` (the published modules built on `meta`).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple, TypeVar

from .sam_keys import (
    PROMPT_PE_HF_KEY, TIED_HF_KEY, apply_rules, compile_rule, _rename, hf_to_original_name, original_to_hf_name,
    strip_module_prefix,
)

__all__ = ["HQ_ORIGINAL_MODULES", "HQ_HF_MODULES", "original_to_hf_hq_name", "hf_to_original_hq_name", "original_to_hf_hq_keys",
           "hf_to_original_hq_keys", "is_hq_original_name"]

T = TypeVar("T")

# The modules sam-hq's MaskDecoderHQ adds (released names, under `mask_decoder.`).
HQ_ORIGINAL_MODULES = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")

_HQ_TABLE: Tuple[Tuple[str, str], ...] = (
    ("mask_decoder.hf_token.{p}", "mask_decoder.hq_token.{p}"),
    ("mask_decoder.hf_mlp.layers.0.{p}", "mask_decoder.hq_mask_mlp.proj_in.{p}"),
    ("mask_decoder.hf_mlp.layers.1.{p}", "mask_decoder.hq_mask_mlp.layers.0.{p}"),
    ("mask_decoder.hf_mlp.layers.2.{p}", "mask_decoder.hq_mask_mlp.proj_out.{p}"),
    ("mask_decoder.compress_vit_feat.0.{p}", "mask_decoder.compress_vit_conv1.{p}"),
    ("mask_decoder.compress_vit_feat.1.{p}", "mask_decoder.compress_vit_norm.{p}"),
    ("mask_decoder.compress_vit_feat.3.{p}", "mask_decoder.compress_vit_conv2.{p}"),
    ("mask_decoder.embedding_encoder.0.{p}", "mask_decoder.encoder_conv1.{p}"),
    ("mask_decoder.embedding_encoder.1.{p}", "mask_decoder.encoder_norm.{p}"),
    ("mask_decoder.embedding_encoder.3.{p}", "mask_decoder.encoder_conv2.{p}"),
    ("mask_decoder.embedding_maskfeature.0.{p}", "mask_decoder.mask_conv1.{p}"),
    ("mask_decoder.embedding_maskfeature.1.{p}", "mask_decoder.mask_norm.{p}"),
    ("mask_decoder.embedding_maskfeature.3.{p}", "mask_decoder.mask_conv2.{p}"),
)
# The same modules in SamHQModel names (under `mask_decoder.`).
HQ_HF_MODULES = tuple(dict.fromkeys(dst.split(".")[1] for _, dst in _HQ_TABLE))
_FORWARD = [(compile_rule(src), dst) for src, dst in _HQ_TABLE]
_BACKWARD = [(compile_rule(dst), src) for src, dst in _HQ_TABLE]


def is_hq_original_name(name: str) -> bool:
    """Whether a released name (`module.` stripped) belongs to one of HQ-SAM's added modules."""
    parts = strip_module_prefix(name).split(".")
    return len(parts) > 1 and parts[0] == "mask_decoder" and parts[1] in HQ_ORIGINAL_MODULES


def original_to_hf_hq_name(name: str) -> Optional[str]:
    """The `SamHQModel` name of one released HQ-SAM name (SAM's table, then the HQ rules); None if outside both."""
    return original_to_hf_name(name) or apply_rules(_FORWARD, strip_module_prefix(name))


def hf_to_original_hq_name(name: str) -> Optional[str]:
    """The released HQ-SAM name of one `SamHQModel` name; None if outside both tables (incl. the tied matrix)."""
    return hf_to_original_name(name) or apply_rules(_BACKWARD, strip_module_prefix(name))


def original_to_hf_hq_keys(state_dict: Mapping[str, T]) -> Dict[str, T]:
    """Rename a released HQ-SAM state dict to `SamHQModel` names (`pixel_mean/std` dropped, the tied
    `shared_image_embedding.positional_embedding` added, names outside the tables kept unchanged)."""
    out = _rename(state_dict, original_to_hf_hq_name, ("pixel_mean", "pixel_std"))
    if PROMPT_PE_HF_KEY in out and TIED_HF_KEY not in out:
        out[TIED_HF_KEY] = out[PROMPT_PE_HF_KEY]
    return out


def hf_to_original_hq_keys(state_dict: Mapping[str, T]) -> Dict[str, T]:
    """Rename a `SamHQModel` state dict to the released names (the tied copy dropped; names outside kept)."""
    bare = {strip_module_prefix(k): v for k, v in state_dict.items()}
    if TIED_HF_KEY in bare and PROMPT_PE_HF_KEY not in bare:
        bare[PROMPT_PE_HF_KEY] = bare[TIED_HF_KEY]
    return _rename(bare, hf_to_original_hq_name, (TIED_HF_KEY,))
