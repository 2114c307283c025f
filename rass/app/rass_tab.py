"""The browser demo's RASS tab: a semantic predictor on the clean and the degraded image, with the
tags its tagger reads, the classes present and the time taken."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from rass.app.models import AppError, Progress
from rass.engine import SemanticPredictor
from rass.evaluation.visualize import class_areas, overlay, short_name
from rass.modeling.tagging import FixedPromptTagger

__all__ = ["RassBackend", "RassResult", "STAGES"]

# The steps of `RassBackend.run`, as the page's progress bar names them.
STAGES = ("segmenting the clean image", "segmenting the degraded image")


@dataclass
class RassResult:
    """RASS on the clean and on the degraded image.

    Args:
        overlays: "clean" / "degraded" -> class-colour overlay (H x W x 3 uint8).
        labels: "clean" / "degraded" -> class ids (H x W int64).
        tags: "clean" / "degraded" -> the prompt the tagger read from that image.
        seconds: "clean" / "degraded" -> time of the prediction.
        legend: (class name, RGB colour, % of the clean image, % of the degraded image), for every
            class present in either, largest in the degraded image first.
    """

    overlays: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    tags: Dict[str, str]
    seconds: Dict[str, float]
    legend: List[Tuple[str, Tuple[int, int, int], float, float]]


class RassBackend:
    """A semantic-segmentation predictor for the RASS tab, with the tags its tagger reads.

    Args:
        predictor: a `SemanticPredictor` (RASS or any semantic model of the project).
        opacity: weight of the class colours in the overlays.
    """

    def __init__(self, predictor: SemanticPredictor, opacity: float = 0.5) -> None:
        self.predictor = predictor
        self.opacity = opacity
        self._lock = threading.Lock()
        self._tags: List[str] = []
        self.tagger = getattr(getattr(predictor.model, "backbone", None), "tagger", None)
        if self.tagger is not None:
            self.tagger.register_forward_hook(self._record_tags)

    @classmethod
    def from_cfg(cls, cfg, opacity: float = 0.5) -> "RassBackend":
        """Build the predictor (random weights allowed: the page says so).

        Args:
            cfg: a semantic-segmentation config.
            opacity: see the class.
        """
        if cfg.MODEL.META_ARCHITECTURE == "PromptableSAM":
            raise AppError("the RASS tab needs a semantic-segmentation config; this is a SAM / GleSAM config",
                           hint="give it as --sam-config-file")
        return cls(SemanticPredictor(cfg, allow_random_weights=True), opacity=opacity)

    @property
    def weight_notes(self) -> List[str]:
        """What of the model has random weights."""
        return self.predictor.weight_notes

    def _record_tags(self, module: torch.nn.Module, inputs, output: List[str]) -> None:
        self._tags.extend(output)

    def describe_tags(self, tags: List[str]) -> str:
        """The tags of one prediction as shown on the page."""
        if self.tagger is None:
            return "(this model reads no tags: its backbone has no tagger)"
        text = tags[0] if tags else ""
        if isinstance(self.tagger, FixedPromptTagger):
            return f"fixed prompt {text!r} (MODEL.TAGGER.NAME none: no tagger network)"
        return text if text else "(no tag above its threshold)"

    def predict(self, image: np.ndarray) -> Tuple[np.ndarray, str, float]:
        """(class ids H x W, the tags read, seconds) of one RGB uint8 image."""
        with self._lock:
            self._tags = []
            start = time.perf_counter()
            labels = self.predictor(image)["labels"].cpu().numpy()
            seconds = time.perf_counter() - start
            tags = self.describe_tags(list(self._tags))
        return labels, tags, seconds

    def run(self, clean: np.ndarray, degraded: np.ndarray,
            progress: Optional[Progress] = None) -> RassResult:
        """Segment the clean and the degraded image.

        Args:
            clean: H x W x 3 uint8 RGB.
            degraded: its degraded version (same size).
            progress: told each stage as it starts (`STAGES`), e.g. gradio's progress bar.
        """
        result = RassResult({}, {}, {}, {}, [])
        colors = self.predictor.colors
        for i, (key, image) in enumerate((("clean", clean), ("degraded", degraded))):
            if progress is not None:
                progress(i / len(STAGES), STAGES[i])
            labels, tags, seconds = self.predict(image)
            result.labels[key] = labels
            result.overlays[key] = overlay(image, labels, colors, alpha=self.opacity)
            result.tags[key] = tags
            result.seconds[key] = seconds
        n = len(self.predictor.class_names)
        area = {k: class_areas(v, n) / max(v.size, 1) * 100.0 for k, v in result.labels.items()}
        present = [int(c) for c in np.argsort(-(area["degraded"] + 1e-6 * area["clean"]), kind="stable")
                   if area["clean"][c] > 0 or area["degraded"][c] > 0]
        if progress is not None:
            progress(1.0, "done")
        result.legend = [(short_name(self.predictor.class_names[c]), tuple(int(v) for v in colors[c]),
                          float(area["clean"][c]), float(area["degraded"][c])) for c in present]
        return result
