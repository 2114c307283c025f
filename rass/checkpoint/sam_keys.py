"""Names of the original segment-anything SAM <-> names of transformers' `SamModel`.

The official `sam_vit_{b,l,h}_*.pth`, GleSAM's (`GleSAM-l.pth`, `epoch_last.pth`, `ft-decoder.pth`)
and RobustSAM's files use segment-anything's module tree; the project builds transformers'
`SamModel` (transformers 5 ships no converter). `_TABLE` below is the one rename table; both
directions are derived from it. Placeholders: `{i}` a layer index, `{n}` one digit, `{p}` the last
name segment (weight / bias), `{rest}` any tail.

| segment-anything | transformers |
|---|---|
| `image_encoder.blocks.{i}.norm{n}` | `vision_encoder.layers.{i}.layer_norm{n}` |
| `image_encoder.patch_embed.proj` | `vision_encoder.patch_embed.projection` |
| `image_encoder.neck.0/1/2/3` | `vision_encoder.neck.conv1/layer_norm1/conv2/layer_norm2` |
| `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix` | `prompt_encoder.shared_embedding.positional_embedding` (+ the tied `shared_image_embedding.positional_embedding`) |
| `prompt_encoder.point_embeddings.{i}` | `prompt_encoder.point_embed.{i}` |
| `prompt_encoder.mask_downscaling.0/1/3/4/6` | `prompt_encoder.mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3` |
| `mask_decoder.transformer.layers.{i}.norm{n}`, `.norm_final_attn` | `....layer_norm{n}`, `.layer_norm_final_attn` |
| `mask_decoder.output_upscaling.0/1/3` | `mask_decoder.upscale_conv1/upscale_layer_norm/upscale_conv2` |
| MLPs (`output_hypernetworks_mlps.{i}`, `iou_prediction_head`) `layers.0/1/2` | `proj_in/layers.0/proj_out` (3 layers, as in every SAM) |
| `pixel_mean`, `pixel_std` (non-persistent in SAM; present in some exports) | dropped |

A `module.` prefix (DDP) is stripped. Names outside the table are returned unchanged, so a loader
reports them as unexpected.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple, TypeVar

__all__ = [
    "original_to_hf_keys", "hf_to_original_keys", "original_to_hf_name", "hf_to_original_name",
    "strip_module_prefix", "TIED_HF_KEY", "PROMPT_PE_HF_KEY", "DROPPED_ORIGINAL_KEYS",
]

T = TypeVar("T")

# transformers' tied duplicate of the prompt encoder's random Fourier matrix.
TIED_HF_KEY = "shared_image_embedding.positional_embedding"
PROMPT_PE_HF_KEY = "prompt_encoder.shared_embedding.positional_embedding"
DROPPED_ORIGINAL_KEYS = ("pixel_mean", "pixel_std")

# (segment-anything name, transformers name); the first rule that matches wins (specific before generic).
_TABLE: Tuple[Tuple[str, str], ...] = (
    ("image_encoder.pos_embed", "vision_encoder.pos_embed"),
    ("image_encoder.patch_embed.proj.{p}", "vision_encoder.patch_embed.projection.{p}"),
    ("image_encoder.blocks.{i}.norm{n}.{p}", "vision_encoder.layers.{i}.layer_norm{n}.{p}"),
    ("image_encoder.blocks.{i}.attn.{rest}", "vision_encoder.layers.{i}.attn.{rest}"),
    ("image_encoder.blocks.{i}.mlp.{rest}", "vision_encoder.layers.{i}.mlp.{rest}"),
    ("image_encoder.neck.0.{p}", "vision_encoder.neck.conv1.{p}"),
    ("image_encoder.neck.1.{p}", "vision_encoder.neck.layer_norm1.{p}"),
    ("image_encoder.neck.2.{p}", "vision_encoder.neck.conv2.{p}"),
    ("image_encoder.neck.3.{p}", "vision_encoder.neck.layer_norm2.{p}"),
    ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", PROMPT_PE_HF_KEY),
    ("prompt_encoder.point_embeddings.{i}.{p}", "prompt_encoder.point_embed.{i}.{p}"),
    ("prompt_encoder.not_a_point_embed.{p}", "prompt_encoder.not_a_point_embed.{p}"),
    ("prompt_encoder.no_mask_embed.{p}", "prompt_encoder.no_mask_embed.{p}"),
    ("prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
    ("mask_decoder.transformer.layers.{i}.norm{n}.{p}", "mask_decoder.transformer.layers.{i}.layer_norm{n}.{p}"),
    ("mask_decoder.transformer.layers.{i}.self_attn.{rest}", "mask_decoder.transformer.layers.{i}.self_attn.{rest}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}",
     "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}",
     "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}"),
    ("mask_decoder.transformer.layers.{i}.mlp.{rest}", "mask_decoder.transformer.layers.{i}.mlp.{rest}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{rest}",
     "mask_decoder.transformer.final_attn_token_to_image.{rest}"),
    ("mask_decoder.transformer.norm_final_attn.{p}", "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    ("mask_decoder.iou_token.{p}", "mask_decoder.iou_token.{p}"),
    ("mask_decoder.mask_tokens.{p}", "mask_decoder.mask_tokens.{p}"),
    ("mask_decoder.output_upscaling.0.{p}", "mask_decoder.upscale_conv1.{p}"),
    ("mask_decoder.output_upscaling.1.{p}", "mask_decoder.upscale_layer_norm.{p}"),
    ("mask_decoder.output_upscaling.3.{p}", "mask_decoder.upscale_conv2.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}",
     "mask_decoder.output_hypernetworks_mlps.{i}.proj_in.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.1.{p}",
     "mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}"),
    ("mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{p}",
     "mask_decoder.output_hypernetworks_mlps.{i}.proj_out.{p}"),
    ("mask_decoder.iou_prediction_head.layers.0.{p}", "mask_decoder.iou_prediction_head.proj_in.{p}"),
    ("mask_decoder.iou_prediction_head.layers.1.{p}", "mask_decoder.iou_prediction_head.layers.0.{p}"),
    ("mask_decoder.iou_prediction_head.layers.2.{p}", "mask_decoder.iou_prediction_head.proj_out.{p}"),
)

_PLACEHOLDERS = {"i": r"\d+", "n": r"\d", "p": r"[^.]+", "rest": r".+"}


def compile_rule(template: str) -> re.Pattern:
    pattern, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", template):
        pattern += re.escape(template[pos:m.start()]) + f"(?P<{m.group(1)}>{_PLACEHOLDERS[m.group(1)]})"
        pos = m.end()
    return re.compile(pattern + re.escape(template[pos:]) + r"\Z")


_FORWARD = [(compile_rule(src), dst) for src, dst in _TABLE]
_BACKWARD = [(compile_rule(dst), src) for src, dst in _TABLE]


def strip_module_prefix(name: str) -> str:
    """`name` without leading `module.` prefixes (DDP / accelerate wrappers)."""
    while name.startswith("module."):
        name = name[len("module."):]
    return name


def apply_rules(rules, name: str) -> Optional[str]:
    for pattern, template in rules:
        m = pattern.match(name)
        if m:
            return template.format(**m.groupdict())
    return None


def original_to_hf_name(name: str) -> Optional[str]:
    """The `SamModel` name of one segment-anything name (`module.` stripped); None if outside the table."""
    return apply_rules(_FORWARD, strip_module_prefix(name))


def hf_to_original_name(name: str) -> Optional[str]:
    """The segment-anything name of one `SamModel` name (`module.` stripped); None if outside the table
    (including the tied `shared_image_embedding.positional_embedding`)."""
    return apply_rules(_BACKWARD, strip_module_prefix(name))


def _rename(state_dict: Mapping[str, T], one, drop: Iterable[str]) -> Dict[str, T]:
    drop = set(drop)
    out: Dict[str, T] = {}
    for name, value in state_dict.items():
        bare = strip_module_prefix(name)
        if bare in drop:
            continue
        target = one(bare)
        target = bare if target is None else target
        if target in out:
            raise ValueError(f"SAM name map: {name!r} and another entry both map to {target!r}")
        out[target] = value
    return out


def original_to_hf_keys(state_dict: Mapping[str, T]) -> Dict[str, T]:
    """Rename a segment-anything SAM state dict to `SamModel` names.

    Args:
        state_dict: original names (optionally `module.`-prefixed) -> values (tensors, shapes, ...).

    Returns:
        A new dict with `SamModel` names; `pixel_mean/std` dropped; the tied
        `shared_image_embedding.positional_embedding` added when the prompt encoder's matrix is
        present; names outside the table kept unchanged (a loader reports them as unexpected).
    """
    out = _rename(state_dict, original_to_hf_name, DROPPED_ORIGINAL_KEYS)
    if PROMPT_PE_HF_KEY in out and TIED_HF_KEY not in out:
        out[TIED_HF_KEY] = out[PROMPT_PE_HF_KEY]
    return out


def hf_to_original_keys(state_dict: Mapping[str, T]) -> Dict[str, T]:
    """Rename a `SamModel` state dict to segment-anything names (the official checkpoints' key set).

    Args:
        state_dict: `SamModel` names (optionally `module.`-prefixed) -> values.

    Returns:
        A new dict with original names; the tied `shared_image_embedding.positional_embedding` is
        dropped (it becomes `prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`, taken
        from it only if the prompt encoder's copy is absent); names outside the table kept unchanged.
    """
    bare = {strip_module_prefix(k): v for k, v in state_dict.items()}
    if TIED_HF_KEY in bare and PROMPT_PE_HF_KEY not in bare:
        bare[PROMPT_PE_HF_KEY] = bare[TIED_HF_KEY]
    return _rename(bare, hf_to_original_name, (TIED_HF_KEY,))
