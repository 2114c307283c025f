"""MGD-SAM2 weights: the released `model_epoch_*.pth` (a bare state dict in original SAM2 names, as
sevenshr/MGD-SAM2 `train.py` saves `model.state_dict()`) and the training initialisation from SAM 2.1
(`sam2.1_hiera_base_plus.pt`), each with a report.

Names: `MGD_SAM2_KEY_MAP` = SAM2's table (`rass.checkpoint.sam2_keys`) + the model-level prompt parts
(`pe_layer.positional_encoding_gaussian_matrix` <-> `pe_layer.shared_embedding.positional_embedding`,
`no_mask_embed`) and `detail_enhance.*`; MGD-SAM2's own decoder / trunk modules (`sam_mask_decoder.new_*`,
`image_encoder.trunk.mpadapter.*`) keep their tails.

- `load_mgd_sam2_checkpoint`: strict (every tensor, including the adapters the forward never calls).
- `release_names_pre_hook`: the same renaming inside `model.load_state_dict`, so MODEL.WEIGHTS takes the
  released file through the project's checkpointer; a SAM 2 file there is a one-line error.
- `init_mgd_sam2_from_sam2`: what the release's `strict=False` load does, made explicit: the report lists the
  parts that start random and the file entries ignored, each with its reason.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .fit import CheckpointMismatchError, grouped
from .sam2_keys import SAM2_IGNORED_PATTERNS, SAM2_KEY_TABLE, SAM2_PREFIXES, Sam2KeyMap, is_ignored_sam2_key
from .sam2_loader import MGD_SAM2_MARKERS, sam2_file_variant
from .sam_loader import read_sam_state_dict

__all__ = ["MGD_SAM2_KEY_MAP", "MgdSam2LoadReport", "MgdSam2InitReport", "load_mgd_sam2_checkpoint",
           "init_mgd_sam2_from_sam2", "release_names_pre_hook", "mgd_sam2_original_names", "is_sam2_file"]

logger = logging.getLogger(__name__)

MGD_SAM2_KEY_MAP = Sam2KeyMap(
    SAM2_KEY_TABLE + (("pe_layer.positional_encoding_gaussian_matrix",
                       "pe_layer.shared_embedding.positional_embedding"),
                      ("no_mask_embed.{p}", "no_mask_embed.{p}")),
    SAM2_PREFIXES + (("detail_enhance.", "detail_enhance."),))

# Model parts that a SAM 2.1 file does not initialise, with the reason (first matching pattern wins).
_RANDOM_REASONS: Tuple[Tuple[str, str], ...] = (
    (r"image_encoder\.trunk\.mpadapter\.", "MGD-SAM2's adapters (new)"),
    (r"mask_decoder\.new_", "MGD-SAM2's MCEM / HMIM (new)"),
    (r"detail_enhance\.", "MGD-SAM2's DRM (new)"),
    (r"no_mask_embed\.", "model-level no_mask_embed (SAM2 keeps it in sam_prompt_encoder, which is not read)"),
    (r"pe_layer\.", "model-level prompt PE (SAM2 keeps it in sam_prompt_encoder, which is not read)"),
    (r"mask_decoder\.pred_obj_score_head\.", "Linear object-score head (SAM 2.1 has a 3-layer MLP)"),
    (r"mask_decoder\.iou_prediction_head\.", "IoU head: the release drops 'iou_prediction_head' keys (2 outputs, "
                                             "SAM 2.1 has 4)"),
    (r"mask_decoder\.mask_tokens\.", "mask tokens: the release drops 'mask_tokens' keys (2 tokens, SAM 2.1 has 4)"),
)
# SAM 2.1 file entries that are not loaded, with the reason (first matching pattern wins).
_IGNORED_REASONS: Tuple[Tuple[str, str], ...] = (
    (r"sam_mask_decoder\.(iou_prediction_head|mask_tokens)", "dropped as the release drops them"),
    (r"sam_mask_decoder\.pred_obj_score_head\.layers\.", "SAM 2.1's MLP object-score head (MGD-SAM2: Linear)"),
    (r"sam_mask_decoder\.output_hypernetworks_mlps\.[2-9]", "hypernetwork MLPs of mask tokens 2-3 (MGD-SAM2 has 2)"),
    (r"sam_prompt_encoder\.", "prompt encoder (MGD-SAM2 has no prompts; its PE and no_mask_embed are model-level)"),
    (r"no_mem_embed\Z", "SAM2's no-memory embedding (the release adds a fresh zero instead)"),
    ("(?:" + "|".join(SAM2_IGNORED_PATTERNS) + r")\Z", "memory / object-pointer modules of the video model"),
    (r"", "not in MGD-SAM2"),
)


def _reason(name: str, table) -> str:
    return next(r for p, r in table if re.match(p, name))


def _by_reason(names, table) -> "OrderedDict[str, List[str]]":
    out: "OrderedDict[str, List[str]]" = OrderedDict((r, []) for _, r in table)
    for n in names:
        out[_reason(n, table)].append(n)
    return OrderedDict((r, ns) for r, ns in out.items() if ns)


def is_sam2_file(names) -> bool:
    """Whether original names are a SAM 2 / SAM 2.1 checkpoint (prompt encoder / memory tensors, no MGD-SAM2
    modules)."""
    names = list(names)
    sam2 = any(n.startswith("sam_prompt_encoder.") or n == "no_mem_embed" or is_ignored_sam2_key(n) for n in names)
    return sam2 and not any(MGD_SAM2_MARKERS.match(n) for n in names)


def _is_original(names) -> bool:
    return any(n.startswith("sam_mask_decoder.") or n == "pe_layer.positional_encoding_gaussian_matrix"
               for n in names)


def mgd_sam2_original_names(model: nn.Module) -> Dict[str, str]:
    """project name -> released (original) name of every state-dict entry of an `MgdSam2Model`."""
    model = getattr(model, "module", model)
    out = {}
    for name in model.state_dict():
        original = MGD_SAM2_KEY_MAP.to_original(name)
        if original is None:
            raise ValueError(f"MGD-SAM2 name map: no released name for {name!r}")
        out[name] = original
    return out


def _rename(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """(project-named entries, original names the map does not know)."""
    out, unknown = {}, []
    for name, value in state.items():
        target = MGD_SAM2_KEY_MAP.to_project(name)
        if target is None:
            unknown.append(name)
        else:
            out[target] = value
    return out, unknown


def _sam2_file_error(names, label: str, key: str) -> CheckpointMismatchError:
    shown = [n for n in names if n.startswith("sam_prompt_encoder.") or is_ignored_sam2_key(n)][:2]
    return CheckpointMismatchError(
        f"{key}: {label} is a SAM 2 / SAM 2.1 checkpoint (prompt encoder / memory tensors such as {shown}), not "
        "MGD-SAM2 weights",
        hint="give sam2.1_hiera_base_plus.pt as MODEL.MGD_SAM2.SAM2_INIT (training initialisation); MODEL.WEIGHTS "
             "takes an MGD-SAM2 model_epoch_*.pth or a checkpoint of this project")


def _shape_errors(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> List[Tuple[str, list, list]]:
    return [(n, list(v.shape), list(own[n].shape)) for n, v in state.items()
            if n in own and tuple(v.shape) != tuple(own[n].shape)]


def _model_size(model: nn.Module) -> str:
    v = getattr(model, "variant", None)
    if v is None:
        return "this MGD-SAM2"
    return f"{getattr(model, 'variant_name', 'custom')} (Hiera embed dim {v.embed_dim}, {v.depth} blocks)"


def _shape_error(raw: Mapping[str, torch.Tensor], mismatch, model: nn.Module, label: str, key: str,
                 what: str) -> CheckpointMismatchError:
    name, described = sam2_file_variant(raw)
    shown = "; ".join(f"{MGD_SAM2_KEY_MAP.to_original(n) or n}: file {a} vs model {b}" for n, a, b in mismatch[:3])
    hint = f"set MODEL.SAM2.VARIANT '{name}'" if name and name != getattr(model, "variant_name", None) else None
    return CheckpointMismatchError(f"{key}: {label} is {what} of SAM2 {described}, the model is MGD-SAM2 on SAM2 "
                                   f"{_model_size(model)}: {len(mismatch)} tensors differ in shape, e.g. {shown}",
                                   hint=hint)


def release_names_pre_hook(module: nn.Module, state_dict: Dict[str, torch.Tensor], prefix: str, local_metadata,
                           strict: bool, missing_keys, unexpected_keys, error_msgs) -> None:
    """`load_state_dict` pre-hook of `MgdSam2Model`: renames a released MGD-SAM2 state dict (original SAM2
    names) to the project's names in place, after checking the shapes; refuses a SAM 2 checkpoint.

    Raises:
        CheckpointMismatchError: a SAM 2 / 2.1 file, or released tensors of another shape (another size).
    """
    local = [k for k in state_dict if k.startswith(prefix)]
    names = [k[len(prefix):] for k in local]
    if is_sam2_file(names):
        raise _sam2_file_error(names, "the checkpoint", "MODEL.WEIGHTS")
    if not _is_original(names):
        return
    raw = {n: state_dict[k] for n, k in zip(names, local)}
    renamed = {}
    for n, k in zip(names, local):
        target = MGD_SAM2_KEY_MAP.to_project(n)
        renamed[prefix + (target or n)] = state_dict.pop(k)
    own = module.state_dict()
    mismatch = _shape_errors({k[len(prefix):]: v for k, v in renamed.items()}, own)
    if mismatch:
        raise _shape_error(raw, mismatch, module, "the checkpoint", "MODEL.WEIGHTS", "an MGD-SAM2 model")
    state_dict.update(renamed)
    logger.info("MGD-SAM2 weights in released (original SAM2) names: %d entries renamed", len(renamed))


@dataclass
class MgdSam2LoadReport:
    """What `load_mgd_sam2_checkpoint` did (project names; `unexpected` as the file spells them)."""

    source: str = ""
    converted: bool = False
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines: file, counts, anything missing / unexpected."""
        lines = [f"read {self.source}: {len(self.loaded)} MGD-SAM2 tensors loaded"
                 + (" (released names converted)" if self.converted else "")]
        if self.missing:
            lines.append(f"NOT FOUND in the file, kept as built: {len(self.missing)}: {grouped(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (not loaded) {len(self.unexpected)}: e.g. {self.unexpected[:3]}")
        return "\n".join(lines)


def _read(path: Union[str, Mapping[str, torch.Tensor]], key: str) -> Tuple[Dict[str, torch.Tensor], str]:
    if isinstance(path, str):
        return read_sam_state_dict(path, key), os.path.basename(path)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in path.items()}, "<state dict>"


def load_mgd_sam2_checkpoint(model: nn.Module, path: Union[str, Mapping[str, torch.Tensor]], strict: bool = True,
                             key: str = "MODEL.WEIGHTS") -> MgdSam2LoadReport:
    """Load MGD-SAM2 weights (released `model_epoch_*.pth` in original names, or project names) and report.

    Args:
        model: the `MgdSam2Model` (or a wrapper with `.module`); built on meta it takes the file's tensors.
        path: the file, or an already read state dict.
        strict: every model tensor must be in the file and every file tensor in the model (the released file
            has all of them, the adapters the forward never calls included); False lists them.
        key: the config key that gave the path (for messages).

    Returns:
        The `MgdSam2LoadReport` (also logged).

    Raises:
        CheckpointMismatchError: a SAM 2 file, another size, or (strict) missing / unknown tensors.
    """
    model = getattr(model, "module", model)
    raw, label = _read(path, key)
    if is_sam2_file(raw):
        raise _sam2_file_error(raw, label, key)
    report = MgdSam2LoadReport(source=label, converted=_is_original(raw))
    state, unknown = _rename(raw) if report.converted else (dict(raw), [])
    own = model.state_dict()
    mismatch = _shape_errors(state, own)
    if mismatch:
        raise _shape_error(raw, mismatch, model, label, key, "an MGD-SAM2 model")
    report.unexpected = sorted(unknown + [MGD_SAM2_KEY_MAP.to_original(n) or n for n in state if n not in own])
    report.loaded = [n for n in own if n in state]
    report.missing = [n for n in own if n not in state]
    if strict and (report.missing or report.unexpected):
        problems = []
        if report.missing:
            problems.append(f"{len(report.missing)} model tensors not in the file ({grouped(report.missing)}; e.g. "
                            f"{[MGD_SAM2_KEY_MAP.to_original(n) for n in report.missing[:3]]})")
        if report.unexpected:
            problems.append(f"{len(report.unexpected)} file tensors not in the model (e.g. {report.unexpected[:3]})")
        raise CheckpointMismatchError(f"{key}: {label}: strict MGD-SAM2 load failed: " + "; ".join(problems),
                                      hint="the file must be an MGD-SAM2 model_epoch_*.pth of the same SAM2 size")
    on_meta = any(v.is_meta for v in own.values())
    if on_meta and report.missing:
        raise CheckpointMismatchError(f"{key}: {label}: the model was built on the meta device and "
                                      f"{len(report.missing)} tensors are not in the file (e.g. {report.missing[:3]})")
    usable = {n: state[n].to(own[n].dtype) if on_meta else state[n] for n in report.loaded}
    model.load_state_dict(usable, strict=strict, assign=on_meta)
    logger.info("Loaded MGD-SAM2 weights %s:\n%s", label, report.summary())
    return report


@dataclass
class MgdSam2InitReport:
    """What `init_mgd_sam2_from_sam2` did.

    Attributes:
        source: the file's name.
        file_variant: the SAM2 size of the file.
        loaded: project names set from the file.
        random: reason -> project names that keep their random initialisation.
        ignored: reason -> file (original) names not loaded.
    """

    source: str = ""
    file_variant: Optional[str] = None
    loaded: List[str] = field(default_factory=list)
    random: "OrderedDict[str, List[str]]" = field(default_factory=OrderedDict)
    ignored: "OrderedDict[str, List[str]]" = field(default_factory=OrderedDict)

    def summary(self) -> str:
        """The counts, each random part and each ignored group of file entries with its reason."""
        lines = [f"initialised MGD-SAM2 from {self.source} (SAM2 {self.file_variant or 'of unknown size'}): "
                 f"{len(self.loaded)} tensors loaded ({grouped(self.loaded)})"]
        for reason, names in self.random.items():
            lines.append(f"RANDOM (not in the file): {reason}: {len(names)} tensors")
        for reason, names in self.ignored.items():
            lines.append(f"file entries ignored: {reason}: {len(names)} ({grouped(names)})")
        return "\n".join(lines)


def init_mgd_sam2_from_sam2(model: nn.Module, path: Union[str, Mapping[str, torch.Tensor]],
                            key: str = "MODEL.MGD_SAM2.SAM2_INIT") -> MgdSam2InitReport:
    """Initialise MGD-SAM2's SAM2 parts from a SAM 2.1 checkpoint, as the release does (its `train.py`: drop keys
    containing `iou_prediction_head` / `mask_tokens`, load the rest with `strict=False`), and say what stays random.

    Args:
        model: the `MgdSam2Model` (or a wrapper with `.module`), built with random weights (not on meta).
        path: `sam2.1_hiera_*.pt` (`{"model": state_dict}` in original names) or its state dict.
        key: the config key that gave the path (for messages).

    Returns:
        The `MgdSam2InitReport` (also logged).

    Raises:
        CheckpointMismatchError: an MGD-SAM2 file, a file without SAM2 tensors, or a SAM2 of another size
            (the file's size and the mismatching tensors are named).
    """
    model = getattr(model, "module", model)
    raw, label = _read(path, key)
    mgd = [n for n in raw if MGD_SAM2_MARKERS.match(n)]
    if mgd:
        raise CheckpointMismatchError(
            f"{key}: {label} is an MGD-SAM2 trained model (model_epoch_*.pth: {len(mgd)} MGD-SAM2 tensors such as "
            f"{mgd[:2]}), not a SAM 2 / SAM 2.1 checkpoint",
            hint="give it as MODEL.WEIGHTS; MODEL.MGD_SAM2.SAM2_INIT takes sam2.1_hiera_base_plus.pt")
    if not any(n.startswith(("sam_mask_decoder.", "image_encoder.trunk.")) for n in raw):
        raise CheckpointMismatchError(f"{key}: {label} has no SAM2 tensors in original names (e.g. "
                                      f"{sorted(raw)[:3]}); expected a sam2.1_hiera_*.pt file")
    report = MgdSam2InitReport(source=label, file_variant=sam2_file_variant(raw)[0])
    own = model.state_dict()
    usable, ignored = {}, []
    for name, value in raw.items():
        target = None if re.match(_IGNORED_REASONS[0][0], name) else MGD_SAM2_KEY_MAP.to_project(name)
        if name.startswith("sam_prompt_encoder.") or target not in own:
            ignored.append(name)
        else:
            usable[target] = value
    mismatch = _shape_errors(usable, own)
    if mismatch:
        raise _shape_error(raw, mismatch, model, label, key, "a SAM2 checkpoint")
    report.loaded = [n for n in own if n in usable]
    report.random = _by_reason([n for n in own if n not in usable], _RANDOM_REASONS + ((r"", "other"),))
    report.ignored = _by_reason(ignored, _IGNORED_REASONS)
    if any(v.is_meta for v in own.values()):
        raise CheckpointMismatchError(f"{key}: {label}: cannot initialise a model built on the meta device")
    model.load_state_dict(usable, strict=False)
    logger.info("MGD-SAM2 training initialisation:\n%s", report.summary())
    return report
