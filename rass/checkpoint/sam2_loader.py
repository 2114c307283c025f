"""Loading the official SAM 2 / SAM 2.1 weights (`sam2.1_hiera_{tiny,small,base_plus,large}.pt`, i.e.
`{"model": state_dict}` in facebookresearch/sam2 names) into the project's `Sam2ImageModel`, with a report.

Rules: read with `torch.load(weights_only=True)` (or `.safetensors`); the memory (video) modules the image model
leaves out are ignored by name (`SAM2_IGNORED_PATTERNS`) and listed in the report, never dropped silently; every
other tensor is renamed (`rass.checkpoint.sam2_keys`) and loaded strictly: a tensor of another shape is an error
naming the SAM2 size the file's shapes imply and the first mismatching tensors; missing or unknown tensors are
errors (with `strict=False`, only listed). An MGD-SAM2 trained model (`model_epoch_*.pth`, a bare state dict with
`detail_enhance.*` / `sam_mask_decoder.new_*` tensors) given as a SAM2 file is an error saying so.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from rass.utils.io import atomic_open

from .fit import CheckpointMismatchError, LoadReport, grouped, trainable_names
from .sam2_keys import is_ignored_sam2_key, original_to_project_keys, project_to_original, project_to_original_keys
from .sam_loader import read_sam_state_dict

__all__ = ["Sam2LoadReport", "load_sam2_checkpoint", "save_sam2_original", "sam2_file_variant", "MGD_SAM2_MARKERS"]

logger = logging.getLogger(__name__)

# Name patterns only an MGD-SAM2 trained model has (its `model_epoch_*.pth`).
MGD_SAM2_MARKERS = re.compile(r"(detail_enhance\.|sam_mask_decoder\.new_|image_encoder\.trunk\.mpadapter\.)")
_PROJECT_PREFIXES = ("mask_decoder.", "prompt_encoder.", "no_memory_embedding")
_SAM1_PREFIXES = ("image_encoder.blocks.", "image_encoder.patch_embed.", "prompt_encoder.pe_layer.",
                  "mask_decoder.output_upscaling.", "vision_encoder.")


@dataclass
class Sam2LoadReport(LoadReport):
    """What `load_sam2_checkpoint` did. `dropped`: the file's memory-module tensors, ignored on purpose
    (original names); `loaded` / `missing` / `unexpected`: project names (unexpected: as the file spells them)."""

    source: str = ""
    file_variant: Optional[str] = None

    def summary(self) -> str:
        """A few lines: the file, loaded count, the ignored memory modules, any missing / unexpected."""
        size = self.file_variant or "of unknown size"
        lines = [f"read {self.source} (SAM2 {size}): {len(self.loaded)} tensors loaded"]
        if self.dropped:
            lines.append(f"ignored on purpose (memory modules of the video model): {len(self.dropped)} tensors: "
                         f"{grouped(self.dropped)}")
        if self.missing:
            lines.append(f"NOT FOUND in the file, kept as built: {len(self.missing)}: {grouped(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (not loaded) {len(self.unexpected)}: e.g. {self.unexpected[:3]}")
        return "\n".join(lines)


def _block_count(names, prefix: str) -> int:
    idx = [int(m.group(1)) for n in names for m in [re.match(re.escape(prefix) + r"(\d+)\.", n)] if m]
    return max(idx) + 1 if idx else 0


def sam2_file_variant(state: Mapping[str, torch.Tensor]) -> Tuple[Optional[str], str]:
    """The SAM2 size a state dict in original names implies: (`SAM2_VARIANTS` name or None, description such as
    "base_plus (Hiera embed dim 112, 24 blocks)")."""
    from rass.modeling.sam2 import SAM2_VARIANTS

    proj = state.get("image_encoder.trunk.patch_embed.proj.weight")
    if proj is None or proj.dim() != 4:
        return None, "no SAM2 image encoder"
    dim, depth = int(proj.shape[0]), _block_count(state, "image_encoder.trunk.blocks.")
    name = next((n for n, v in SAM2_VARIANTS.items() if v.embed_dim == dim and v.depth == depth), None)
    return name, f"{name or 'an unknown SAM2 size'} (Hiera embed dim {dim}, {depth} blocks)"


def _model_description(model: nn.Module) -> str:
    v = model.variant
    return f"{model.variant_name} (Hiera embed dim {v.embed_dim}, {v.depth} blocks)"


def load_sam2_checkpoint(model: nn.Module, path: Union[str, Mapping[str, torch.Tensor]], strict: bool = True,
                         key: str = "MODEL.SAM2.CHECKPOINT") -> Sam2LoadReport:
    """Load SAM2 weights (original or project names) into a `Sam2ImageModel`, and report.

    Args:
        model: the `Sam2ImageModel` (or a wrapper with `.module`). Built on the meta device, it takes the file's
            tensors as they are (then every tensor must be in the file).
        path: the weight file, or an already read state dict.
        strict: raise when a model tensor is not in the file or a file tensor (other than the ignored memory
            modules) is not in the model; False lists them in the report.
        key: the config key that gave the path (for messages).

    Returns:
        The `Sam2LoadReport` (also logged).

    Raises:
        CheckpointMismatchError: an MGD-SAM2 file, tensors of another shape (another SAM2 size), or with
            `strict`, missing / unknown tensors.
        CheckpointFileError, FileNotFoundError: the file cannot be read (see `read_sam_state_dict`).
    """
    model = getattr(model, "module", model)
    raw = read_sam_state_dict(path, key) if isinstance(path, str) else dict(path)
    label = path if isinstance(path, str) else "<state dict>"
    mgd = [n for n in raw if MGD_SAM2_MARKERS.match(n)]
    if mgd:
        raise CheckpointMismatchError(
            f"{key}: {label} is an MGD-SAM2 trained model (model_epoch_*.pth: {len(mgd)} MGD-SAM2 tensors such as "
            f"{mgd[:2]}), not a SAM 2 / SAM 2.1 checkpoint",
            hint="give a sam2.1_hiera_*.pt file here; MGD-SAM2 files load into the MGD-SAM2 model")
    report = Sam2LoadReport(source=os.path.basename(label))
    original = any(n.startswith(("sam_mask_decoder.", "sam_prompt_encoder.")) or n == "no_mem_embed" for n in raw)
    if not original and any(n.startswith(_PROJECT_PREFIXES) for n in raw):  # project names (or a SAM v1 file)
        state, unknown = dict(raw), []
        report.file_variant = model.variant_name if "image_encoder.trunk.patch_embed.projection.weight" in raw else None
    else:
        report.dropped = sorted(n for n in raw if is_ignored_sam2_key(n))
        state, unknown = original_to_project_keys({n: v for n, v in raw.items() if not is_ignored_sam2_key(n)})
        report.file_variant, _ = sam2_file_variant(raw)
        report.converted = True
    own = model.state_dict()
    mismatch = [(n, tuple(v.shape), tuple(own[n].shape)) for n, v in state.items()
                if n in own and tuple(v.shape) != tuple(own[n].shape)]
    if mismatch:
        name, described = sam2_file_variant(raw) if report.converted else (None, "another SAM2 size")
        shown = "; ".join(f"{project_to_original(n) or n}: file {list(a)} vs model {list(b)}"
                          for n, a, b in mismatch[:3])
        hint = f"set MODEL.SAM2.VARIANT '{name}'" if name and name != model.variant_name else None
        raise CheckpointMismatchError(f"{key}: {label} is SAM2 {described}, the model is SAM2 "
                                      f"{_model_description(model)}: {len(mismatch)} tensors differ in shape, e.g. "
                                      f"{shown}", hint=hint)
    report.unexpected = sorted(unknown + [project_to_original(n) or n for n in state if n not in own])
    report.loaded = sorted(n for n in state if n in own)
    report.missing = [n for n in own if n not in state]
    trainable = trainable_names(model)
    report.missing_trainable = [n for n in report.missing if n in trainable]
    if strict and (report.missing or report.unexpected):
        problems = []
        if report.missing:
            problems.append(f"{len(report.missing)} model tensors not in the file ({grouped(report.missing)}; e.g. "
                            f"{[project_to_original(n) or n for n in report.missing[:3]]})")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} file tensors not in the model (e.g. {report.unexpected[:3]})")
        sam1 = any(n.startswith(_SAM1_PREFIXES) for n in raw)
        hint = ("this looks like a SAM (v1) file: use META_ARCHITECTURE 'PromptableSAM' with MODEL.SAM.CHECKPOINT"
                if sam1 else "pass strict=False to load the matching tensors only")
        raise CheckpointMismatchError(f"{key}: {label}: strict SAM2 load failed: " + "; ".join(problems), hint=hint)
    on_meta = any(v.is_meta for v in own.values())
    if on_meta and report.missing:
        raise CheckpointMismatchError(f"{key}: {label}: the model was built on the meta device and "
                                      f"{len(report.missing)} tensors are not in the file (e.g. {report.missing[:3]})",
                                      hint="build the model on a real device for a partial load")
    usable = {n: state[n].to(own[n].dtype) if on_meta else state[n] for n in report.loaded}
    model.load_state_dict(usable, strict=strict, assign=on_meta)
    logger.info("Loaded SAM2 weights %s:\n%s", label, report.summary())
    return report


def save_sam2_original(model: nn.Module, path: str, extra: Optional[Dict[str, torch.Tensor]] = None) -> List[str]:
    """Write a `Sam2ImageModel`'s weights in original SAM2 names as `{"model": state_dict}`, atomically.

    Args:
        model: the `Sam2ImageModel` (or a wrapper with `.module`).
        path: output `.pt` file.
        extra: more entries written as given (e.g. memory-module tensors of a full SAM2 file).

    Returns:
        The names written.
    """
    model = getattr(model, "module", model)
    state, unknown = project_to_original_keys(model.state_dict())
    if unknown:
        raise ValueError(f"save_sam2_original({path}): {len(unknown)} model tensors have no SAM2 name (e.g. "
                         f"{unknown[:3]})")
    state = {n: v.detach().to("cpu").contiguous().clone() for n, v in state.items()}
    state.update(extra or {})
    with atomic_open(path, "wb") as f:
        torch.save({"model": state}, f)
    return sorted(state)
