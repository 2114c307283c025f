"""`PromptablePredictor`: SAM / GleSAM behind a one-call interface for an RGB array and its prompts."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable

from rass.checkpoint import RASSCheckpointer
from rass.engine.model_build import build_model_noting_random_weights

__all__ = ["PromptablePredictor"]

logger = logging.getLogger(__name__)


class PromptablePredictor:
    """Masks for point / box prompts on one image, with a "PromptableSAM" model.

    The image keeps its aspect ratio (SAM's own preprocessing: longest side to MODEL.SAM.IMAGE_SIZE);
    prompts are pixel coordinates of the image; masks come back at the image's size. (The LQSeg
    evaluation instead follows GleSAM's loader, which first resizes every image to 512 x 512.)
    Weights: MODEL.SAM.CHECKPOINT (+ BASE_CHECKPOINT) and MODEL.GLESAM.LORA_PATH as the model reads
    them, then MODEL.WEIGHTS (a project checkpoint of the whole model) when it is set.

        predictor = PromptablePredictor(setup_cfg("configs/lqseg/glesam_vitl_sd21.yaml"))
        out = predictor(rgb, points=[[120, 80]], labels=[1])   # {"masks", "mask_logits", "iou_pred"}

    Args:
        model: a PromptableSAM model in eval mode, with its weights.
        weight_notes: what of the model has random weights (empty when every part was loaded);
            `from_config` fills it (the same lines are logged as warnings).
    """

    @configurable
    def __init__(self, *, model: torch.nn.Module, weight_notes: Sequence[str] = ()) -> None:
        if not hasattr(model, "transform") or not hasattr(model, "sam"):
            raise ValueError(f"PromptablePredictor needs MODEL.META_ARCHITECTURE 'PromptableSAM', got "
                             f"{type(model).__name__}")
        self.model = model.eval()
        self.weight_notes = list(weight_notes)

    @classmethod
    def from_config(cls, cfg) -> dict:
        model, notes = build_model_noting_random_weights(cfg)
        if cfg.MODEL.WEIGHTS:
            RASSCheckpointer(cfg, model, save_dir="").load(cfg.MODEL.WEIGHTS)
        return {"model": model, "weight_notes": list(notes.messages)}

    @property
    def enhanced(self) -> bool:
        """Whether the model runs GleSAM's latent enhancement."""
        return self.model.enhancer is not None

    @torch.no_grad()
    def __call__(self, image: np.ndarray, points: Optional[Sequence[Sequence[float]]] = None,
                 labels: Optional[Sequence[int]] = None,
                 box: Optional[Sequence[float]] = None) -> Dict[str, torch.Tensor]:
        """Predict the mask of one object.

        Args:
            image: H x W x 3 uint8 RGB array.
            points: N (x, y) pixel coordinates, or None.
            labels: N labels (1 positive, 0 negative); default all positive.
            box: (x1, y1, x2, y2) pixels, or None.

        Returns:
            "masks" (H x W bool), "mask_logits" (H x W float), "iou_pred" (SAM's predicted IoU, a float tensor).
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"PromptablePredictor: expected an H x W x 3 uint8 RGB array, got a {desc}")
        h, w = image.shape[:2]
        inp: Dict = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": h, "width": w}
        if points is not None and len(points):
            coords = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
            lab = torch.ones(len(coords), dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
            if lab.shape != (len(coords),):
                raise ValueError(f"PromptablePredictor: {len(coords)} points but {lab.numel()} labels")
            self.model.transform.apply_coords(coords, (h, w), check_inside=True)  # names a point outside the image
            inp["point_coords"], inp["point_labels"] = coords[None], lab[None]
        if box is not None:
            b = torch.as_tensor(box, dtype=torch.float32).reshape(1, 4)
            self.model.transform.apply_boxes(b, (h, w), check_inside=True)
            inp["boxes"] = b
        if "point_coords" not in inp and "boxes" not in inp:
            raise ValueError("PromptablePredictor: give at least one point or a box")
        out = self.model([inp])[0]
        return {"masks": out["masks"][0], "mask_logits": out["mask_logits"][0], "iou_pred": out["iou_pred"][0]}
