"""The browser demo's SAM / GleSAM tab: the clicks (points, a box) and SAM's and GleSAM's masks for them."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import cv2
import numpy as np

from rass.app.models import AppError
from rass.engine import PromptablePredictor
from rass.evaluation.visualize import draw, mask_iou

__all__ = ["CLICK_MODES", "Prompts", "draw_prompts", "SamBackend", "SamResult"]

CLICK_MODES = ("positive point", "negative point", "box corner")


@dataclass
class Prompts:
    """The clicks on the SAM tab's image: points (label 1 positive, 0 negative) and at most one box,
    drawn by two "box corner" clicks (the first is kept in `corner` until the second).
    """

    points: List[List[float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    box: Optional[List[float]] = None
    corner: Optional[List[float]] = None

    def add_click(self, x: float, y: float, mode: str) -> "Prompts":
        """A new `Prompts` with one more click.

        Args:
            x, y: pixel coordinates on the image.
            mode: one of `CLICK_MODES`.
        """
        if mode not in CLICK_MODES:
            raise AppError(f"unknown click mode {mode!r}; expected one of {', '.join(CLICK_MODES)}")
        new = Prompts([list(p) for p in self.points], list(self.labels), self.box, self.corner)
        if mode == "box corner":
            if new.corner is None:
                new.corner = [float(x), float(y)]
            else:
                (x0, y0), new.corner = new.corner, None
                new.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        else:
            new.points.append([float(x), float(y)])
            new.labels.append(1 if mode == "positive point" else 0)
        return new

    @property
    def ready(self) -> bool:
        """Whether there is a point or a complete box."""
        return bool(self.points) or self.box is not None

    def as_dict(self) -> Dict:
        """{"points", "labels", "box"} for drawing; a pending box corner is drawn as a gray point."""
        return {"points": self.points, "labels": self.labels, "box": self.box}

    def describe(self) -> str:
        """One line for the page, e.g. "1 positive / 1 negative point(s): +(10, 20) -(30, 5); box 12, 8, 50, 40"."""
        pos, neg = self.labels.count(1), self.labels.count(0)
        points = " ".join(f"{'+' if label else '-'}({x:.0f}, {y:.0f})" for (x, y), label in zip(self.points, self.labels))
        parts = [f"{pos} positive / {neg} negative point(s)" + (f": {points}" if points else "")]
        if self.box is not None:
            parts.append("box " + ", ".join(f"{v:.0f}" for v in self.box))
        if self.corner is not None:
            parts.append(f"box corner at {self.corner[0]:.0f}, {self.corner[1]:.0f} (click the opposite corner)")
        return "; ".join(parts)


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
    """The image with the prompts drawn (and a pending box corner as a white cross)."""
    out = draw(image, None, prompts.as_dict(), 0.0)
    if prompts.corner is not None:
        r = max(4, round(max(image.shape[:2]) / 60))
        x, y = (int(round(v)) for v in prompts.corner)
        cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 2 * r, 2)
    return out


@dataclass
class SamResult:
    """SAM and GleSAM on the degraded image with the same prompts.

    Args:
        masks: "SAM" / "GleSAM" -> H x W bool.
        iou_pred: the model's own predicted IoU per method.
        overlays: per method, the mask and the prompts over the image.
        seconds: per method, the time of the prediction.
        mutual_iou: IoU between the SAM and the GleSAM mask (None with SAM only).
    """

    masks: Dict[str, np.ndarray]
    iou_pred: Dict[str, float]
    overlays: Dict[str, np.ndarray]
    seconds: Dict[str, float]
    mutual_iou: Optional[float]


class SamBackend:
    """Plain SAM and, when the config enables it, GleSAM (the same SAM weights) for the SAM tab.

    Args:
        predictor: a `PromptablePredictor` (GleSAM when MODEL.GLESAM.ENHANCE, else plain SAM).
        opacity: weight of the mask colour in the overlays.
    """

    def __init__(self, predictor: PromptablePredictor, opacity: float = 0.5) -> None:
        self.weight_notes = list(predictor.weight_notes)
        self.methods: Dict[str, PromptablePredictor] = {}
        if predictor.enhanced:
            self.methods["SAM"] = predictor.plain_sam()  # shares the SAM image encoder's cache
            self.methods["GleSAM"] = predictor
        else:
            self.methods["SAM"] = predictor
        self.opacity = opacity
        self._lock = threading.Lock()

    @classmethod
    def from_cfg(cls, cfg, opacity: float = 0.5) -> "SamBackend":
        """Build the predictor(s) from a configs/lqseg config.

        Args:
            cfg: a PromptableSAM config.
            opacity: see the class.
        """
        if cfg.MODEL.META_ARCHITECTURE != "PromptableSAM":
            raise AppError(f"the SAM / GleSAM tab needs a configs/lqseg config (MODEL.META_ARCHITECTURE "
                           f"'PromptableSAM'), got {cfg.MODEL.META_ARCHITECTURE!r}")
        return cls(PromptablePredictor(cfg), opacity=opacity)

    def run(self, image: np.ndarray, prompts: Prompts) -> SamResult:
        """The masks of every method for the prompts.

        Args:
            image: H x W x 3 uint8 RGB (the degraded image).
            prompts: the clicks (at least one point or a complete box).
        """
        if not prompts.ready:
            raise AppError("no prompt yet: click a point on the image, or two opposite corners of a box")
        result = SamResult({}, {}, {}, {}, None)
        with self._lock:
            for name, predictor in self.methods.items():
                start = time.perf_counter()
                try:
                    out = predictor(image, points=prompts.points or None, labels=prompts.labels or None,
                                    box=prompts.box)
                except ValueError as e:  # a prompt outside the image
                    raise AppError(str(e)) from None
                result.seconds[name] = time.perf_counter() - start
                mask = out["masks"].cpu().numpy().astype(bool)
                result.masks[name] = mask
                result.iou_pred[name] = float(out["iou_pred"])
                result.overlays[name] = draw(image, mask, prompts.as_dict(), self.opacity)
        if len(result.masks) == 2:
            result.mutual_iou = mask_iou(result.masks["SAM"], result.masks["GleSAM"])
        return result
