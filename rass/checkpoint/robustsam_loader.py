"""Loading RobustSAM's released weights (`robustsam_checkpoint_{b,l,h}.pth`) into the project's SAM + the
robust decoder modules, strictly, with a report; writing a model back in the released format.

The released files are DDP `state_dict()`s of the segment-anything tree (`module.` prefix): SAM's tensors
in segment-anything names plus the added modules under `mask_decoder.<name>` (`ROBUST_MODULES`). Here
SAM's part goes through `load_sam_checkpoint` (renamed to transformers' names, strict), the rest into
`RobustDecoderAdditions` (strict: every tensor present, same shapes). A plain SAM file is not a
RobustSAM file: it loads as MODEL.SAM.CHECKPOINT, and the robust modules stay random (reported so).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from rass.utils.io import atomic_open

from .fit import CheckpointMismatchError
from .sam_keys import hf_to_original_keys, strip_module_prefix
from .sam_loader import SamLoadReport, load_sam_checkpoint, read_sam_state_dict

__all__ = ["ROBUST_MODULES", "RobustSamLoadReport", "split_robustsam_state_dict", "load_robustsam_checkpoint",
           "save_robustsam_release"]

logger = logging.getLogger(__name__)

# The modules RobustSAM adds to SAM's mask decoder (released names, under `mask_decoder.`).
ROBUST_MODULES = ("custom_robust_token", "robust_mlp", "fourier_mask_features", "fourier_first_layer_features",
                  "fourier_last_layer_features", "custom_token_block")
_PREFIX = "mask_decoder."


@dataclass
class RobustSamLoadReport:
    """What `load_robustsam_checkpoint` read: the file, SAM's report, the robust modules' tensor count."""

    source: str = ""
    sam: SamLoadReport = field(default_factory=SamLoadReport)
    robust_loaded: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines: the file, SAM's per-part counts, the robust modules' count."""
        return "\n".join([f"read {self.source}", self.sam.summary(),
                          f"  robust modules: {len(self.robust_loaded)} loaded, 0 missing, 0 unexpected"])


def split_robustsam_state_dict(state: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor],
                                                                             Dict[str, torch.Tensor]]:
    """(SAM's tensors, the robust modules' tensors) of a released state dict (`module.` stripped).

    Args:
        state: released names (optionally `module.`-prefixed) -> tensors.

    Returns:
        SAM's entries as named in the file, and the robust entries without `mask_decoder.`.
    """
    sam, robust = {}, {}
    for name, value in state.items():
        bare = strip_module_prefix(name)
        tail = bare[len(_PREFIX):] if bare.startswith(_PREFIX) else ""
        if tail.split(".", 1)[0] in ROBUST_MODULES:
            robust[tail] = value
        else:
            sam[bare] = value
    return sam, robust


def _load_robust(robust: nn.Module, state: Dict[str, torch.Tensor], label: str) -> List[str]:
    own = robust.state_dict()
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    mismatch = [(n, list(state[n].shape), list(own[n].shape)) for n in state
                if n in own and tuple(state[n].shape) != tuple(own[n].shape)]
    if mismatch:
        shown = "; ".join(f"{_PREFIX}{n}: file {a} vs model {b}" for n, a, b in mismatch[:3])
        raise CheckpointMismatchError(f"{label}: {len(mismatch)} RobustSAM tensors do not fit: {shown}",
                                      hint="set MODEL.SAM.VARIANT to the file's (robustsam_checkpoint_b/l/h = "
                                           "vit_b/vit_l/vit_h)")
    if missing or unexpected:
        raise CheckpointMismatchError(
            f"{label}: strict RobustSAM load failed: {len(missing)} robust tensors not in the file "
            f"(e.g. {[_PREFIX + n for n in missing[:3]]}), {len(unexpected)} not in the model "
            f"(e.g. {[_PREFIX + n for n in unexpected[:3]]})")
    on_meta = any(v.is_meta for v in own.values())
    robust.load_state_dict({n: v.to(own[n].dtype) for n, v in state.items()}, strict=True, assign=on_meta)
    return sorted(state)


def load_robustsam_checkpoint(sam: nn.Module, robust: nn.Module,
                              path: Union[str, Mapping[str, torch.Tensor]]) -> RobustSamLoadReport:
    """Load a released RobustSAM file into a `SamModel` and a `RobustDecoderAdditions`, strictly.

    Args:
        sam: the `SamModel` (variant of the file).
        robust: the `RobustDecoderAdditions` (same ViT width).
        path: `robustsam_checkpoint_{b,l,h}.pth` (with or without `module.`, bare or `{"model": ...}`), or a
            state dict already read.

    Returns:
        The report (also logged).

    Raises:
        CheckpointMismatchError: no robust modules in the file (a plain SAM file), or a tensor missing,
            unexpected or of another shape (named).
    """
    label = path if isinstance(path, str) else "<state dict>"
    raw = read_sam_state_dict(path, "MODEL.ROBUSTSAM.CHECKPOINT") if isinstance(path, str) else dict(path)
    sam_state, robust_state = split_robustsam_state_dict(raw)
    if not robust_state:
        raise CheckpointMismatchError(f"MODEL.ROBUSTSAM.CHECKPOINT: {label} holds no RobustSAM modules "
                                      f"({_PREFIX}custom_robust_token, ...): a plain SAM file?",
                                      hint="give a plain SAM file as MODEL.SAM.CHECKPOINT (the robust modules then "
                                           "start random, for training)")
    try:
        sam_report = load_sam_checkpoint(sam, sam_state, strict=True)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(e.message.replace("<state dict>", label), hint=e.hint) from None
    sam_report.sources = [f"{os.path.basename(label)}: {len(sam_state)} SAM tensors"]
    report = RobustSamLoadReport(source=f"{label} ({len(raw)} tensors)", sam=sam_report,
                                 robust_loaded=_load_robust(robust, robust_state, label))
    logger.info("Loaded RobustSAM weights:\n%s", report.summary())
    return report


def save_robustsam_release(sam: nn.Module, robust: nn.Module, path: str, module_prefix: bool = True) -> List[str]:
    """Write SAM + the robust modules in the released format (segment-anything names, robust modules under
    `mask_decoder.`, optionally the DDP `module.` prefix of the released files), atomically.

    Args:
        sam: the `SamModel`.
        robust: the `RobustDecoderAdditions`.
        path: output `.pth`.
        module_prefix: prefix every name with `module.` as the released files do.

    Returns:
        The names written.
    """
    state = hf_to_original_keys(getattr(sam, "module", sam).state_dict())
    state.update({_PREFIX + n: v for n, v in robust.state_dict().items()})
    prefix = "module." if module_prefix else ""
    state = {prefix + n: v.detach().to("cpu").contiguous().clone() for n, v in state.items()}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return list(state)
