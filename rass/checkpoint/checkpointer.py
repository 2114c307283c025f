"""The project's checkpointer: detectron2's, with atomic writes and clear missing-file errors."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from rass.utils.io import atomic_open

from .release_loader import ReleaseFormatMixin


class RASSCheckpointer(ReleaseFormatMixin, DetectionCheckpointer):
    """`DetectionCheckpointer` whose checkpoints and `last_checkpoint` tag are written atomically.

    A run killed while saving leaves the previous checkpoint and tag intact, so `--resume` always
    finds a complete file. Loading a local path that does not exist raises `FileNotFoundError`
    naming it (detectron2 would assert). Released RASS checkpoints (`rass.pth`, release names) are
    converted with `release_to_project_keys` before loading (`ReleaseFormatMixin`).

    Args:
        model: the model (possibly DDP-wrapped).
        save_dir: output folder.
        checkpointables: further objects with state (optimizer, scheduler, trainer).
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"MODEL.WEIGHTS: checkpoint file not found: {path}")
        return super().load(path, checkpointables=checkpointables)
