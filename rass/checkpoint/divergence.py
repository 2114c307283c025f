"""Checkpoints written after the training loss left its range, and the record `--resume` reads.

A run whose loss explodes (e.g. SOLVER.BASE_LR 1e6) can write checkpoints with finite but useless
weights before the loss becomes NaN; resuming from one diverges at once. `LossRange` decides, per
iteration, whether the total loss is in range (finite, and at most SOLVER.LOSS_RANGE_FACTOR times
the median of the run's first in-range losses). A checkpoint written at iteration k holds the
weights the loss of iteration k + 1 is computed with; it is marked as diverged when the loss of
iteration k or k + 1 is out of range. Marks are kept in ``<OUTPUT_DIR>/diverged_checkpoints.json``
(``{file name: {"iteration", "loss_iteration", "loss", "reference"}}``); saving a checkpoint of the
same name again clears its mark.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from rass.utils.errors import UserError
from rass.utils.io import atomic_open

__all__ = ["MARKS_FILE", "LossRange", "TrainingDivergedError", "read_marks", "mark_diverged", "clear_mark",
           "describe_mark"]

MARKS_FILE = "diverged_checkpoints.json"


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN / inf (the hyper-parameters, e.g. SOLVER.BASE_LR, make it diverge);
    the message names the checkpoints marked as diverged."""


@dataclass
class LossRange:
    """Whether each iteration's total loss is in range.

    Args:
        factor: a loss above `factor` x the reference is out of range (0: only NaN / inf are).
        window: the reference is the median of the first `window` in-range losses (of those seen so
            far while fewer).
    """

    factor: float = 100.0
    window: int = 20
    first: List[float] = field(default_factory=list)
    # the first iteration whose loss was out of range, its loss and the reference then
    left_at: Optional[int] = None
    left_loss: float = float("nan")
    left_reference: float = float("nan")

    @property
    def reference(self) -> float:
        """Median of the first in-range losses (NaN before any)."""
        return statistics.median(self.first) if self.first else float("nan")

    def observe(self, iteration: int, loss: float) -> bool:
        """Record the total loss of `iteration`; True if it is out of range."""
        ref = self.reference
        out = not math.isfinite(loss) or (self.factor > 0 and math.isfinite(ref) and loss > self.factor * abs(ref))
        if out and self.left_at is None:
            self.left_at, self.left_loss, self.left_reference = iteration, float(loss), ref
        elif not out and len(self.first) < self.window:
            self.first.append(float(loss))
        return out


def _path(save_dir: str) -> str:
    return os.path.join(save_dir, MARKS_FILE)


def read_marks(save_dir: str) -> Dict[str, dict]:
    """File name -> mark of the diverged checkpoints in `save_dir` (empty without a record).

    Args:
        save_dir: the run's output folder.
    """
    path = _path(save_dir)
    if not save_dir or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(save_dir: str, marks: Dict[str, dict]) -> None:
    if not marks:
        if os.path.isfile(_path(save_dir)):
            os.remove(_path(save_dir))
        return
    with atomic_open(_path(save_dir), "w") as f:
        json.dump(marks, f, indent=1, sort_keys=True)


def mark_diverged(save_dir: str, name: str, iteration: int, loss_iteration: int, loss: float,
                  reference: float) -> None:
    """Record that checkpoint `name` (written at `iteration`) is diverged.

    Args:
        save_dir: the run's output folder.
        name: the checkpoint's file name (e.g. "model_0000004.pth").
        iteration: the iteration it was written at.
        loss_iteration: the iteration whose loss was out of range.
        loss: that loss (NaN / inf allowed).
        reference: the median of the first in-range losses then.
    """
    marks = read_marks(save_dir)
    if name in marks:
        return
    marks[name] = {"iteration": int(iteration), "loss_iteration": int(loss_iteration), "loss": repr(float(loss)),
                   "reference": repr(float(reference))}
    _write(save_dir, marks)


def clear_mark(save_dir: str, name: str) -> None:
    """Forget the mark of checkpoint `name` (it was written again).

    Args:
        save_dir: the run's output folder.
        name: the checkpoint's file name.
    """
    marks = read_marks(save_dir)
    if marks.pop(name, None) is not None:
        _write(save_dir, marks)


def describe_mark(mark: dict) -> str:
    """One phrase saying why a checkpoint is marked, e.g. "the loss of iteration 6 was nan"."""
    loss, ref = float(mark.get("loss", "nan")), float(mark.get("reference", "nan"))
    what = f"the loss of iteration {mark.get('loss_iteration')} was {loss:.4g}"
    if math.isfinite(loss) and math.isfinite(ref):
        what += f" ({loss / ref:.3g} x the run's early median {ref:.4g})"
    return what
