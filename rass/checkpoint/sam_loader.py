"""Loading SAM weights in segment-anything names into transformers' `SamModel`, with a report.

Accepted files (by path, `torch.load(weights_only=True)`, or `.safetensors`):
- the official `sam_vit_{b,l,h}_*.pth` (bare state dicts, 314 / 482 / 594 tensors);
- GleSAM's full SAM files (`GleSAM-l.pth`, `epoch_last.pth`), with or without the `module.` prefix of
  DDP, bare or wrapped as `{"model": ...}` / `{"state_dict": ...}`;
- decoder-only files (GleSAM's `ft-decoder.pth`: `mask_decoder.*` keys or bare decoder keys), loaded
  on top of `base_path` (a full SAM file, e.g. `sam_vit_h_4b8939.pth`);
- files already in `SamModel` names (e.g. written by `SamModel.state_dict()`).

Rules: a tensor whose shape differs from the model's is always an error (it names tensors with both
shapes, and the encoder the file's shapes imply: only another image size -> "set MODEL.SAM.IMAGE_SIZE",
another named variant -> "set MODEL.SAM.VARIANT", any other shape -> the "custom" keys to set); with
`strict=True` missing and unexpected tensors are
errors too; with `strict=False` they are listed in the report and the model keeps its values.
`save_sam_original` writes the model back in original names (the official key set).
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from rass.utils.io import atomic_open

from .files import CheckpointFileError, read_checkpoint_file
from .fit import CheckpointMismatchError, LoadReport, trainable_names
from .sam_keys import (
    PROMPT_PE_HF_KEY, TIED_HF_KEY, hf_to_original_keys, hf_to_original_name, original_to_hf_keys, original_to_hf_name,
    strip_module_prefix,
)

__all__ = ["SamLoadReport", "read_sam_state_dict", "load_sam_checkpoint", "save_sam_original"]

logger = logging.getLogger(__name__)

_DECODER_HEADS = ("transformer", "iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps",
                  "iou_prediction_head", "upscale_conv1", "upscale_conv2", "upscale_layer_norm")
# Name segments that only SamModel names have (segment-anything uses norm1, neck.1, layers.0, point_embeddings, ...).
_HF_SEGMENTS = frozenset({"vision_encoder", "shared_image_embedding", "proj_in", "proj_out", "upscale_conv1",
                          "upscale_conv2", "upscale_layer_norm", "point_embed", "mask_embed", "shared_embedding"})
_PARTS = ("vision_encoder", "prompt_encoder", "mask_decoder", "shared_image_embedding")


def _part(name: str) -> str:
    return name.split(".", 1)[0]


@dataclass
class SamLoadReport(LoadReport):
    """What `load_sam_checkpoint` did: the files read and per-part counts (SamModel names)."""

    sources: List[str] = field(default_factory=list)
    overridden: int = 0

    def parts(self) -> Dict[str, Tuple[int, int, int]]:
        """part -> (loaded, missing, unexpected) counts; the tied copy `shared_image_embedding.*` of the prompt
        encoder's matrix is not counted (so the counts match the original files')."""
        loaded, missing, unexpected = (Counter(_part(n) for n in names if n != TIED_HF_KEY)
                                       for names in (self.loaded, self.missing, self.unexpected))
        names = [p for p in _PARTS if loaded[p] or missing[p]] + sorted(set(unexpected) - set(_PARTS))
        return {p: (loaded[p], missing[p], unexpected[p]) for p in names}

    def summary(self) -> str:
        """A few lines: files read, then loaded / missing / unexpected per part."""
        lines = [f"read {s}" for s in self.sources]
        if self.overridden:
            lines.append(f"{self.overridden} tensors of the base file replaced by the second file")
        for part, (ok, miss, extra) in self.parts().items():
            lines.append(f"  {part}: {ok} loaded, {miss} missing (kept as built), {extra} unexpected (ignored)")
        missing = [n for n in self.missing if n != TIED_HF_KEY]
        if missing:
            lines.append(f"  e.g. missing {missing[:3]}")
        if self.unexpected:
            lines.append(f"  e.g. unexpected {self.unexpected[:3]}")
        return "\n".join(lines)


def _safetensors_loader(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path, device="cpu")


def read_sam_state_dict(path: str, key: str = "MODEL.SAM.CHECKPOINT") -> Dict[str, torch.Tensor]:
    """Read a SAM weight file: unwrap `{"model"|"state_dict": ...}`, strip `module.`, check the values.

    Args:
        path: the file (`.pth`/`.pt`/`.bin` via `torch.load(weights_only=True)`, or `.safetensors`).
        key: the config key that gave the path (for messages).

    Returns:
        name -> tensor, names as stored (original or SamModel names) without `module.`.

    Raises:
        FileNotFoundError: no such file (named).
        CheckpointFileError: unreadable, or not a state dict of tensors (the file is named).
    """
    if not isinstance(path, str) or not path:
        raise CheckpointFileError(f"{key}: expected a SAM weight file path, got {path!r}")
    obj = read_checkpoint_file(path, key=key, loader=_safetensors_loader if path.endswith(".safetensors") else None)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointFileError(f"{key}: {path}: expected a (non-empty) SAM state dict name -> tensor, "
                                  f"got {type(obj).__name__}{' (empty)' if isinstance(obj, Mapping) else ''}")
    out: Dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointFileError(f"{key}: {path}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                                      f"expected a SAM state dict")
        out[strip_module_prefix(name)] = value
    return out


def _is_hf_named(names) -> bool:
    return any(seg in _HF_SEGMENTS or seg.startswith("layer_norm") for n in names for seg in n.split("."))


def _to_hf(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """(state in SamModel names, description of the file's kind)."""
    state = {("mask_decoder." + k if _part(k) in _DECODER_HEADS else k): v for k, v in state.items()}
    hf_named = _is_hf_named(state)
    if hf_named:
        if PROMPT_PE_HF_KEY in state and TIED_HF_KEY not in state:
            state[TIED_HF_KEY] = state[PROMPT_PE_HF_KEY]
        elif TIED_HF_KEY in state and PROMPT_PE_HF_KEY not in state:
            state[PROMPT_PE_HF_KEY] = state[TIED_HF_KEY]
    else:
        state = original_to_hf_keys(state)
    parts = {_part(k) for k in state}
    kind = ("full SAM" if "vision_encoder" in parts else
            "mask decoder only" if parts == {"mask_decoder"} else "partial SAM (" + ", ".join(sorted(parts)) + ")")
    return state, f"{kind}, {'SamModel' if hf_named else 'segment-anything'} names"


def _shown_name(name: str) -> str:
    """`name` as the file spells it (segment-anything) with the SamModel name in brackets."""
    original = hf_to_original_name(name)
    return name if original is None or original == name else f"{original} ({name})"


def _block_count(names, prefix: str) -> int:
    idx = [int(m.group(1)) for n in names for m in [re.match(re.escape(prefix) + r"(\d+)\.", n)] if m]
    return max(idx) + 1 if idx else 0


_SHAPE_KEYS = ("embed_dim", "depth", "num_heads", "global_attn_indexes", "window_size")


def file_encoder_shape(sd: Mapping[str, torch.Tensor]) -> Dict[str, object]:
    """The image-encoder hyper-parameters a state dict (SamModel names) implies, as far as its shapes tell:
    embed_dim, depth, patch, image_size (pos_embed grid x patch), num_heads (from the relative position
    tables' head dim), global_attn_indexes and window_size (from their lengths, 2 * side - 1). {} if no encoder."""
    proj = sd.get("vision_encoder.patch_embed.projection.weight")
    if proj is None or proj.dim() != 4:
        return {}
    dim, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = _block_count(sd, "vision_encoder.layers.")
    shape: Dict[str, object] = {"embed_dim": dim, "depth": depth, "patch": patch}
    pos = sd.get("vision_encoder.pos_embed")
    grid = int(pos.shape[1]) if pos is not None and pos.dim() == 4 else None
    if grid is not None:
        shape["image_size"] = grid * patch
    rel = [sd.get(f"vision_encoder.layers.{i}.attn.rel_pos_h") for i in range(depth)]
    if rel and all(r is not None and r.dim() == 2 and r.shape[1] > 0 for r in rel):
        shape["num_heads"] = dim // int(rel[0].shape[1])
        if grid is not None:
            glob = tuple(i for i, r in enumerate(rel) if int(r.shape[0]) == 2 * grid - 1)
            windows = {(int(r.shape[0]) + 1) // 2 for i, r in enumerate(rel) if i not in glob}
            if len(windows) == 1:  # (no windowed block left: window = grid, global blocks not told apart)
                shape["global_attn_indexes"], shape["window_size"] = glob, windows.pop()
    return shape


def model_encoder_shape(model: nn.Module) -> Dict[str, object]:
    v = model.config.vision_config
    return {"embed_dim": int(v.hidden_size), "depth": int(v.num_hidden_layers), "patch": int(v.patch_size),
            "image_size": int(v.image_size), "num_heads": int(v.num_attention_heads),
            "global_attn_indexes": tuple(int(i) for i in v.global_attn_indexes), "window_size": int(v.window_size)}


def encoder_variant_name(shape: Mapping[str, object]) -> Optional[str]:
    """The name of the SAM_VARIANTS entry whose encoder fits `shape` (fields it does not tell are not compared)."""
    from rass.modeling.sam.build import SAM_VARIANTS

    def same(v, k) -> bool:
        value = getattr(v, k)
        return tuple(value) == tuple(shape[k]) if k == "global_attn_indexes" else value == shape[k]

    names = [n for n, v in SAM_VARIANTS.items() if all(same(v, k) for k in _SHAPE_KEYS if k in shape)]
    return names[0] if names else None


def describe_encoder_shape(shape: Mapping[str, object]) -> str:
    """e.g. "vit_b (embed dim 768, 12 blocks, 12 heads, global blocks [2, 5, 8, 11], window 14, image size 1024)"."""
    parts = [f"embed dim {shape['embed_dim']}", f"{shape['depth']} blocks"]
    if "num_heads" in shape:
        parts.append(f"{shape['num_heads']} heads")
    if "global_attn_indexes" in shape:
        parts += [f"global blocks {list(shape['global_attn_indexes'])}", f"window {shape['window_size']}"]
    if "image_size" in shape:
        parts.append(f"image size {shape['image_size']}")
    return f"{encoder_variant_name(shape) or 'a custom SAM'} ({', '.join(parts)})"


def _shape_hint(state: Mapping[str, torch.Tensor], model: nn.Module) -> Tuple[str, Optional[str]]:
    """(text appended to the mismatch message, hint) comparing the file's image encoder with the model's."""
    got = file_encoder_shape(state)
    if not got or not hasattr(getattr(model, "config", None), "vision_config"):
        return "", None
    want = model_encoder_shape(model)
    differ = [k for k in got if got[k] != want[k]]
    if not differ:
        return "", None
    if differ == ["image_size"]:
        grid = int(got["image_size"]) // int(got["patch"])
        return (f"; the image size differs: the file is for {got['image_size']}-px inputs (its pos_embed is a "
                f"{grid}x{grid} grid of {got['patch']}-px patches), the model for {want['image_size']}-px ones "
                f"(the encoder is the same otherwise: {encoder_variant_name(got) or 'a custom SAM'})",
                f"set MODEL.SAM.IMAGE_SIZE {got['image_size']}")
    name = encoder_variant_name(got)
    if name is not None:
        hint = f"set MODEL.SAM.VARIANT '{name}'"
    else:
        hint = (f"set MODEL.SAM.VARIANT 'custom' with MODEL.SAM.EMBED_DIM {got['embed_dim']}, DEPTH {got['depth']}"
                + (f", NUM_HEADS {got['num_heads']}" if "num_heads" in got else "")
                + (f", GLOBAL_ATTN_INDEXES {list(got['global_attn_indexes'])}, WINDOW_SIZE {got['window_size']}"
                   if "global_attn_indexes" in got else ""))
    if "image_size" in differ:
        hint += f" and MODEL.SAM.IMAGE_SIZE {got['image_size']}"
    return f"; the file looks like {describe_encoder_shape(got)}, the model is {describe_encoder_shape(want)}", hint


def load_sam_checkpoint(model: nn.Module, path: Union[str, Mapping[str, torch.Tensor]], base_path: str = "",
                        strict: bool = True) -> SamLoadReport:
    """Load SAM weights (segment-anything or SamModel names) into a `SamModel`, and report.

    Args:
        model: the `SamModel` (or a DDP wrapper of one). Built on the meta device (`build_sam(...,
            device="meta")`), it takes the file's tensors without first allocating random ones
            (then every tensor must be in the file(s)).
        path: the weight file (see the module docstring), or an already read state dict.
        base_path: a full SAM file loaded first when `path` holds only part of SAM (a decoder-only
            `ft-decoder.pth`); "" for none.
        strict: raise when a model tensor is not in the file(s) or a file tensor is not in the model.

    Returns:
        The `SamLoadReport` (also logged).
    """
    model = getattr(model, "module", model)
    report = SamLoadReport()
    merged: Dict[str, torch.Tensor] = {}
    sources = ([base_path] if base_path else []) + [path]
    for i, source in enumerate(sources):
        key = "MODEL.SAM.BASE_CHECKPOINT" if base_path and i == 0 else "MODEL.SAM.CHECKPOINT"
        raw = read_sam_state_dict(source, key) if isinstance(source, str) else {strip_module_prefix(k): v
                                                                                for k, v in source.items()}
        label = source if isinstance(source, str) else "<state dict>"
        state, kind = _to_hf(raw)
        if base_path and i == 0 and not kind.startswith("full SAM"):
            raise CheckpointMismatchError(f"MODEL.SAM.BASE_CHECKPOINT: {label} must be a full SAM state dict, "
                                          f"found {kind}")
        report.sources.append(f"{os.path.basename(label)}: {len(raw)} tensors ({kind})")
        report.converted = report.converted or kind.endswith("segment-anything names")
        report.overridden += sum(1 for k in state if k in merged)
        merged.update(state)
    own = model.state_dict()
    label = sources[-1] if isinstance(sources[-1], str) else "<state dict>"
    mismatch = [(n, tuple(v.shape), tuple(own[n].shape)) for n, v in merged.items()
                if n in own and tuple(v.shape) != tuple(own[n].shape)]
    if mismatch:
        shown = "; ".join(f"{_shown_name(n)}: file {list(a)} vs model {list(b)}" for n, a, b in mismatch[:4])
        text, hint = _shape_hint(merged, model)
        raise CheckpointMismatchError(f"{label}: {len(mismatch)} tensors do not fit this SAM: {shown}{text}", hint=hint)
    report.unexpected = sorted(n for n in merged if n not in own)
    report.loaded = sorted(n for n in merged if n in own)
    report.missing = [n for n in own if n not in merged]
    trainable = trainable_names(model)
    report.missing_trainable = [n for n in report.missing if n in trainable]
    if strict and (report.unexpected or report.missing):
        problems = []
        if report.missing:
            counts = Counter(_part(n) for n in report.missing)
            problems.append(f"{len(report.missing)} model tensors not in the file(s) "
                            f"({', '.join(f'{p} {c}' for p, c in sorted(counts.items()))}; e.g. {report.missing[:3]})")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} file tensors not in the model (e.g. {report.unexpected[:3]})")
        hint = ("this looks like a decoder-only file: give the full SAM file as MODEL.SAM.BASE_CHECKPOINT"
                if report.missing and not base_path and all(_part(n) == "mask_decoder" for n in merged) else
                "pass strict=False to load the matching tensors only")
        raise CheckpointMismatchError(f"{label}: strict SAM load failed: " + "; ".join(problems), hint=hint)
    on_meta = any(v.is_meta for v in own.values())
    if on_meta and report.missing:
        raise CheckpointMismatchError(f"{label}: the model was built on the meta device and {len(report.missing)} "
                                      f"tensors are not in the file(s) (e.g. {report.missing[:3]}); they would have "
                                      f"no values", hint="build the model on a real device for a partial load")
    # a meta-built model (no memory allocated) takes the file's tensors as they are; re-tie the shared matrix
    usable = {n: merged[n].to(own[n].dtype) if on_meta else merged[n] for n in report.loaded}
    model.load_state_dict(usable, strict=False, assign=on_meta)
    if on_meta and hasattr(model, "tie_weights"):
        model.tie_weights()
    logger.info("Loaded SAM weights %s:\n%s", label, report.summary())
    return report


def save_sam_original(model: nn.Module, path: str) -> Dict[str, torch.Size]:
    """Write a `SamModel`'s weights in segment-anything names (the official checkpoints' key set),
    as a bare state dict, atomically.

    Args:
        model: the `SamModel` (or a DDP wrapper of one).
        path: output `.pth` file.

    Returns:
        name -> shape of what was written.
    """
    model = getattr(model, "module", model)
    state = hf_to_original_keys(model.state_dict())
    outside = [n for n in state if original_to_hf_name(n) is None]
    if outside:
        raise ValueError(f"save_sam_original({path}): {len(outside)} model tensors have no segment-anything name "
                         f"(e.g. {outside[:3]}); only plain SamModel weights can be exported")
    state = {n: v.detach().to("cpu").contiguous().clone() for n, v in state.items()}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return {n: v.shape for n, v in state.items()}
