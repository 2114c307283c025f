"""On `--resume`, the current config's optimiser settings replace the checkpoint's.

A checkpoint stores the optimiser's param groups (their `lr`, `initial_lr`, `weight_decay`, ...) and
the scheduler's `base_lrs`; loading them as they are would keep the learning rate of the run that
wrote it (e.g. a diverged `SOLVER.BASE_LR 1e6` run resumed with `SOLVER.BASE_LR 1e-4` would diverge
again). The project applies the config instead: its schedule (built from the current config) is
evaluated at the resumed iteration with the config's base learning rates; the optimiser's moments
(its `state`) and the iteration come from the checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from detectron2.solver import LRMultiplier

from rass.utils.errors import UserValueError

__all__ = ["snapshot_hyperparameters", "apply_config_hyperparameters"]

_LR_KEYS = ("lr", "initial_lr")


def snapshot_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any) -> Dict[str, Any]:
    """The config's settings, taken from a freshly built optimiser / scheduler before a checkpoint is loaded.

    Args:
        optimizer: the optimiser built from the current config.
        scheduler: its LR scheduler (with `base_lrs`), or None.
    """
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    base = list(getattr(scheduler, "base_lrs", None) or [g.get("initial_lr", g["lr"]) for g in groups])
    return {"groups": groups, "base_lrs": base}


def _reference_group(base_lrs: List[float], base_lr: float) -> int:
    """A group whose config LR is SOLVER.BASE_LR itself (not scaled by a multiplier), else 0."""
    for i, lr in enumerate(base_lrs):
        if math.isclose(lr, base_lr, rel_tol=1e-9, abs_tol=0.0):
            return i
    return 0


def apply_config_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any, snapshot: Dict[str, Any],
                                 base_lr: float) -> Optional[str]:
    """Put the config's hyper-parameters back after a checkpoint's optimiser/scheduler state was loaded.

    Each group's learning rate becomes the config's schedule at the resumed iteration (detectron2's
    `LRMultiplier`: the config's base LR times its multiplier; other schedulers: the config's base
    LR times the checkpoint's current factor); every other group setting (weight decay, betas, ...)
    is the config's.

    Args:
        optimizer: the optimiser, after `load_state_dict`.
        scheduler: its scheduler, after `load_state_dict` (or None).
        snapshot: `snapshot_hyperparameters` taken before loading.
        base_lr: SOLVER.BASE_LR of the current config.

    Returns:
        A sentence "SOLVER.BASE_LR from the config (X) replaces the checkpoint's (Y)" when they differ
        (plus other changed settings), else None.

    Raises:
        ValueError: the checkpoint has another number of param groups than the config's optimiser.
    """
    groups, fresh_base = snapshot["groups"], snapshot["base_lrs"]
    if len(groups) != len(optimizer.param_groups):
        raise UserValueError(f"resume: the checkpoint's optimizer has {len(optimizer.param_groups)} param groups, "
                             f"the config's {len(groups)}")
    old_base = list(getattr(scheduler, "base_lrs", None) or [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups])
    changed = set()
    for group, fresh, new_b, old_b in zip(optimizer.param_groups, groups, fresh_base, old_base):
        factor = group["lr"] / old_b if old_b else 1.0
        for k, v in fresh.items():
            if k not in _LR_KEYS and group.get(k) != v:
                changed.add(k)
                group[k] = v
        group["initial_lr"] = new_b
        group["lr"] = new_b * factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = list(fresh_base)
        if isinstance(scheduler, LRMultiplier):  # the config's schedule (MAX_ITER, warm-up) at the resumed iteration
            for group, lr in zip(optimizer.param_groups, scheduler.get_lr()):
                group["lr"] = lr
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
    ref = _reference_group(fresh_base, base_lr)
    old_base_lr = old_base[ref] * (base_lr / fresh_base[ref]) if fresh_base[ref] else old_base[ref]
    parts = []
    if not math.isclose(old_base_lr, base_lr, rel_tol=1e-6):
        parts.append(f"SOLVER.BASE_LR from the config ({base_lr:g}) replaces the checkpoint's ({old_base_lr:g})")
    elif any(not math.isclose(a, b, rel_tol=1e-6) for a, b in zip(fresh_base, old_base)):
        parts.append("the config's per-group learning rates (e.g. SOLVER.BACKBONE_MULTIPLIER) replace the checkpoint's")
    changed.discard("name")
    if changed:
        parts.append(f"optimizer settings from the config replace the checkpoint's: {', '.join(sorted(changed))}")
    return "; ".join(parts) or None
