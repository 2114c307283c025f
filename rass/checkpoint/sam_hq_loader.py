"""Loading the released HQ-SAM weights (`sam_hq_vit_{b,l,h}.pth`) into transformers' `SamHQModel`, strictly,
with a report; writing a model back in the released format.

The released files are SAM's checkpoint with the HQ modules merged in as `mask_decoder.<name>` (sam-hq
`train/train.py`), in segment-anything names (optionally `module.`-prefixed, bare or `{"model": ...}`). They are
renamed with `rass.checkpoint.sam_hq_keys` (SAM's table + the HQ rules) and loaded by `load_sam_checkpoint`
(one loader: the same shape check with the "set MODEL.SAM.VARIANT" hint, the same report, meta-device loading).
Files already in `SamHQModel` names load too. A plain SAM file (no HQ module) is refused with a hint: it is
MODEL.SAM.CHECKPOINT (`load_sam_into_hq`: SAM's tensors strictly, the HQ modules stay as built, for training).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Union

import torch
from torch import nn

from rass.utils.io import atomic_open

from .fit import CheckpointMismatchError
from .sam_hq_keys import (
    HQ_HF_MODULES, HQ_ORIGINAL_MODULES, hf_to_original_hq_keys, is_hq_original_name, original_to_hf_hq_keys,
)
from .sam_keys import strip_module_prefix
from .sam_loader import SamLoadReport, load_sam_checkpoint, read_sam_state_dict

__all__ = ["HQ_KEY", "load_sam_hq_checkpoint", "load_sam_into_hq", "save_sam_hq_release"]

logger = logging.getLogger(__name__)

HQ_KEY = "MODEL.SAM_HQ.CHECKPOINT"


def _is_hq_hf(name: str) -> bool:
    """Whether a `SamHQModel` name belongs to an HQ module."""
    parts = name.split(".")
    return len(parts) > 1 and parts[0] == "mask_decoder" and parts[1] in HQ_HF_MODULES


def _read(path: Union[str, Mapping[str, torch.Tensor]], key: str) -> Dict[str, torch.Tensor]:
    if isinstance(path, str):
        return read_sam_state_dict(path, key)
    return {strip_module_prefix(k): v for k, v in path.items()}


def _relabel(e: CheckpointMismatchError, label: str) -> CheckpointMismatchError:
    return CheckpointMismatchError(e.message.replace("<state dict>", label), hint=e.hint)


def load_sam_hq_checkpoint(model: nn.Module, path: Union[str, Mapping[str, torch.Tensor]],
                           strict: bool = True) -> SamLoadReport:
    """Load a released HQ-SAM file (or a state dict in released or `SamHQModel` names) into a `SamHQModel`.

    Args:
        model: the `SamHQModel` (of the file's variant; meta-built models take the file's tensors).
        path: `sam_hq_vit_{b,l,h}.pth`, or a state dict already read.
        strict: every model tensor must be in the file and every file tensor in the model.

    Returns:
        The `SamLoadReport` (also logged).

    Raises:
        CheckpointMismatchError: a plain SAM file (no HQ module), a tensor of another shape (with the variant the
            file's shapes imply), or (strict) tensors missing / unexpected — each named.
    """
    label = path if isinstance(path, str) else "<state dict>"
    raw = _read(path, HQ_KEY)
    hf_named = any(k.startswith("vision_encoder.") or _is_hq_hf(k) for k in raw)
    if not hf_named and not any(is_hq_original_name(k) for k in raw):
        raise CheckpointMismatchError(f"{HQ_KEY}: {label} holds no HQ-SAM modules (mask_decoder."
                                      f"{'/'.join(HQ_ORIGINAL_MODULES)}): a plain SAM file?",
                                      hint="give a plain SAM file as MODEL.SAM.CHECKPOINT (the HQ modules then stay "
                                           "random, for training), or the released sam_hq_vit_{b,l,h}.pth here")
    state = raw if hf_named else original_to_hf_hq_keys(raw)
    try:
        report = load_sam_checkpoint(model, state, strict=strict)
    except CheckpointMismatchError as e:
        raise _relabel(e, label) from None
    report.sources = [f"{label}: {len(raw)} tensors (HQ-SAM, {'SamHQModel' if hf_named else 'sam-hq'} names)"]
    logger.info("Loaded HQ-SAM weights:\n%s", report.summary())
    return report


def load_sam_into_hq(model: nn.Module, path: str, base_path: str = "") -> SamLoadReport:
    """Load a plain SAM file (MODEL.SAM.CHECKPOINT, e.g. `sam_vit_l_0b3195.pth`) into a `SamHQModel`: every SAM
    tensor strictly, the HQ modules kept as built (random).

    Args:
        model: the `SamHQModel`.
        path: the SAM file; base_path: a full SAM file loaded first for a decoder-only `path`.

    Returns:
        The report (the HQ modules listed as missing).
    """
    report = load_sam_checkpoint(model, path, base_path=base_path, strict=False)
    other = [n for n in report.missing if not (n.startswith("mask_decoder.") and n.split(".")[1] in HQ_HF_MODULES)]
    if other or report.unexpected:
        raise CheckpointMismatchError(f"MODEL.SAM.CHECKPOINT: {path}: not a plain SAM file for this HQ-SAM: "
                                      f"{len(other)} SAM tensors missing (e.g. {other[:3]}), {len(report.unexpected)} "
                                      f"unexpected (e.g. {report.unexpected[:3]})",
                                      hint=f"a released HQ-SAM file goes to {HQ_KEY}")
    return report


def save_sam_hq_release(model: nn.Module, path: str) -> List[str]:
    """Write a `SamHQModel` in the released format (sam-hq names, a bare state dict), atomically.

    Args:
        model: the `SamHQModel` (or a DDP wrapper of one).
        path: output `.pth`.

    Returns:
        The names written.
    """
    model = getattr(model, "module", model)
    state = hf_to_original_hq_keys(model.state_dict())
    outside = [n for n in state if n.startswith(("vision_encoder.", "shared_image_embedding.")) or _is_hq_hf(n)]
    if outside:
        raise ValueError(f"save_sam_hq_release({path}): {len(outside)} tensors have no released name "
                         f"(e.g. {outside[:3]})")
    state = {n: v.detach().to("cpu").contiguous().clone() for n, v in state.items()}
    with atomic_open(path, "wb") as f:
        torch.save(state, f)
    return list(state)
