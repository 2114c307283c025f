"""Loading released RASS weights (`rass.pth`) into the project's model.

Accepts a detectron2 checkpoint (`{"model": state_dict, ...}`) or a bare state dict, with or
without the frozen parts (VAE, text encoder, UNet base, taggers), in either library era's names.
Names are converted with `release_to_project_keys`; entries the project does not keep are
dropped; everything not found in the file is reported (grouped by sub-module) and keeps its
current value (e.g. Stable Diffusion weights loaded from MODEL.RASS.SD_PATH). Trainable
parameters missing from the file are an error unless partial loading is allowed (`rass.checkpoint.fit`).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .files import CheckpointFileError, read_checkpoint_file
from .fit import LoadReport, check_fit, fill_load_report, grouped
from .release_keys import is_release_format, release_to_project_keys

__all__ = ["LoadReport", "convert_release_state_dict", "load_weights", "ReleaseFormatMixin", "model_tagger_name"]

logger = logging.getLogger(__name__)


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
        raise CheckpointFileError(f"{source}: holds {type(obj).__name__}, expected a state dict (name -> tensor) "
                                  "or a detectron2 checkpoint {'model': state_dict, ...}")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_weights(model: nn.Module, checkpoint: str | Mapping, tagger: Optional[str] = None,
                 allow_partial: bool = False) -> LoadReport:
    """Load a released or project checkpoint into `model` and report.

    Frozen entries missing from the file keep their values; missing trainable parameters or
    shape mismatches raise `CheckpointMismatchError` unless `allow_partial`.

    Args:
        model: the RASS model (MaskFormer-style: `backbone`, `sem_seg_head`, `criterion`).
        checkpoint: a file path (`rass.pth`, `model_final.pth`) or an already loaded object.
        tagger: the project's tagger name (default: the model's).
        allow_partial: load whatever fits (at least one entry) and only report the rest.

    Returns:
        The `LoadReport` (also logged).
    """
    source = checkpoint if isinstance(checkpoint, str) else "<checkpoint>"
    if isinstance(checkpoint, str):
        checkpoint = read_checkpoint_file(checkpoint, key="checkpoint")
    state = _unwrap_checkpoint(checkpoint, source)
    report = LoadReport()
    if is_release_format(state):
        state, report.dropped = convert_release_state_dict(state, tagger or model_tagger_name(model))
        report.converted = True
    own = model.state_dict()
    usable, bad_shape, unexpected = {}, [], []
    for name, value in state.items():
        if name not in own:
            unexpected.append(name)
        elif tuple(value.shape) != tuple(own[name].shape):
            bad_shape.append((name, tuple(value.shape), tuple(own[name].shape)))
        else:
            usable[name] = value
    missing = [n for n in own if n not in usable]
    fill_load_report(report, model, missing, unexpected, bad_shape)
    check_fit(report, source, allow_partial=allow_partial)
    model.load_state_dict(usable, strict=False)
    logger.info("Loaded %s:\n%s", source, report.summary())
    return report


class ReleaseFormatMixin:
    """Mixin for a detectron2 `DetectionCheckpointer`: converts release names before loading.

    Use as `class C(ReleaseFormatMixin, DetectionCheckpointer)`; after loading a release-format
    file, `self.last_release_report` is a `LoadReport` with `converted=True` and the dropped names
    (its other fields are filled by `RASSCheckpointer`), else None.
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
                grouped(dropped) if dropped else "none")
        return super()._load_model(checkpoint)
