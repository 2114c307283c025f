"""The project's checkpointer: detectron2's, with atomic writes, clear file errors, a fit check, weight
files that cannot run code, no download unless allowed, and a resume that survives a broken last
checkpoint and skips checkpoints written after the loss diverged."""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, List, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import configurable
from fvcore.common.checkpoint import _filter_reused_missing_keys

from rass.utils.errors import UserError
from rass.utils.io import atomic_open

from .divergence import MARKS_FILE, clear_mark, describe_mark, read_marks
from .files import CheckpointFileError, check_weight_path, read_checkpoint_file, remove_stray_temp_files
from .fit import LoadReport, check_fit, fill_load_report, fit_counts, grouped, partial_warning
from .release_loader import ReleaseFormatMixin
from .safe_pickle import read_safe_pickle
from .urls import check_download_allowed, is_url

__all__ = ["RASSCheckpointer"]

logger = logging.getLogger(__name__)

_NUMBERED = re.compile(r"^model_(\d+)\.pth$")


def _is_checkpoint_name(name: str) -> bool:
    return name == "last_checkpoint" or name.endswith(".pth")


def _model_zoo_pickle(data: Mapping, log: logging.Logger) -> Dict[str, Any]:
    """A model-zoo `.pkl` as detectron2 reads it: a detectron2 file ({"model", "__author__", ...}) as it
    is, else a Caffe2 / Detectron1 file (its "blobs", without `_momentum` entries) for name matching."""
    if "model" in data and "__author__" in data:
        log.info(f"Reading a file from '{data['__author__']}'")
        return dict(data)
    blobs = data["blobs"] if isinstance(data.get("blobs"), Mapping) else data
    return {"model": {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}, "__author__": "Caffe2",
            "matching_heuristics": True}


class RASSCheckpointer(ReleaseFormatMixin, DetectionCheckpointer):
    """`DetectionCheckpointer` for the project's models.

    - Checkpoints and the `last_checkpoint` tag are written atomically; temporary files left by a
      killed save are removed (and logged) at the next save or resume.
    - A missing file raises `UserFileNotFoundError`, a folder a `UserValueError` and an unreadable
      file (empty, text, truncated, damaged) a `CheckpointFileError`, each naming the file and what
      was expected.
    - No weight file runs code: torch files are read with `torch.load(weights_only=True)` (also
      pycls `.pyth`), model-zoo `.pkl` files with `SafeUnpickler` (numpy arrays and plain containers
      only; anything else is refused, naming the class it met).
    - A URL (detectron2://, catalog://, http(s)://) is downloaded only with `allow_downloads`
      (MODEL.ALLOW_DOWNLOADS); otherwise it is refused, naming the address and where to put the file.
    - Released RASS checkpoints (`rass.pth`, release names) are converted (`ReleaseFormatMixin`).
    - A checkpoint that leaves trainable parameters unloaded (or has other shapes) raises
      `CheckpointMismatchError` with the counts, unless `allow_partial`; frozen parts missing
      (Stable Diffusion / RAM weights that come from their own paths) are logged in one line.
    - `resume_or_load(..., resume=True)` falls back to the newest earlier `model_*.pth` that reads
      when the tagged last checkpoint is broken, with a WARNING naming it; checkpoints marked as
      written after the loss left its range (`rass.checkpoint.divergence`) are skipped the same way,
      and refused when no other is left.

    Build it with `RASSCheckpointer(model, save_dir, ...)` or `RASSCheckpointer(cfg, model, ...)`.

    Args:
        model: the model (possibly DDP-wrapped).
        save_dir: output folder.
        allow_partial: accept checkpoints that load only part of the trainable parameters
            (MODEL.WEIGHTS_ALLOW_PARTIAL); what was not loaded is logged as a WARNING.
        allow_backbone_init: accept ImageNet-style backbone initialisation files (detectron2's
            matching-heuristics `.pkl` formats) that fill only (part of) `backbone.*` (training
            from a pretrained backbone; the Trainer sets it, evaluation does not).
        allow_downloads: let a URL path be downloaded by detectron2 (MODEL.ALLOW_DOWNLOADS).
        save_to_disk: write files (default: main process only).
        checkpointables: further objects with state (optimizer, scheduler, trainer).
    """

    @configurable
    def __init__(self, model: torch.nn.Module, save_dir: str = "", *, allow_partial: bool = False,
                 allow_backbone_init: bool = False, allow_downloads: bool = False,
                 save_to_disk: Optional[bool] = None, **checkpointables: Any) -> None:
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allow_partial = allow_partial
        self.allow_backbone_init = allow_backbone_init
        self.allow_downloads = allow_downloads
        # file name -> iteration of the checkpoints this checkpointer wrote (the divergence record reads it)
        self.saved_iterations: Dict[str, Optional[int]] = {}
        self.last_load_report: Optional[LoadReport] = None
        self._source = ""
        self._key = "MODEL.WEIGHTS"
        self._complete = True
        self._backbone_init = False

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module, save_dir: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
        return {"model": model, "save_dir": cfg.OUTPUT_DIR if save_dir is None else save_dir,
                "allow_partial": cfg.MODEL.WEIGHTS_ALLOW_PARTIAL, "allow_downloads": cfg.MODEL.ALLOW_DOWNLOADS,
                **kwargs}

    # ------------------------------------------------------------------ saving
    def remove_stray_temp_files(self) -> List[str]:
        """Remove temporary checkpoint files of interrupted saves in `save_dir` (main process only)."""
        if not self.save_dir or not self.save_to_disk:
            return []
        return remove_stray_temp_files(self.save_dir, _is_checkpoint_name, log=logger)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        self.remove_stray_temp_files()
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        clear_mark(self.save_dir, basename)  # a diverged checkpoint of this name is replaced
        self.saved_iterations[basename] = kwargs.get("iteration")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    # ------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if is_url(path):
            check_download_allowed(path, self._key, self.allow_downloads)
        elif path:
            check_weight_path(path.split("?", 1)[0], self._key)
        self._source = path
        try:
            return super().load(path, checkpointables=checkpointables)
        finally:
            self._parsed_url_during_load = None  # detectron2 leaves it set when loading raised

    def _check_holds_state(self, filename: str, data: Any) -> Any:
        inner = data.get("model", data) if isinstance(data, Mapping) else data
        if not isinstance(inner, Mapping):
            raise CheckpointFileError(
                f"{self._key}: {filename} holds {type(inner).__name__}, expected a state dict (name -> tensor) or a "
                "detectron2 checkpoint {'model': state_dict, ...}")
        return data

    def _torch_load(self, f: str) -> Any:
        return self._check_holds_state(f, read_checkpoint_file(f, key=self._key))  # weights_only=True

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """detectron2's reader (torch files, model-zoo / Caffe2 `.pkl`, pycls `.pyth`) with errors naming the
        file; `.pkl` goes through `SafeUnpickler`, `.pyth` through `torch.load(weights_only=True)`."""
        if filename.endswith(".pkl"):
            data = self._check_holds_state(filename, read_checkpoint_file(filename, key=self._key,
                                                                          loader=read_safe_pickle))
            return _model_zoo_pickle(data, self.logger)
        if filename.endswith(".pyth"):  # pycls
            data = read_checkpoint_file(filename, key=self._key)
            if not isinstance(data, Mapping) or not isinstance(data.get("model_state"), Mapping):
                raise CheckpointFileError(f"{self._key}: {filename} is not a pycls checkpoint: a .pyth file must "
                                          "hold {'model_state': state_dict, ...}")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # torch files, through _torch_load

    def _load_model(self, checkpoint: Dict[str, Any]):
        self._backbone_init = self.allow_backbone_init and bool(checkpoint.get("matching_heuristics", False))
        given = {k[len("module."):] if k.startswith("module.") else k for k in checkpoint.get("model", {})}
        incompatible = super()._load_model(checkpoint)
        report = self.last_release_report or LoadReport()
        missing = _filter_reused_missing_keys(self.model, list(incompatible.missing_keys))
        buffers = dict(self.model.named_buffers(recurse=False))  # detectron2 hides these two when absent
        missing += [k for k in ("pixel_mean", "pixel_std") if k in buffers and k not in given and k not in missing]
        fill_load_report(report, self.model, missing, incompatible.unexpected_keys, incompatible.incorrect_shapes)
        self.last_load_report = report
        self._complete = check_fit(report, self._source, allow_partial=self.allow_partial,
                                   backbone_init=self._backbone_init)
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        """One line for a checkpoint that fits (frozen parts not in it are normal), the counts and
        examples (WARNING) for one accepted as partial."""
        report, source = self.last_load_report, self._source
        if report is None:
            return super()._log_incompatible_keys(incompatible)
        frozen = [n for n in report.missing if n not in set(report.missing_trainable)]
        if self._backbone_init:
            outside = [n for n in report.missing_trainable if not n.startswith("backbone.")]
            logger.info("Initialised the backbone from %s (%s); %d trainable entries outside it start from "
                        "their initial values: %s", source, fit_counts(report), len(outside), grouped(outside))
        elif not self._complete:
            logger.warning(partial_warning(report, source))
            return
        else:
            line = f"Loaded {source}: {fit_counts(report)}"
            if frozen:
                line += f"; frozen entries not in the file keep their built values: {grouped(frozen)}"
            logger.info(line)
        if report.unexpected and not self._backbone_init:
            logger.warning("%s: %d entries the model does not have were ignored: %s (e.g. %s)", source,
                           len(report.unexpected), grouped(report.unexpected), ", ".join(report.unexpected[:3]))

    # ------------------------------------------------------------------ resuming
    def _resume_candidates(self) -> List[str]:
        """The tagged last checkpoint, then earlier `model_<iter>.pth` files, newest first."""
        tagged = self.get_checkpoint_file()
        m = _NUMBERED.match(os.path.basename(tagged))
        limit = int(m.group(1)) if m else None
        numbered = []
        for name in os.listdir(self.save_dir):
            n = _NUMBERED.match(name)
            if n and (limit is None or int(n.group(1)) < limit):
                numbered.append((int(n.group(1)), os.path.join(self.save_dir, name)))
        earlier = [p for _, p in sorted(numbered, reverse=True) if p != tagged]
        return ([tagged] if os.path.basename(tagged) else []) + earlier  # an empty tag names no file

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from `save_dir`'s last checkpoint (falling back past broken ones) if `resume` and
        one is tagged, else load `path` (model only).

        Args:
            path: MODEL.WEIGHTS (used when not resuming).
            resume: resume if `save_dir/last_checkpoint` exists.
        """
        if not (resume and self.has_checkpoint()):
            self._key = "MODEL.WEIGHTS"
            return self.load(path, checkpointables=[])
        self.remove_stray_temp_files()
        self._key = "resume"
        candidates = self._resume_candidates()
        marks = read_marks(self.save_dir)
        failures, diverged = [], []
        try:
            for candidate in candidates:
                mark = marks.get(os.path.basename(candidate))
                if mark is not None and os.path.isfile(candidate):
                    diverged.append(candidate)
                    logger.warning("Skipping %s at --resume: it was written after the training loss left its range "
                                   "(%s; recorded in %s)", candidate, describe_mark(mark),
                                   os.path.join(self.save_dir, MARKS_FILE))
                    continue
                try:
                    data = self.load(candidate)
                except (CheckpointFileError, FileNotFoundError) as e:
                    why = getattr(e, "description", "the file does not exist")
                    failures.append(f"{candidate}: {why}")
                    logger.warning("Cannot resume from %s: %s; trying the previous checkpoint", candidate, why)
                    continue
                if failures:
                    logger.warning("Resuming from %s instead of the broken %s", candidate, candidates[0])
                if diverged:
                    logger.warning("Resuming from %s, the newest checkpoint not marked as diverged (skipped: %s)",
                                   candidate, ", ".join(map(os.path.basename, diverged)))
                return data
        finally:
            self._key = "MODEL.WEIGHTS"
        if diverged:
            newest = os.path.basename(diverged[0])
            raise UserError(
                f"refusing to resume from {self.save_dir}: every checkpoint there was written after the training loss "
                f"left its range ({describe_mark(marks[newest])}; see {os.path.join(self.save_dir, MARKS_FILE)}): "
                + ", ".join(map(os.path.basename, diverged))
                + "".join(f"; unreadable: {f}" for f in failures),
                hint=f"start without --resume (e.g. with a lower SOLVER.BASE_LR), or delete "
                     f"{os.path.join(self.save_dir, MARKS_FILE)} to resume from {newest} anyway")
        raise CheckpointFileError(
            f"cannot resume from {self.save_dir}: no checkpoint there can be read:\n  "
            + "\n  ".join(failures or ["last_checkpoint names no file"]),
            hint="start without --resume, or point OUTPUT_DIR at another run")
