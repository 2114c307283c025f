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

Pictures (``num_vis`` > 0, TEST.NUM_VIS): the first ``num_vis`` images the main process sees are drawn as
image | GT | <model> grids (`rass.evaluation.visualize.promptable_grid`: titles, the prompts, each mask's IoU)
into ``vis_dir`` (default ``<output_dir>/vis``), one atomic PNG per image named by its image id; with
`use_model` a GleSAM model's plain-SAM mask (the same SAM, no enhancement) gets a panel too, before GleSAM's.

Results: ``{"promptable": {"IoU", "Dice", "BoundaryIoU", "PixelAcc", "num_images", "empty_gt",
"empty_pred", "prompt_fallbacks"}}``; per-image values in ``<output_dir>/promptable_per_image_<dataset>.json``.
Under several processes the per-image records are gathered to the main process (comm.gather), so
the averages do not depend on the process count.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
import re
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from rass.evaluation.records import gather_image_records
from rass.utils.io import atomic_open, save_image_atomic

from .boundary import DILATION_RATIO, boundary_width, mask_boundary_band

__all__ = ["PromptableMaskEvaluator", "mask_metrics", "mean_pairwise_iou", "format_promptable_table", "METRICS"]

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


def mean_pairwise_iou(masks) -> float:
    """Stability of one object's masks under K prompt draws: the mean IoU over the K(K-1)/2 pairs (a pair of two
    empty masks counts 1, as `mask_metrics`); 1.0 for K = 1 (nothing varies).

    Args:
        masks: K bool H x W masks (a sequence or a K x H x W array).
    """
    flat = np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in masks]) if len(masks) else np.zeros((0, 0), bool)
    if flat.shape[0] < 2:
        return 1.0
    f = flat.astype(np.float64)
    inter = f @ f.T
    area = f.sum(axis=1)
    union = area[:, None] + area[None, :] - inter
    i, j = np.triu_indices(flat.shape[0], k=1)
    iou = np.where(union[i, j] > 0, inter[i, j] / np.maximum(union[i, j], 1.0), 1.0)
    return float(iou.mean())


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
        num_vis: how many image | GT | mask grids to write (TEST.NUM_VIS; 0: none).
        vis_dir: where they go (default ``<output_dir>/vis``; nothing is drawn without either).
        model_name: the title of the evaluated model's panel.
        compare: further models drawn next to it on the same inputs, by panel title (e.g. {"SAM":
            plain SAM}); each maps a list of input dicts to outputs with "masks". See `use_model`.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None,
                 dilation_ratio: float = DILATION_RATIO, num_vis: int = 0, vis_dir: Optional[str] = None,
                 model_name: str = "prediction", compare: Optional[Dict[str, Callable]] = None) -> None:
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.dilation_ratio = dilation_ratio
        self.num_vis = max(0, int(num_vis))
        self.vis_dir = vis_dir or (os.path.join(output_dir, "vis") if output_dir else None)
        self.model_name = model_name
        self.compare: Dict[str, Callable] = dict(compare or {})
        self.vis_paths: List[str] = []
        self._records: List[Dict[str, Any]] = []

    def use_model(self, model: torch.nn.Module) -> "PromptableMaskEvaluator":
        """Name the evaluated model's panel after it and, for a GleSAM model (a "PromptableSAM" with
        its enhancer), draw plain SAM's mask (`model.plain_sam()`: the same SAM, no enhancement) too.

        Args:
            model: the evaluated model (unwrapped from DistributedDataParallel).

        Returns:
            self.
        """
        enhanced = getattr(model, "enhancer", None) is not None and hasattr(model, "plain_sam")
        if hasattr(model, "sam"):
            self.model_name = "GleSAM" if enhanced else "SAM"
        if enhanced and self.num_vis:
            self.compare = {"SAM": model.plain_sam(), **self.compare}
        return self

    def reset(self) -> None:
        self._records = []
        self.vis_paths = []

    def _draw(self, inp: Dict, mask: np.ndarray, gt: np.ndarray, image_id: str) -> None:
        """Write the grid of one input (see the module doc)."""
        from .visualize import promptable_grid

        if "image" not in inp:
            raise KeyError(f"{self.dataset_name}: input {image_id!r} has no 'image' to draw (num_vis > 0 needs the "
                           f"'promptable' mapper's inputs)")
        image = inp["image"]
        image = (image.cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)).transpose(1, 2, 0)
        prompt: Dict[str, Any] = {"points": [], "labels": [], "box": None}
        if inp.get("point_coords") is not None:
            coords = np.asarray(torch.as_tensor(inp["point_coords"]).reshape(-1, 2).cpu())
            labels = np.asarray(torch.as_tensor(inp["point_labels"]).reshape(-1).cpu())
            keep = labels >= 0  # -1: padding
            prompt["points"], prompt["labels"] = coords[keep].tolist(), labels[keep].astype(int).tolist()
        if inp.get("boxes") is not None:
            prompt["box"] = np.asarray(torch.as_tensor(inp["boxes"]).reshape(-1, 4)[0].cpu()).tolist()
        masks: Dict[str, np.ndarray] = {}
        for name, other in self.compare.items():
            m = other([inp])[0]["masks"]
            m = m.detach().cpu().numpy() if isinstance(m, torch.Tensor) else np.asarray(m)
            masks[name] = m.reshape(m.shape[-2:]).astype(bool)
        masks[self.model_name] = mask
        grid = promptable_grid(np.ascontiguousarray(image.astype(np.uint8)), gt, masks, prompt, title=image_id)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", image_id).strip("._") or f"image{len(self.vis_paths)}"
        path = os.path.join(self.vis_dir, f"{name}.png")
        save_image_atomic(path, grid)
        self.vis_paths.append(path)

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
            if self.vis_dir and len(self.vis_paths) < self.num_vis and (not self.distributed or comm.is_main_process()):
                self._draw(inp, masks, gt.astype(bool), str(image_id))

    def evaluate(self) -> Optional[Dict[str, Dict[str, Any]]]:
        records = gather_image_records(self._records, self.distributed, self.dataset_name)
        if records is None:
            return None
        if not records:
            logger.warning(f"{self.dataset_name}: no predictions to evaluate")
            return {"promptable": {k: 0.0 for k in METRICS} | {"num_images": 0, "empty_gt": 0, "empty_pred": 0, "prompt_fallbacks": 0}}
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
