"""Evaluator of promptable (class-agnostic, one object per image) masks: IoU, Dice, boundary IoU, PA.

Per image, with P = the model's bool mask at the GT size and G = the GT mask (both H×W):
- IoU = |P∩G| / |P∪G|;  Dice = 2|P∩G| / (|P| + |G|);  PixelAcc = (|P∩G| + |¬P∩¬G|) / (H·W);
- BoundaryIoU = IoU of the boundary bands ``M − erode(M)`` (3×3 erosion iterated
  d = max(1, round(0.02·diagonal)) times, pixels outside the image = background;
  `rass.evaluation.boundary`), as GleSAM's `misc.boundary_iou`.
Empty masks (never NaN): G and P both empty → IoU = Dice = BoundaryIoU = 1 (a perfect answer);
exactly one empty → 0. (The release gives IoU 0 to every empty-G image and NaN boundary IoU when
both bands are empty.) Values are fractions in [0, 1], as the paper's tables; each is averaged
over images. Counted as well: ``empty_gt``, ``empty_pred`` and the prompts drawn by a fallback
rule (``prompt_fallbacks``: the mapper's ``prompt_note``, see `rass.data.prompts`).

Results: ``{"promptable": {"IoU", "Dice", "BoundaryIoU", "PixelAcc", "num_images", "empty_gt",
"empty_pred", "prompt_fallbacks"}}``; per-image values in ``<output_dir>/promptable_per_image_<dataset>.json``.
Under several processes the per-image records are gathered to the main process (comm.gather), so
the averages do not depend on the process count.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from rass.utils.io import atomic_open

from .boundary import DILATION_RATIO, boundary_width, mask_boundary_band

__all__ = ["PromptableMaskEvaluator", "mask_metrics", "format_promptable_table", "METRICS"]

logger = logging.getLogger(__name__)
METRICS = ("IoU", "Dice", "BoundaryIoU", "PixelAcc")
PER_IMAGE_FILE = "promptable_per_image_{}.json"


def _ratio(num: int, den: int, both_empty: float = 1.0) -> float:
    return float(num) / float(den) if den > 0 else both_empty


def mask_metrics(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = DILATION_RATIO) -> Dict[str, float]:
    """IoU, Dice, boundary IoU and pixel accuracy of one binary prediction (see the module docstring).

    Args:
        pred: H×W bool prediction.
        gt: H×W bool ground truth.
        dilation_ratio: boundary band width as a fraction of the image diagonal (0.02).
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"mask_metrics: prediction {pred.shape} and ground truth {gt.shape} must be H×W of one size")
    inter = int(np.count_nonzero(pred & gt))
    union = int(np.count_nonzero(pred | gt))
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    d = boundary_width(*gt.shape, dilation_ratio=dilation_ratio)
    bp, bg = mask_boundary_band(pred, d), mask_boundary_band(gt, d)
    return {
        "IoU": _ratio(inter, union),
        "Dice": _ratio(2 * inter, n_pred + n_gt),
        "BoundaryIoU": _ratio(int(np.count_nonzero(bp & bg)), int(np.count_nonzero(bp | bg))),
        "PixelAcc": float(gt.size - union + inter) / float(gt.size),
    }


def format_promptable_table(results: Mapping[str, Mapping]) -> str:
    """A short table (fractions) of IoU / Dice / BoundaryIoU / PixelAcc per dataset.

    Args:
        results: ``{dataset: {"promptable": {metric: value}}}`` (or ``{dataset: {metric: value}}``).
    """
    rows = []
    for name, res in results.items():
        m = res.get("promptable", res)
        rows.append([name, *(f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "-" for k in METRICS),
                     m.get("num_images", "-"), m.get("empty_gt", "-")])
    return tabulate(rows, headers=["dataset", *METRICS, "images", "empty GT"], tablefmt="pipe",
                    colalign=("left",) + ("right",) * (len(METRICS) + 2), disable_numparse=True)


class PromptableMaskEvaluator(DatasetEvaluator):
    """Average per-image mask metrics of a promptable model (one object per image).

    Reads ``inputs[i]["gt_mask"]`` (bool H×W, from the promptable mapper), ``inputs[i]["image_id"]``,
    optional ``inputs[i]["prompt_note"]`` / ``["mask_note"]``, and ``outputs[i]["masks"]``: bool
    [1, H, W] (or [H, W]) at the GT size.

    Args:
        dataset_name: name of the evaluated dataset (for messages and the table).
        distributed: gather the per-image records from every process.
        output_dir: where the per-image JSON is written (None: not written).
        dilation_ratio: boundary band width as a fraction of the image diagonal.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None,
                 dilation_ratio: float = DILATION_RATIO) -> None:
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.dilation_ratio = dilation_ratio
        self._records: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = inp.get("image_id", inp.get("file_name", "?"))
            if "gt_mask" not in inp:
                raise KeyError(f"{self.dataset_name}: input {image_id!r} has no 'gt_mask' (use the 'promptable' mapper)")
            gt = inp["gt_mask"]
            gt = gt.cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
            masks = out["masks"]
            masks = masks.detach().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
            if masks.ndim == 3:
                if masks.shape[0] != 1:
                    raise ValueError(f"{self.dataset_name}: image {image_id!r}: expected one mask per image, got {masks.shape[0]}")
                masks = masks[0]
            if masks.dtype != np.bool_:
                raise ValueError(f"{self.dataset_name}: image {image_id!r}: outputs['masks'] must be bool, got {masks.dtype}")
            if masks.shape != gt.shape:
                raise ValueError(f"{self.dataset_name}: image {image_id!r}: predicted mask {masks.shape} and GT mask "
                                 f"{gt.shape} differ in size (predictions must be at the mask size: height x width)")
            rec = {"image_id": str(image_id), **mask_metrics(masks, gt.astype(bool), self.dilation_ratio),
                   "gt_pixels": int(gt.sum()), "pred_pixels": int(masks.sum()),
                   "prompt_note": inp.get("prompt_note", ""), "mask_note": inp.get("mask_note", "")}
            self._records.append(rec)

    def evaluate(self) -> Optional[Dict[str, Dict[str, Any]]]:
        records = self._records
        if self.distributed:
            comm.synchronize()
            gathered = comm.gather(records, dst=0)
            if not comm.is_main_process():
                return None
            records = list(itertools.chain(*gathered))
        if not records:
            logger.warning(f"{self.dataset_name}: no predictions to evaluate")
            return {"promptable": {k: 0.0 for k in METRICS} | {"num_images": 0, "empty_gt": 0, "empty_pred": 0, "prompt_fallbacks": 0}}
        records = sorted(records, key=lambda r: r["image_id"])
        ids = [r["image_id"] for r in records]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise ValueError(f"{self.dataset_name}: image ids evaluated more than once: {dup} (image ids must be unique)")
        res: Dict[str, Any] = OrderedDict((k, float(np.mean([r[k] for r in records]))) for k in METRICS)
        res["num_images"] = len(records)
        res["empty_gt"] = sum(r["gt_pixels"] == 0 for r in records)
        res["empty_pred"] = sum(r["pred_pixels"] == 0 for r in records)
        res["prompt_fallbacks"] = sum(bool(r["prompt_note"]) for r in records)
        if res["empty_gt"] or res["prompt_fallbacks"]:
            logger.warning(f"{self.dataset_name}: {res['empty_gt']} image(s) with an empty GT mask, "
                           f"{res['prompt_fallbacks']} prompt(s) from a fallback rule (see {PER_IMAGE_FILE.format(self.dataset_name)})")
        if self.output_dir:
            with atomic_open(os.path.join(self.output_dir, PER_IMAGE_FILE.format(self.dataset_name)), "w") as f:
                json.dump({"dataset": self.dataset_name, "summary": res, "images": records}, f, indent=1)
        logger.info(f"Promptable-mask evaluation of {self.dataset_name} (fractions 0..1):\n"
                    + format_promptable_table({self.dataset_name: res}))
        return {"promptable": dict(res)}
