"""MGD-SAM2 on single images: the browser demo's MGD-SAM2 tab and demo/demo_mgd.py.

MGD-SAM2 is prompt-free: it segments the image's main object(s) (class-agnostic, one binary mask). Next to it,
plain SAM2 segments the same image given a box (two corners clicked on the page, ``--box`` in the demo):
the SAM2 of the same size, with the SAM 2.1 weights MGD-SAM2 was initialised from (MODEL.MGD_SAM2.SAM2_INIT;
random when that is empty), at the same input side (`sam2_cfg_of`).

Sizes: any image size and aspect is accepted. MGD-SAM2 resizes the image to MODEL.MGD_SAM2.IMAGE_SIZE squared
(1024 as released; bilinear with antialias, the aspect is not kept) and its mask logits are resized back to the
image's own size (bilinear), so the mask has the image's size; SAM2 does the same with MODEL.SAM2.IMAGE_SIZE.
Tiny images (a few pixels) are upsampled the same way.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rass.app.models import AppError, Progress
from rass.evaluation.visualize import draw, mask_iou

__all__ = ["MGD_DEFAULT_CONFIG", "MGD_STAGE", "SAM2_STAGE", "MgdSegmenter", "MgdResult", "sam2_cfg_of",
           "mgd_metrics_markdown"]

# The tiny MGD-SAM2 (random weights) the page and the demo run without a config.
MGD_DEFAULT_CONFIG = "configs/dis5k/tiny_mgd_sam2.yaml"
MGD_STAGE = "segmenting with MGD-SAM2 (five views of the image, no prompt)"
SAM2_STAGE = "segmenting with SAM2 given the box"
MGD_NAME, SAM2_NAME = "MGD-SAM2", "SAM2"


def sam2_cfg_of(cfg):
    """The plain-SAM2 config compared with an MGD-SAM2 config: META_ARCHITECTURE "PromptableSAM2", the same
    SAM2 size (MODEL.SAM2.VARIANT), MODEL.SAM2.CHECKPOINT = MODEL.MGD_SAM2.SAM2_INIT (the SAM 2.1 weights
    MGD-SAM2 starts from; "" leaves SAM2 random), MODEL.SAM2.IMAGE_SIZE = MODEL.MGD_SAM2.IMAGE_SIZE, no
    MODEL.WEIGHTS (those are MGD-SAM2's).

    Args:
        cfg: an MGD-SAM2 config (META_ARCHITECTURE "MGDSAM2").
    """
    sam2 = cfg.clone()
    sam2.defrost()
    sam2.MODEL.META_ARCHITECTURE = "PromptableSAM2"
    sam2.MODEL.SAM2.CHECKPOINT = cfg.MODEL.MGD_SAM2.SAM2_INIT
    sam2.MODEL.SAM2.IMAGE_SIZE = int(cfg.MODEL.MGD_SAM2.IMAGE_SIZE)
    sam2.MODEL.WEIGHTS = ""
    sam2.freeze()
    return sam2


def _build(cfg) -> Tuple[torch.nn.Module, List[str]]:
    """A model of `cfg` in eval mode with MODEL.WEIGHTS loaded, and its random-weights notes."""
    from rass.checkpoint import RASSCheckpointer
    from rass.engine.model_build import build_model_noting_random_weights

    model, notes = build_model_noting_random_weights(cfg)
    if cfg.MODEL.WEIGHTS:
        RASSCheckpointer(cfg, model, save_dir="").load(cfg.MODEL.WEIGHTS)
    return model.eval(), list(notes.messages)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise AppError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} {tuple(image.shape)}")
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class MgdSegmenter:
    """MGD-SAM2 (prompt-free) and, optionally, plain SAM2 given a box, on RGB arrays of any size.

    Args:
        mgd: an "MGDSAM2" model in eval mode, with its weights.
        sam2: a "PromptableSAM2" model in eval mode (None: no box comparison).
        weight_notes: what of the two models has random weights (empty when every part was loaded).
        opacity: weight of the mask colour in the overlays.
    """

    def __init__(self, mgd: torch.nn.Module, sam2: Optional[torch.nn.Module] = None,
                 weight_notes: Sequence[str] = (), opacity: float = 0.5) -> None:
        self.mgd, self.sam2 = mgd, sam2
        self.weight_notes = list(weight_notes)
        self.opacity = float(opacity)
        self._lock = threading.Lock()
        self._last: Optional[Tuple[str, np.ndarray, float]] = None  # (image key, MGD mask, seconds)

    @classmethod
    def from_cfg(cls, cfg, with_sam2: bool = True, opacity: float = 0.5) -> "MgdSegmenter":
        """Build MGD-SAM2 from an MGD-SAM2 config and, with `with_sam2`, the SAM2 of `sam2_cfg_of(cfg)`.

        Args:
            cfg: a configs/dis5k config (META_ARCHITECTURE "MGDSAM2"); MODEL.WEIGHTS: MGD-SAM2 weights
                (a project checkpoint or a released ``model_epoch_*.pth``).
            with_sam2: also build SAM2 for the box comparison.
            opacity: see the class.
        """
        if cfg.MODEL.META_ARCHITECTURE != "MGDSAM2":
            raise AppError(f"MGD-SAM2 needs a configs/dis5k config (MODEL.META_ARCHITECTURE 'MGDSAM2'), got "
                           f"{cfg.MODEL.META_ARCHITECTURE!r}")
        mgd, notes = _build(cfg)
        sam2 = None
        if with_sam2:
            sam2, sam2_notes = _build(sam2_cfg_of(cfg))
            notes += [f"SAM2 (the box comparison): {n}" for n in sam2_notes]
        return cls(mgd, sam2, notes, opacity)

    @property
    def methods(self) -> List[str]:
        """"MGD-SAM2", and "SAM2" when the box comparison is available."""
        return [MGD_NAME] + ([SAM2_NAME] if self.sam2 is not None else [])

    @torch.no_grad()
    def mask(self, image: np.ndarray) -> np.ndarray:
        """MGD-SAM2's H x W bool mask of an H x W x 3 uint8 RGB image (any size; see the module doc)."""
        h, w = image.shape[:2]
        out = self.mgd([{"image": _as_tensor(image), "height": h, "width": w}])[0]
        return out["masks"][0].cpu().numpy().astype(bool)

    @torch.no_grad()
    def box_mask(self, image: np.ndarray, box: Sequence[float]) -> Tuple[np.ndarray, float]:
        """SAM2's H x W bool mask for a box [x1, y1, x2, y2] in the image's pixels, and its predicted IoU.

        Raises:
            UserValueError: the box does not lie in the image (`rass.data.prompts.check_prompts`).
        """
        from rass.data.prompts import check_prompts

        if self.sam2 is None:
            raise AppError("SAM2 is not loaded: no box comparison")
        h, w = image.shape[:2]
        boxes = np.asarray([box], np.float32)
        check_prompts((h, w), boxes=boxes, source="the SAM2 box")
        out = self.sam2([{"image": _as_tensor(image), "boxes": torch.from_numpy(boxes), "height": h, "width": w}])[0]
        return out["masks"][0].cpu().numpy().astype(bool), float(out["iou_pred"][0])

    def run(self, image: np.ndarray, box: Optional[Sequence[float]] = None,
            progress: Optional[Progress] = None) -> "MgdResult":
        """MGD-SAM2's mask (kept for the last image: drawing a box does not run it again) and SAM2's for `box`.

        Args:
            image: H x W x 3 uint8 RGB (the degraded image).
            box: [x1, y1, x2, y2] for SAM2, or None (MGD-SAM2 only).
            progress: told each stage as it starts, e.g. gradio's progress bar.
        """
        from rass.engine.promptable_predictor import LastImageCache

        stages = [MGD_STAGE] + ([SAM2_STAGE] if box is not None else [])
        result = MgdResult({}, {}, {}, None, None)
        with self._lock:
            key = LastImageCache.key(image)
            if progress is not None:
                progress(0.0, stages[0])
            if self._last is None or self._last[0] != key:
                start = time.perf_counter()
                self._last = (key, self.mask(image), time.perf_counter() - start)
            result.masks[MGD_NAME], result.seconds[MGD_NAME] = self._last[1], self._last[2]
            if box is not None:
                if progress is not None:
                    progress(0.5, stages[1])
                start = time.perf_counter()
                result.masks[SAM2_NAME], result.sam2_iou_pred = self.box_mask(image, box)
                result.seconds[SAM2_NAME] = time.perf_counter() - start
        if progress is not None:
            progress(1.0, "done")
        prompt = {"box": list(box) if box is not None else None}
        for name, mask in result.masks.items():
            result.overlays[name] = draw(image, mask, prompt if name == SAM2_NAME else {}, self.opacity)
        if SAM2_NAME in result.masks:
            result.mutual_iou = mask_iou(result.masks[MGD_NAME], result.masks[SAM2_NAME])
        return result


@dataclass
class MgdResult:
    """MGD-SAM2 (and SAM2 with a box) on one image.

    Args:
        masks: "MGD-SAM2" (and "SAM2") -> H x W bool at the image's size.
        overlays: per method, the mask over the image (SAM2's with its box).
        seconds: per method, the time it took (MGD-SAM2's of its first run on this image).
        sam2_iou_pred: SAM2's own predicted IoU (None without a box).
        mutual_iou: IoU between the two masks (None without a box).
    """

    masks: Dict[str, np.ndarray]
    overlays: Dict[str, np.ndarray]
    seconds: Dict[str, float]
    sam2_iou_pred: Optional[float]
    mutual_iou: Optional[float]


def mgd_metrics_markdown(res: MgdResult) -> str:
    """The MGD-SAM2 tab's table: each method's mask area and time; SAM2's confidence; the two masks' agreement."""
    from rass.evaluation.visualize import format_score

    methods = list(res.masks)
    rows = ["| | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods),
            "| prompt | " + " | ".join("none" if m == MGD_NAME else "your box" for m in methods) + " |",
            "| mask area | " + " | ".join(f"{100.0 * res.masks[m].mean():.1f} % of the image" for m in methods) + " |",
            "| time | " + " | ".join(f"{res.seconds[m]:.2f} s" for m in methods) + " |"]
    if res.mutual_iou is not None:
        rows.append(f"\nSAM2's confidence (its own predicted IoU, 0-1): {format_score(res.sam2_iou_pred)}. "
                    f"**Agreement of the two masks (IoU, 0-1): {format_score(res.mutual_iou)}**")
    else:
        rows.append("\nDraw a box (click two opposite corners) to compare with SAM2.")
    return "\n".join(rows)
