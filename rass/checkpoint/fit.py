"""Does a checkpoint fit the model? Counting what was loaded, and refusing weights that leave the
model's trainable parameters unloaded.

A checkpoint *fits* when every trainable parameter (``requires_grad``) of the model was found in it
with the model's shape. Frozen parts missing from it are normal (a released `rass.pth` without the
Stable Diffusion / RAM weights, which come from MODEL.RASS.SD_PATH and the tagger paths) and are
reported in one line. Anything else is an error unless partial loading was asked for
(MODEL.WEIGHTS_ALLOW_PARTIAL, e.g. to fine-tune with another head), because evaluating or resuming
with randomly initialised trainable parts gives numbers that mean nothing.

ImageNet-style initialisation files (detectron2's "matching heuristics" formats: torchvision / Caffe2
/ pycls `.pkl`, as in `detectron2://ImageNetPretrained/...`) only hold a backbone; when training is
initialised from one, it only has to fill (part of) the backbone.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, List, Sequence, Set, Tuple

from torch import nn

from rass.utils.errors import UserError

__all__ = ["CheckpointMismatchError", "LoadReport", "trainable_names", "fill_load_report", "check_fit", "fit_counts",
           "partial_warning", "grouped"]

_SHOWN = 5
_PARTIAL_KEY = "MODEL.WEIGHTS_ALLOW_PARTIAL"


def _group(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "backbone" and len(parts) > 1 else parts[0]


def grouped(names: Iterable[str]) -> str:
    """Counts of names per sub-module, e.g. "backbone.vae (120), sem_seg_head (40)"."""
    counts = Counter(_group(n) for n in names)
    return ", ".join(f"{g} ({c})" for g, c in sorted(counts.items()))


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded.

    Attributes:
        converted: release names were converted (`release_to_project_keys`).
        loaded: model entries set from the checkpoint.
        dropped: release entries the project does not keep.
        missing: model entries not in the checkpoint (kept as built); shape-mismatched ones excluded.
        missing_trainable: the part of `missing` that requires gradients.
        unexpected: checkpoint entries the model does not have (ignored).
        shape_mismatch: (name, checkpoint shape, model shape) of entries skipped for their shape.
    """

    converted: bool = False
    loaded: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    missing_trainable: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable summary grouped by sub-module."""
        lines = [f"loaded {len(self.loaded)} entries" + (" (release names converted)" if self.converted else "")]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} release entries the project does not keep: {grouped(self.dropped)}")
        if self.missing:
            lines.append(f"NOT FOUND in the checkpoint, kept as built: {len(self.missing)} entries "
                         f"({len(self.missing_trainable)} trainable): {grouped(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (ignored) {len(self.unexpected)} entries: {grouped(self.unexpected)}; "
                         f"e.g. {self.unexpected[:3]}")
        for name, got, want in self.shape_mismatch[:10]:
            lines.append(f"shape mismatch (skipped) {name}: checkpoint {got}, model {want}")
        return "\n".join(lines)


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint that does not fit the model (trainable parameters missing or of another shape).

    Args:
        message: counts and example names.
        hint: how to fix it or opt into partial loading.
    """


def trainable_names(model: nn.Module) -> Set[str]:
    """State-dict names of the parameters that require gradients (tied copies included)."""
    model = getattr(model, "module", model)
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def fill_load_report(report: LoadReport, model: nn.Module, missing: Iterable[str], unexpected: Iterable[str],
                     incorrect_shapes: Iterable[Sequence]) -> LoadReport:
    """Complete `report` from the result of a non-strict load into `model`.

    Args:
        report: the report to fill (conversion fields may already be set).
        model: the model that was loaded into.
        missing: model entries not set from the checkpoint (shape-mismatched ones included or not).
        unexpected: checkpoint entries the model does not have.
        incorrect_shapes: (name, checkpoint shape, model shape) of entries skipped for their shape.

    Returns:
        `report`, with loaded / missing / missing_trainable / unexpected / shape_mismatch set
        (`missing` excludes the shape-mismatched names, which are listed apart).
    """
    model = getattr(model, "module", model)
    own = list(model.state_dict())
    report.shape_mismatch = [(n, tuple(a), tuple(b)) for n, a, b in incorrect_shapes]
    bad_shape = {n for n, _, _ in report.shape_mismatch}
    missing_all = set(missing) | bad_shape
    report.missing = [n for n in own if n in missing_all and n not in bad_shape]  # in the model's order
    trainable = trainable_names(model)
    report.missing_trainable = [n for n in report.missing if n in trainable]
    report.unexpected = list(unexpected)
    report.loaded = [n for n in own if n not in missing_all]
    return report


def fit_counts(report: LoadReport) -> str:
    """One line: loaded / missing trainable / missing frozen / unexpected / shape-mismatched counts."""
    frozen = len(report.missing) - len(report.missing_trainable)
    return (f"loaded {len(report.loaded)}, missing trainable {len(report.missing_trainable)}, "
            f"missing frozen {frozen}, unexpected {len(report.unexpected)}, "
            f"shape-mismatched {len(report.shape_mismatch)}")


def _examples(names: List[str]) -> str:
    shown = ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")
    return f"{shown} [by part: {grouped(names)}]"


def _details(report: LoadReport) -> List[str]:
    lines = []
    if report.missing_trainable:
        lines.append(f"  missing trainable ({len(report.missing_trainable)}): {_examples(report.missing_trainable)}")
    if report.shape_mismatch:
        shown = "; ".join(f"{n}: checkpoint {list(a)} vs model {list(b)}" for n, a, b in report.shape_mismatch[:_SHOWN])
        more = ", ..." if len(report.shape_mismatch) > _SHOWN else ""
        lines.append(f"  shape-mismatched ({len(report.shape_mismatch)}): {shown}{more}")
    if report.unexpected:
        lines.append(f"  unexpected ({len(report.unexpected)}): {_examples(report.unexpected)}")
    return lines


def check_fit(report: LoadReport, source: str, allow_partial: bool = False, backbone_init: bool = False) -> bool:
    """Raise `CheckpointMismatchError` when the checkpoint leaves trainable parameters unloaded.

    Args:
        report: a filled `LoadReport` (see `fill_load_report`).
        source: the checkpoint's path (for the message).
        allow_partial: accept any checkpoint that loads at least one entry (MODEL.WEIGHTS_ALLOW_PARTIAL).
        backbone_init: the file is an ImageNet-style backbone initialisation (matching heuristics,
            training only): it must fill part of `backbone.*` (the rest, e.g. FPN layers and the
            head, is trained from scratch) and nothing may have another shape.

    Returns:
        True if the checkpoint fits completely, False if it was accepted as partial.
    """
    complete = not report.missing_trainable and not report.shape_mismatch
    if backbone_init:
        fits = any(n.startswith("backbone.") for n in report.loaded) and not report.shape_mismatch
    else:
        fits = complete
    if report.loaded and (fits or allow_partial):
        return complete
    what = "no entry of it fits the model" if not report.loaded else "it does not fit the model"
    message = "\n".join([f"checkpoint {source}: {what} ({fit_counts(report)})", *_details(report)])
    hint = ("use the checkpoint trained with this --config-file and these MODEL.* overrides"
            + ("" if allow_partial or not report.loaded else
               f"; to load only the matching entries (e.g. fine-tuning with another head or NUM_CLASSES) "
               f"set {_PARTIAL_KEY} True"))
    raise CheckpointMismatchError(message, hint=hint)


def partial_warning(report: LoadReport, source: str) -> str:
    """The warning logged when a checkpoint was accepted as partial (MODEL.WEIGHTS_ALLOW_PARTIAL)."""
    return "\n".join([f"checkpoint {source} loaded PARTIALLY ({_PARTIAL_KEY} is True): {fit_counts(report)}; "
                      "the entries not loaded keep their initial values", *_details(report)])
