"""Loading released RASS weights (`rass.pth`) into the project's model.

Accepts a detectron2 checkpoint (`{"model": state_dict, ...}`) or a bare state dict, with or
without the frozen parts (VAE, text encoder, UNet base, taggers), in either library era's names.
Names are converted with `release_to_project_keys`; entries the project does not keep are
dropped; everything not found in the file is reported (grouped by sub-module) and keeps its
current value (e.g. Stable Diffusion weights loaded from MODEL.RASS.SD_PATH).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .release_keys import is_release_format, release_to_project_keys

__all__ = ["LoadReport", "convert_release_state_dict", "load_weights", "ReleaseFormatMixin", "model_tagger_name"]

logger = logging.getLogger(__name__)


def _group(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "backbone" and len(parts) > 1 else parts[0]


def _grouped(names: List[str]) -> str:
    counts = Counter(_group(n) for n in names)
    return ", ".join(f"{g} ({c})" for g, c in sorted(counts.items()))


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded."""

    converted: bool = False
    loaded: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable summary grouped by sub-module."""
        lines = [f"loaded {len(self.loaded)} entries" + (" (release names converted)" if self.converted else "")]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} release entries the project does not keep: {_grouped(self.dropped)}")
        if self.missing:
            lines.append(f"NOT FOUND in the checkpoint, kept as built: {len(self.missing)} entries: {_grouped(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (ignored) {len(self.unexpected)} entries: {_grouped(self.unexpected)}; "
                         f"e.g. {self.unexpected[:3]}")
        for name, got, want in self.shape_mismatch[:10]:
            lines.append(f"shape mismatch (skipped) {name}: checkpoint {got}, model {want}")
        return "\n".join(lines)


def model_tagger_name(model: nn.Module) -> str:
    """The project tagger name of a model (its backbone's `tagger_name`), default "ram"."""
    model = getattr(model, "module", model)
    return getattr(getattr(model, "backbone", None), "tagger_name", "ram")


def convert_release_state_dict(state_dict: Mapping[str, torch.Tensor], tagger: str = "ram"
                               ) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Rename a release state dict to project names.

    Args:
        state_dict: release (or project) names -> tensors.
        tagger: the project's tagger name (see `release_to_project_keys`).

    Returns:
        (converted state dict, names dropped).
    """
    mapping = release_to_project_keys(state_dict.keys(), tagger=tagger)
    out, dropped = {}, []
    for name, value in state_dict.items():
        target = mapping[name]
        if target is None:
            dropped.append(name)
        else:
            out[target] = value
    return out, dropped


def _unwrap_checkpoint(obj: object, source: str) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{source}: expected a state dict or a detectron2 checkpoint {{'model': state_dict, ...}}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_weights(model: nn.Module, checkpoint: str | Mapping, tagger: Optional[str] = None) -> LoadReport:
    """Load a released or project checkpoint into `model` (non-strict) and report.

    Args:
        model: the RASS model (MaskFormer-style: `backbone`, `sem_seg_head`, `criterion`).
        checkpoint: a file path (`rass.pth`, `model_final.pth`) or an already loaded object.
        tagger: the project's tagger name (default: the model's).

    Returns:
        The `LoadReport` (also logged).
    """
    source = checkpoint if isinstance(checkpoint, str) else "<checkpoint>"
    if isinstance(checkpoint, str):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint} (expected rass.pth or a detectron2 .pth)")
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = _unwrap_checkpoint(checkpoint, source)
    report = LoadReport()
    if is_release_format(state):
        state, report.dropped = convert_release_state_dict(state, tagger or model_tagger_name(model))
        report.converted = True
    own = model.state_dict()
    usable = {}
    for name, value in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif tuple(value.shape) != tuple(own[name].shape):
            report.shape_mismatch.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    model.load_state_dict(usable, strict=False)
    report.loaded = sorted(usable)
    report.missing = [n for n in own if n not in usable]
    logger.info("Loaded %s:\n%s", source, report.summary())
    return report


class ReleaseFormatMixin:
    """Mixin for a detectron2 `DetectionCheckpointer`: converts release names before loading and
    logs a grouped summary of what was not found.

    Use as `class C(ReleaseFormatMixin, DetectionCheckpointer)`; the converted report is kept in
    `self.last_release_report`.
    """

    last_release_report: Optional[LoadReport] = None

    def _load_model(self, checkpoint: dict):
        state = checkpoint.get("model", {})
        self.last_release_report = None
        stripped = _unwrap_checkpoint(state, "checkpoint") if isinstance(state, Mapping) else {}
        if is_release_format(stripped):
            converted, dropped = convert_release_state_dict(stripped, model_tagger_name(self.model))
            checkpoint["model"] = converted
            self.last_release_report = LoadReport(converted=True, dropped=dropped)
            logging.getLogger(__name__).info(
                "Release checkpoint: %d names converted, %d dropped (%s)", len(converted), len(dropped),
                _grouped(dropped) if dropped else "none")
        incompatible = super()._load_model(checkpoint)
        if self.last_release_report is not None:
            self.last_release_report.missing = list(incompatible.missing_keys)
            self.last_release_report.unexpected = list(incompatible.unexpected_keys)
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        """Long lists (e.g. a checkpoint without the frozen Stable Diffusion parts) are summarised by
        sub-module; short ones are logged by detectron2 as usual."""
        if len(incompatible.missing_keys) + len(incompatible.unexpected_keys) <= 50:
            return super()._log_incompatible_keys(incompatible)
        log = logging.getLogger(__name__)
        if incompatible.missing_keys:
            log.warning("Not found in the checkpoint (kept as built): %d entries: %s",
                        len(incompatible.missing_keys), _grouped(list(incompatible.missing_keys)))
        if incompatible.unexpected_keys:
            log.warning("Unexpected entries in the checkpoint (ignored): %d: %s",
                        len(incompatible.unexpected_keys), _grouped(list(incompatible.unexpected_keys)))
        for name, got, want in incompatible.incorrect_shapes:
            log.warning("Skipped %s: checkpoint shape %s, model shape %s", name, tuple(got), tuple(want))
