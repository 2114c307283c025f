"""Names of the original SAM 2 / SAM 2.1 checkpoints (facebookresearch/sam2 `SAM2Base`) <-> names of the
project's `Sam2ImageModel` (built from transformers' `Sam2*` classes, see `rass.modeling.sam2`).

`SAM2_KEY_TABLE` is the one rename table; both directions are derived from it (`Sam2KeyMap`), so the map is a
bijection between the names it covers (tested on the four released key sets). Placeholders: `{i}` an index,
`{n}` one digit, `{p}` the last name segment (weight / bias). The memory modules of the video model are not
part of the image model: `SAM2_IGNORED_PATTERNS` lists them for the loader to ignore explicitly.

| SAM2 | project |
|---|---|
| `image_encoder.trunk.patch_embed.proj` | `image_encoder.trunk.patch_embed.projection` |
| `image_encoder.trunk.blocks.{i}.norm{n}` / `.mlp.layers.0/1` | `...layer_norm{n}` / `.mlp.proj_in/proj_out` |
| `image_encoder.neck.convs.{i}.conv` | `image_encoder.neck.convs.{i}` |
| `sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix` | `prompt_encoder.shared_embedding.positional_embedding` |
| `sam_prompt_encoder.point_embeddings.{i}` | `prompt_encoder.point_embed.{i}` |
| `sam_prompt_encoder.mask_downscaling.0/1/3/4/6` | `prompt_encoder.mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3` |
| `sam_mask_decoder.transformer...norm{n}`, `out_proj`, `mlp.layers.0/1` | `mask_decoder.transformer...layer_norm{n}`, `o_proj`, `mlp.proj_in/proj_out` |
| `sam_mask_decoder.output_upscaling.0/1/3` | `mask_decoder.upscale_conv1/upscale_layer_norm/upscale_conv2` |
| 3-layer MLPs (hypernetworks, IoU head, object-score head) `layers.0/1/2` | `proj_in/layers.0/proj_out` |
| `no_mem_embed` | `no_memory_embedding` |

Other `image_encoder.*`, `sam_mask_decoder.*` and `sam_prompt_encoder.*` names keep their tail with the prefix
renamed (`Sam2KeyMap.fallback`), so that a model extending SAM2 (MGD-SAM2's `sam_mask_decoder.new_*`) maps
its own modules without listing them; rules of an extending model can be added with `Sam2KeyMap(table + more)`.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, TypeVar

from .sam_keys import apply_rules, compile_rule

__all__ = ["SAM2_KEY_TABLE", "SAM2_IGNORED_PATTERNS", "SAM2_PREFIXES", "Sam2KeyMap", "SAM2_KEY_MAP",
           "original_to_project", "project_to_original", "is_ignored_sam2_key", "original_to_project_keys",
           "project_to_original_keys"]

T = TypeVar("T")

# SAM2 top-level module prefix -> project prefix (the fallback for names outside the table).
SAM2_PREFIXES: Tuple[Tuple[str, str], ...] = (
    ("image_encoder.", "image_encoder."),
    ("sam_prompt_encoder.", "prompt_encoder."),
    ("sam_mask_decoder.", "mask_decoder."),
)

# Memory (video) parts of SAM2Base that the image model does not have: ignored by name, and reported.
SAM2_IGNORED_PATTERNS: Tuple[str, ...] = (
    r"memory_attention\..+", r"memory_encoder\..+", r"mask_downsample\..+", r"obj_ptr_proj\..+",
    r"obj_ptr_tpos_proj\..+", r"maskmem_tpos_enc", r"no_mem_pos_enc", r"no_obj_ptr", r"no_obj_embed_spatial",
)
_IGNORED = re.compile("|".join(f"(?:{p})" for p in SAM2_IGNORED_PATTERNS) + r"\Z")

_ATTENTIONS = ("layers.{i}.self_attn", "layers.{i}.cross_attn_token_to_image", "layers.{i}.cross_attn_image_to_token",
               "final_attn_token_to_image")
_MLP3 = ("output_hypernetworks_mlps.{i}", "iou_prediction_head", "pred_obj_score_head")


def _decoder_rules() -> List[Tuple[str, str]]:
    d, D = "sam_mask_decoder.", "mask_decoder."
    rules = []
    for attn in _ATTENTIONS:
        for proj, new in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj")):
            rules.append((f"{d}transformer.{attn}.{proj}.{{p}}", f"{D}transformer.{attn}.{new}.{{p}}"))
    rules += [
        (f"{d}transformer.layers.{{i}}.norm{{n}}.{{p}}", f"{D}transformer.layers.{{i}}.layer_norm{{n}}.{{p}}"),
        (f"{d}transformer.layers.{{i}}.mlp.layers.0.{{p}}", f"{D}transformer.layers.{{i}}.mlp.proj_in.{{p}}"),
        (f"{d}transformer.layers.{{i}}.mlp.layers.1.{{p}}", f"{D}transformer.layers.{{i}}.mlp.proj_out.{{p}}"),
        (f"{d}transformer.norm_final_attn.{{p}}", f"{D}transformer.layer_norm_final_attn.{{p}}"),
        (f"{d}output_upscaling.0.{{p}}", f"{D}upscale_conv1.{{p}}"),
        (f"{d}output_upscaling.1.{{p}}", f"{D}upscale_layer_norm.{{p}}"),
        (f"{d}output_upscaling.3.{{p}}", f"{D}upscale_conv2.{{p}}"),
    ]
    for mlp in _MLP3:
        rules += [(f"{d}{mlp}.layers.0.{{p}}", f"{D}{mlp}.proj_in.{{p}}"),
                  (f"{d}{mlp}.layers.1.{{p}}", f"{D}{mlp}.layers.0.{{p}}"),
                  (f"{d}{mlp}.layers.2.{{p}}", f"{D}{mlp}.proj_out.{{p}}")]
    for name in ("iou_token", "mask_tokens", "obj_score_token", "conv_s0", "conv_s1",
                 "pred_obj_score_head"):  # (a Linear object-score head: `pred_obj_score_head.weight/bias`)
        rules.append((f"{d}{name}.{{p}}", f"{D}{name}.{{p}}"))
    return rules


SAM2_KEY_TABLE: Tuple[Tuple[str, str], ...] = tuple([
    ("no_mem_embed", "no_memory_embedding"),
    ("image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed"),
    ("image_encoder.trunk.pos_embed_window", "image_encoder.trunk.pos_embed_window"),
    ("image_encoder.trunk.patch_embed.proj.{p}", "image_encoder.trunk.patch_embed.projection.{p}"),
    ("image_encoder.trunk.blocks.{i}.norm{n}.{p}", "image_encoder.trunk.blocks.{i}.layer_norm{n}.{p}"),
    ("image_encoder.trunk.blocks.{i}.attn.qkv.{p}", "image_encoder.trunk.blocks.{i}.attn.qkv.{p}"),
    ("image_encoder.trunk.blocks.{i}.attn.proj.{p}", "image_encoder.trunk.blocks.{i}.attn.proj.{p}"),
    ("image_encoder.trunk.blocks.{i}.mlp.layers.0.{p}", "image_encoder.trunk.blocks.{i}.mlp.proj_in.{p}"),
    ("image_encoder.trunk.blocks.{i}.mlp.layers.1.{p}", "image_encoder.trunk.blocks.{i}.mlp.proj_out.{p}"),
    ("image_encoder.trunk.blocks.{i}.proj.{p}", "image_encoder.trunk.blocks.{i}.proj.{p}"),
    ("image_encoder.neck.convs.{i}.conv.{p}", "image_encoder.neck.convs.{i}.{p}"),
    ("sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
     "prompt_encoder.shared_embedding.positional_embedding"),
    ("sam_prompt_encoder.point_embeddings.{i}.{p}", "prompt_encoder.point_embed.{i}.{p}"),
    ("sam_prompt_encoder.not_a_point_embed.{p}", "prompt_encoder.not_a_point_embed.{p}"),
    ("sam_prompt_encoder.no_mask_embed.{p}", "prompt_encoder.no_mask_embed.{p}"),
    ("sam_prompt_encoder.mask_downscaling.0.{p}", "prompt_encoder.mask_embed.conv1.{p}"),
    ("sam_prompt_encoder.mask_downscaling.1.{p}", "prompt_encoder.mask_embed.layer_norm1.{p}"),
    ("sam_prompt_encoder.mask_downscaling.3.{p}", "prompt_encoder.mask_embed.conv2.{p}"),
    ("sam_prompt_encoder.mask_downscaling.4.{p}", "prompt_encoder.mask_embed.layer_norm2.{p}"),
    ("sam_prompt_encoder.mask_downscaling.6.{p}", "prompt_encoder.mask_embed.conv3.{p}"),
] + _decoder_rules())


class Sam2KeyMap:
    """A two-way rename map derived from a table of (original, project) templates; the first matching rule wins.

    Args:
        table: (original template, project template) pairs (specific before generic).
        prefixes: (original prefix, project prefix) pairs for names no rule covers (their tail kept); a
            name covered by a rule in one direction is never mapped by the fallback in the other.
    """

    def __init__(self, table: Sequence[Tuple[str, str]] = SAM2_KEY_TABLE,
                 prefixes: Sequence[Tuple[str, str]] = SAM2_PREFIXES) -> None:
        self.table = tuple(table)
        self.prefixes = tuple(prefixes)
        self._forward = [(compile_rule(src), dst) for src, dst in self.table]
        self._backward = [(compile_rule(dst), src) for src, dst in self.table]

    @staticmethod
    def _swap(name: str, pairs: Iterable[Tuple[str, str]]) -> Optional[str]:
        for old, new in pairs:
            if name.startswith(old):
                return new + name[len(old):]
        return None

    def fallback(self, name: str, forward: bool = True) -> Optional[str]:
        """The prefix-only rename of a name outside the table (None: no known prefix, or the result would be
        a name the table owns, which keeps the map bijective)."""
        pairs = self.prefixes if forward else [(b, a) for a, b in self.prefixes]
        out = self._swap(name, pairs)
        if out is None or apply_rules(self._backward if forward else self._forward, out) is not None:
            return None
        return out

    def to_project(self, name: str) -> Optional[str]:
        """The project name of an original SAM2 name; None for ignored memory names and unknown ones."""
        if _IGNORED.match(name):
            return None
        return apply_rules(self._forward, name) or self.fallback(name, forward=True)

    def to_original(self, name: str) -> Optional[str]:
        """The original SAM2 name of a project name; None for unknown ones."""
        return apply_rules(self._backward, name) or self.fallback(name, forward=False)


SAM2_KEY_MAP = Sam2KeyMap()


def is_ignored_sam2_key(name: str) -> bool:
    """Whether an original SAM2 name belongs to the memory (video) modules the image model leaves out."""
    return bool(_IGNORED.match(name))


def original_to_project(name: str) -> Optional[str]:
    """The project (`Sam2ImageModel`) name of an original SAM2 checkpoint name; None if ignored or unknown."""
    return SAM2_KEY_MAP.to_project(name)


def project_to_original(name: str) -> Optional[str]:
    """The original SAM2 checkpoint name of a project name; None if unknown."""
    return SAM2_KEY_MAP.to_original(name)


def _rename(state: Mapping[str, T], one) -> Tuple[Dict[str, T], List[str]]:
    out: Dict[str, T] = {}
    unknown: List[str] = []
    for name, value in state.items():
        target = one(name)
        if target is None:
            unknown.append(name)
            continue
        if target in out:
            raise ValueError(f"SAM2 name map: {name!r} and another entry both map to {target!r}")
        out[target] = value
    return out, unknown


def original_to_project_keys(state: Mapping[str, T],
                             key_map: Sam2KeyMap = SAM2_KEY_MAP) -> Tuple[Dict[str, T], List[str]]:
    """Rename an original SAM2 state dict (ignored memory names must be removed first).

    Returns:
        (project-named dict, original names the map does not know).
    """
    return _rename(state, key_map.to_project)


def project_to_original_keys(state: Mapping[str, T],
                             key_map: Sam2KeyMap = SAM2_KEY_MAP) -> Tuple[Dict[str, T], List[str]]:
    """Rename a project state dict to original SAM2 names.

    Returns:
        (original-named dict, project names the map does not know).
    """
    return _rename(state, key_map.to_original)
