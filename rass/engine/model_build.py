"""Building the model for the trainer: a parameter summary instead of the module tree, and the
"random weights" warnings of the frozen parts only when they are true.

Parts without a weights file (MODEL.RASS.SD_PATH "", a RAM tagger without MODEL.TAGGER.RAM.WEIGHTS)
are built with random weights and say so with a WARNING that contains "random weights". When
MODEL.WEIGHTS is set, those warnings are held back until the checkpoint is loaded: if it sets every
frozen entry of the model, the parts are no longer random and the warnings are dropped; otherwise they
are logged then, with the count of frozen entries the checkpoint left as built.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Iterator, List

import torch
from detectron2.modeling import build_model as d2_build_model

from rass.utils.cli import debug_enabled
from rass.utils.model_summary import model_summary

__all__ = ["build_model_with_summary"]

logger = logging.getLogger("rass")
_RANDOM = re.compile(r"random weights", re.I)


class _Collect(logging.Filter):
    """Takes the WARNING records about random weights out of the log (kept in `records`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and _RANDOM.search(record.getMessage()):
            if not any(r is record for r in self.records):  # each handler sees the record
                self.records.append(record)
            return False
        return True


@contextmanager
def _held_random_weight_warnings() -> Iterator[_Collect]:
    collect = _Collect()
    handlers = {h for log in (logging.getLogger(), logging.getLogger("rass")) for h in log.handlers}
    handlers |= {logging.lastResort} if logging.lastResort else set()
    for h in handlers:
        h.addFilter(collect)
    try:
        yield collect
    finally:
        for h in handlers:
            h.removeFilter(collect)


def _frozen_entries(model: torch.nn.Module) -> List[str]:
    trainable = {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
    return [n for n in model.state_dict() if n not in trainable]


def _emit(records: List[logging.LogRecord], suffix: str = "") -> None:
    for r in records:
        logger.warning(r.getMessage() + suffix)


def build_model_with_summary(cfg) -> torch.nn.Module:
    """detectron2's `build_model`, logging a parameter summary (the module tree only in debug mode)
    and the random-weights warnings only when true (see the module docstring).

    Args:
        cfg: the project config.
    """
    with _held_random_weight_warnings() as held:
        model = d2_build_model(cfg)
    logger.info(model_summary(model))
    if debug_enabled():
        logger.info(f"Model:\n{model}")
    if not held.records:
        return model
    if not cfg.MODEL.WEIGHTS:
        _emit(held.records)
        return model
    frozen = set(_frozen_entries(model))

    def after_load(module: torch.nn.Module, incompatible) -> None:
        handle.remove()  # the first load decides
        missing = [k[len("module."):] if k.startswith("module.") else k for k in incompatible.missing_keys]
        left = [k for k in missing if k in frozen]
        if left:
            _emit(held.records, f" ({len(left)} of the {len(frozen)} frozen entries are not in MODEL.WEIGHTS)")
        else:
            logger.info(f"The parts built with random weights were all set from MODEL.WEIGHTS ({cfg.MODEL.WEIGHTS})")

    handle = model.register_load_state_dict_post_hook(after_load)
    return model
