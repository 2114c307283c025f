"""Building the model for the trainer: a parameter summary instead of the module tree, and the
"random weights" warnings of the frozen parts only when they are true, and
the seeding of parts built without weights (`seeded_init`).

Parts without a weights file (MODEL.RASS.SD_PATH "", a RAM tagger without MODEL.TAGGER.RAM.WEIGHTS)
are built with random weights and say so with a WARNING that contains "random weights". When
MODEL.WEIGHTS is set, those warnings are held back until the checkpoint is loaded: if it sets every
frozen entry of the model, the parts are no longer random and the warnings are dropped; otherwise they
are logged then, with the count of frozen entries the checkpoint left as built.
"""
from __future__ import annotations

import logging
import random
import re
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import numpy as np
import torch
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from detectron2.modeling import build_model as d2_build_model

from rass.utils.cli import DEFAULT_INIT_SEED, add_init_seed_argument, debug_enabled  # noqa: F401  (re-exported)
from rass.utils.model_summary import model_summary
from rass.utils.registry import registered

__all__ = ["build_model_with_summary", "build_model_noting_random_weights", "RandomWeightNotes", "DEFAULT_INIT_SEED",
           "seeded_init", "add_init_seed_argument", "check_model_names"]

logger = logging.getLogger("rass")
_RANDOM = re.compile(r"random weights", re.I)


@contextmanager
def seeded_init(seed: int = DEFAULT_INIT_SEED) -> Iterator[None]:
    """Build models inside this block to initialise their random parts from `seed`.

    torch's CPU and CUDA generators, numpy's and Python's global generators are seeded inside the
    block and restored after it, so the process's own random streams are left as they were. Parts
    later set from a weights file are unaffected; everything else is the same for the same seed.

    Args:
        seed: the initialisation seed (`DEFAULT_INIT_SEED` unless the user chose one).
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)  # CPU and every CUDA device
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


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


class RandomWeightNotes:
    """The "random weights" warnings of one model build, as far as they are still true.

    Before any checkpoint is loaded every held warning is true. The first `load_state_dict` of the
    model decides: if it set every frozen entry, the parts are no longer random and `messages` is
    empty; otherwise the warnings stay, with the count of frozen entries the checkpoint left as built.

    Args:
        model: the freshly built model.
        records: the held WARNING records about random weights (each is logged once it is decided: at
            once without `expect_load`, else after the load).
        expect_load: a checkpoint will be loaded (MODEL.WEIGHTS is set); wait for it.
        weights: the checkpoint's name for the log line.
    """

    def __init__(self, model: torch.nn.Module, records: List[logging.LogRecord], expect_load: bool = False,
                 weights: str = "") -> None:
        self.messages: List[str] = [r.getMessage() for r in records]
        self._weights = weights
        if not records:
            return
        if not expect_load:
            self._emit()
            return
        self._frozen = set(_frozen_entries(model))
        self._handle = model.register_load_state_dict_post_hook(self._after_load)

    def _emit(self) -> None:
        for m in self.messages:
            logger.warning(m)

    def _after_load(self, module: torch.nn.Module, incompatible) -> None:
        self._handle.remove()  # the first load decides
        missing = [k[len("module."):] if k.startswith("module.") else k for k in incompatible.missing_keys]
        left = [k for k in missing if k in self._frozen]
        if left:
            suffix = f" ({len(left)} of the {len(self._frozen)} frozen entries are not in MODEL.WEIGHTS)"
            self.messages = [m + suffix for m in self.messages]
            self._emit()
        else:
            self.messages = []
            logger.info(f"The parts built with random weights were all set from MODEL.WEIGHTS ({self._weights})")


def check_model_names(cfg) -> None:
    """Check the registered names that detectron2's `build_model` looks up from the config (the
    meta-architecture, the backbone and the semantic head), so that a name that is not registered is a
    user error naming the key (the project's own registries check theirs where they build).

    Args:
        cfg: the project config.

    Raises:
        UserKeyError: a name that is not registered.
    """
    registered(META_ARCH_REGISTRY, "MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE)
    registered(BACKBONE_REGISTRY, "MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME)
    registered(SEM_SEG_HEADS_REGISTRY, "MODEL.SEM_SEG_HEAD.NAME", cfg.MODEL.SEM_SEG_HEAD.NAME)


def build_model_noting_random_weights(cfg) -> Tuple[torch.nn.Module, RandomWeightNotes]:
    """detectron2's `build_model` with its "random weights" warnings held back until they are known
    to be true (see `RandomWeightNotes`; the predictors show them, e.g. on the browser demo's page).

    Args:
        cfg: the project config.
    """
    check_model_names(cfg)
    with _held_random_weight_warnings() as held:
        model = d2_build_model(cfg)
    notes = RandomWeightNotes(model, held.records, expect_load=bool(cfg.MODEL.WEIGHTS),
                              weights=cfg.MODEL.WEIGHTS)
    return model, notes


def build_model_with_summary(cfg) -> torch.nn.Module:
    """detectron2's `build_model`, logging a parameter summary (the module tree only in debug mode)
    and the random-weights warnings only when true (see the module docstring).

    Args:
        cfg: the project config.
    """
    model, _ = build_model_noting_random_weights(cfg)
    logger.info(model_summary(model))
    if debug_enabled():
        logger.info(f"Model:\n{model}")
    return model
