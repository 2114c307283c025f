"""Optimiser (AdamW/Adam/SGD, backbone LR multiplier, full-model gradient clipping) and LR schedules."""
from __future__ import annotations

import itertools
import re
from typing import Any, Dict, List, Set, Type

import torch
from detectron2.solver import LRMultiplier, WarmupParamScheduler
from detectron2.solver import build_lr_scheduler as d2_build_lr_scheduler
from fvcore.common.param_scheduler import PolynomialDecayParamScheduler
from torch import nn

from rass.utils.errors import UserValueError

_NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
_EMBED_NAMES = ("relative_position_bias_table", "absolute_pos_embed", "level_embed", "query_embed", "query_feat")


def build_param_groups(cfg, model: nn.Module) -> List[Dict[str, Any]]:
    """One parameter group per trainable parameter, with its LR and weight decay.

    Backbone parameters (`backbone.*`) get ``BASE_LR * BACKBONE_MULTIPLIER``; normalisation
    layers get WEIGHT_DECAY_NORM; embeddings (nn.Embedding, query/level/position tables)
    get WEIGHT_DECAY_EMBED. SOLVER.PARAM_RULES (if set) come first: the first pattern that matches a
    parameter's name sets its LR multiplier and weight decay (e.g. MGD-SAM2's two groups).

    Args:
        cfg: the project config.
        model: the (unwrapped) model.
    """
    base_lr, wd = cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY
    rules = _param_rules(cfg)
    groups: List[Dict[str, Any]] = []
    seen: Set[torch.nn.Parameter] = set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or p in seen:
                continue
            seen.add(p)
            full = f"{module_name}.{name}" if module_name else name
            lr = base_lr * (cfg.SOLVER.BACKBONE_MULTIPLIER if full.startswith("backbone.") else 1.0)
            decay = wd
            if isinstance(module, _NORM_TYPES):
                decay = cfg.SOLVER.WEIGHT_DECAY_NORM
            if isinstance(module, nn.Embedding) or any(k in full for k in _EMBED_NAMES):
                decay = cfg.SOLVER.WEIGHT_DECAY_EMBED
            rule = next((r for r in rules if r[0].search(full)), None)
            if rule is not None:
                lr, decay = base_lr * rule[1], rule[2]
            groups.append({"params": [p], "lr": lr, "weight_decay": decay, "name": full})
    return groups


def _param_rules(cfg) -> List[tuple]:
    """SOLVER.PARAM_RULES as (compiled pattern, LR multiplier, weight decay), checked."""
    r = cfg.SOLVER.get("PARAM_RULES", None)
    if r is None or not r.PATTERNS:
        return []
    if not len(r.PATTERNS) == len(r.LR_MULTIPLIERS) == len(r.WEIGHT_DECAYS):
        raise UserValueError(f"SOLVER.PARAM_RULES: PATTERNS ({len(r.PATTERNS)}), LR_MULTIPLIERS "
                             f"({len(r.LR_MULTIPLIERS)}) and WEIGHT_DECAYS ({len(r.WEIGHT_DECAYS)}) must have the same "
                             "length")
    out = []
    for p, m, d in zip(r.PATTERNS, r.LR_MULTIPLIERS, r.WEIGHT_DECAYS):
        try:
            out.append((re.compile(p), float(m), float(d)))
        except re.error as e:
            raise UserValueError(f"SOLVER.PARAM_RULES.PATTERNS: {p!r} is not a valid regex ({e})") from None
    return out


def _with_full_model_clipping(optim_cls: Type[torch.optim.Optimizer], max_norm: float, norm_type: float):
    """A subclass of `optim_cls` that clips the gradient norm of all its parameters jointly."""

    class FullModelClipping(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*(g["params"] for g in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelClipping.__name__ = f"{optim_cls.__name__}WithFullModelClipping"
    return FullModelClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """Build the optimiser named by SOLVER.OPTIMIZER with SOLVER.CLIP_GRADIENTS applied.

    Args:
        cfg: the project config.
        model: the (unwrapped) model.
    """
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        cls, kwargs = torch.optim.AdamW, {}
    elif name == "ADAM":  # weight decay added to the gradient (L2), as GleSAM's stage 2 (torch.optim.Adam)
        cls, kwargs = torch.optim.Adam, {}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise UserValueError(f"SOLVER.OPTIMIZER: unknown optimizer {cfg.SOLVER.OPTIMIZER!r}; expected ADAMW, ADAM or "
                             "SGD")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED:
        if clip.CLIP_TYPE == "full_model":
            cls = _with_full_model_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        else:
            from detectron2.solver.build import maybe_add_gradient_clipping

            cls = maybe_add_gradient_clipping(cfg, cls)
    groups = build_param_groups(cfg, model)
    if not groups:
        raise UserValueError("build_optimizer: the model has no trainable parameters")
    return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """WarmupPolyLR (``(1 - it / max_iter) ** POLY_LR_POWER`` after warm-up) or detectron2's schedules.

    Args:
        cfg: the project config.
        optimizer: the optimiser.
    """
    if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupPolyLR":
        return d2_build_lr_scheduler(cfg, optimizer)
    sched = PolynomialDecayParamScheduler(1.0, cfg.SOLVER.POLY_LR_POWER)
    sched = WarmupParamScheduler(
        sched,
        cfg.SOLVER.WARMUP_FACTOR,
        min(cfg.SOLVER.WARMUP_ITERS / max(cfg.SOLVER.MAX_ITER, 1), 1.0),
        cfg.SOLVER.WARMUP_METHOD,
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=cfg.SOLVER.MAX_ITER)
