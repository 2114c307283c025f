"""Salient-object / dichotomous segmentation evaluator (evaluator_type "sod"), as MGD-SAM2 computes it.

Per image (MGD-SAM2's ``utils.calc_cod_p`` with batch 1, i.e. fresh metric objects per image):
``pred = sigmoid(mask_logits) × 255`` (float32, as the release; not rounded to uint8) and
``gt = GT value`` (0..255) go to pysodmetrics (``py_sod_metrics`` 1.6.2, lartpang's PySODMetrics,
which the release's ``sod_metric.py`` copies): the prediction is divided by 255 and min-max
normalised per image, the GT is object where value > 128. Per image: the F-measure curve (β² = 0.3,
256 thresholds; index i = threshold 255 − i), adaptive F, weighted F (β² = 0.3, the release's
default; pysodmetrics' own default is 1), S-measure (α 0.5), the E-measure curve, MAE; and HCE.

Dataset values (each a mean over images unless said otherwise):
- ``maxF`` = max over thresholds of the mean F-curve (the standard maxFβ; the release writes this
  curve to ``output_*.txt``); ``maxF_mean_of_max`` = mean over images of each image's max F (what
  the release prints as ``maxf``); ``meanF`` = mean of the mean F-curve; ``adpF``;
- ``wF``; ``S``; ``meanE`` = mean of the mean E-curve (the release's ``em``); ``maxE`` = its max; ``MAE``;
- ``HCE`` (human correction effort, DIS, ECCV 2022; lower is better): pysodmetrics'
  `HumanCorrectionEffortMeasure` (relax 5, ε 2.0) applied to ``pred > 128`` on the raw 0..255 map,
  as DIS's ``hce_metric_main.py`` (pysodmetrics' own default thresholds the min-max normalised map
  at 0.5, which differs when the map does not span 0..1; the rest of the computation is the same;
  DIS thresholds a saved 8-bit PNG, so pixels with 128 < p·255 < 129 may differ). Not computed (NaN)
  with ``compute_hce=False``.
E-measure values can exceed 1 slightly: pysodmetrics (and the release) divide by N − 1 pixels.

Results: ``{"sod": {...the values above, "num_images", "num_not_binary_gt"}}``. The full result,
the mean F and E curves and per-image values go to ``<output_dir>/sod_<dataset>.json`` (atomic).
Several processes: per-image records are gathered to the main process (comm.gather) and sorted by
image id, so 1 and N processes give equal numbers.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import py_sod_metrics as psm
import torch
from detectron2.evaluation import DatasetEvaluator
from tabulate import tabulate

from rass.evaluation.records import gather_image_records
from rass.utils.io import atomic_open

__all__ = ["SODEvaluator", "sod_image_metrics", "summarize_sod", "format_sod_table", "SOD_METRICS", "RESULT_FILE"]

logger = logging.getLogger(__name__)
SOD_METRICS = ("maxF", "maxF_mean_of_max", "meanF", "adpF", "wF", "S", "meanE", "maxE", "MAE", "HCE")
PER_IMAGE = ("maxF", "meanF", "adpF", "wF", "S", "meanE", "MAE", "HCE")
RESULT_FILE = "sod_{}.json"
GT_THRESHOLD = 128


def _new_fmeasure() -> "psm.Fmeasure":
    with warnings.catch_warnings():  # pysodmetrics marks Fmeasure (the release's class) as to be replaced
        warnings.simplefilter("ignore")
        return psm.Fmeasure(beta=0.3)


def sod_image_metrics(pred255: np.ndarray, gt255: np.ndarray, compute_hce: bool = True) -> Dict[str, Any]:
    """All metrics of one image, each from fresh pysodmetrics objects (as the release, batch 1).

    Args:
        pred255: H×W prediction in 0..255 (float: sigmoid probability × 255).
        gt255: H×W GT values 0..255 (object = value > 128).
        compute_hce: compute HCE (DIS's binarisation, see the module docstring); NaN otherwise.

    Returns:
        per-image scalars (`PER_IMAGE`) and the curves "F_curve", "E_curve" (256 values each).
    """
    if pred255.shape != gt255.shape or pred255.ndim != 2:
        raise ValueError(f"sod_image_metrics: prediction {pred255.shape} and GT {gt255.shape} must be H×W of one size")
    fm, wfm, sm, em, mae = _new_fmeasure(), psm.WeightedFmeasure(beta=0.3), psm.Smeasure(alpha=0.5), psm.Emeasure(), psm.MAE()
    for m in (fm, wfm, sm, em, mae):
        m.step(pred=pred255, gt=gt255)
    f = fm.get_results()["fm"]
    e = em.get_results()["em"]
    f_curve, e_curve = np.asarray(f["curve"], np.float64), np.asarray(e["curve"], np.float64)
    hce = math.nan
    if compute_hce:
        h = psm.HumanCorrectionEffortMeasure()
        h.step((pred255 > GT_THRESHOLD).astype(np.float64), gt255 > GT_THRESHOLD, normalize=False)
        hce = float(h.get_results()["hce"])
    return {
        "maxF": float(f_curve.max()), "meanF": float(f_curve.mean()), "adpF": float(f["adp"]),
        "wF": float(wfm.get_results()["wfm"]), "S": float(sm.get_results()["sm"]), "meanE": float(e_curve.mean()),
        "MAE": float(mae.get_results()["mae"]), "HCE": hce, "F_curve": f_curve, "E_curve": e_curve,
    }


def summarize_sod(records: List[Mapping[str, Any]]) -> Dict[str, Any]:
    """Dataset values from per-image records of `sod_image_metrics` (see the module docstring)."""
    f_mean = np.mean(np.stack([r["F_curve"] for r in records]), axis=0)
    e_mean = np.mean(np.stack([r["E_curve"] for r in records]), axis=0)
    res: Dict[str, Any] = OrderedDict()
    res["maxF"] = float(f_mean.max())
    res["maxF_mean_of_max"] = float(np.mean([r["maxF"] for r in records]))
    res["meanF"] = float(f_mean.mean())
    res["adpF"] = float(np.mean([r["adpF"] for r in records]))
    res["wF"] = float(np.mean([r["wF"] for r in records]))
    res["S"] = float(np.mean([r["S"] for r in records]))
    res["meanE"] = float(e_mean.mean())
    res["maxE"] = float(e_mean.max())
    res["MAE"] = float(np.mean([r["MAE"] for r in records]))
    res["HCE"] = float(np.mean([r["HCE"] for r in records]))
    res["num_images"] = len(records)
    res["F_curve"], res["E_curve"] = f_mean, e_mean
    return res


def format_sod_table(results: Mapping[str, Mapping]) -> str:
    """A short table of the SOD metrics per dataset.

    Args:
        results: ``{dataset: {"sod": {metric: value}}}`` (or ``{dataset: {metric: value}}``).
    """
    rows = []
    for name, res in results.items():
        m = res.get("sod", res)
        cells = []
        for k in SOD_METRICS:
            v = m.get(k)
            cells.append("-" if not isinstance(v, (int, float)) or math.isnan(v) else
                         (f"{v:.1f}" if k == "HCE" else f"{v:.4f}"))
        rows.append([name, *cells, m.get("num_images", "-")])
    return tabulate(rows, headers=["dataset", *SOD_METRICS, "images"], tablefmt="pipe",
                    colalign=("left",) + ("right",) * (len(SOD_METRICS) + 1), disable_numparse=True)


def _json_safe(d: Mapping[str, Any]) -> Dict[str, Any]:
    """`d` with NaN floats (HCE not computed) as None, so the file is strict JSON."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _gt255(gt: Any) -> np.ndarray:
    """GT as 0..255 values: a float mask in [0, 1] (the "mgd_sod" mapper) ×255 rounded, bool ×255, uint8 as is."""
    gt = gt.detach().cpu().numpy() if isinstance(gt, torch.Tensor) else np.asarray(gt)
    if gt.dtype == np.bool_:
        return gt.astype(np.float32) * 255
    if np.issubdtype(gt.dtype, np.floating):
        return np.round(gt.astype(np.float64) * 255).astype(np.float32)
    return gt.astype(np.float32)


class SODEvaluator(DatasetEvaluator):
    """SOD / DIS metrics of a prompt-free binary segmentation model (see the module docstring).

    Reads ``inputs[i]["gt_mask"]`` (H×W in [0, 1], from the "mgd_sod" test mapper; bool or uint8
    0..255 accepted), ``inputs[i]["image_id"]``, optional ``["mask_note"]``, and
    ``outputs[i]["mask_logits"]``: [1, H, W] or [H, W] logits at the GT size.

    Args:
        dataset_name: name of the evaluated dataset (for messages, the table and the JSON file name).
        distributed: gather the per-image records from every process.
        output_dir: where ``sod_<dataset>.json`` is written (None: not written).
        compute_hce: compute HCE (slow on large images: Python loops over contour points).
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None,
                 compute_hce: bool = True) -> None:
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.compute_hce = compute_hce
        self._records: List[Dict[str, Any]] = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            image_id = str(inp.get("image_id", inp.get("file_name", "?")))
            if "gt_mask" not in inp:
                raise KeyError(f"{self.dataset_name}: input {image_id!r} has no 'gt_mask' (use the 'mgd_sod' mapper)")
            if "mask_logits" not in out:
                raise KeyError(f"{self.dataset_name}: output of {image_id!r} has no 'mask_logits' (got {sorted(out)})")
            gt = _gt255(inp["gt_mask"])
            logits = out["mask_logits"].detach().float().cpu()
            if logits.ndim == 3 and logits.shape[0] == 1:
                logits = logits[0]
            if logits.shape != gt.shape:
                raise ValueError(f"{self.dataset_name}: image {image_id!r}: mask_logits {tuple(out['mask_logits'].shape)} "
                                 f"and GT mask {gt.shape} differ (expected [1, H, W] or [H, W] logits at the GT size)")
            pred255 = torch.sigmoid(logits).numpy() * np.float32(255)  # float32, as the release
            rec = {"image_id": image_id, **sod_image_metrics(pred255, gt, self.compute_hce),
                   "gt_pixels": int((gt > GT_THRESHOLD).sum()), "mask_note": inp.get("mask_note", "")}
            self._records.append(rec)

    def evaluate(self) -> Optional[Dict[str, Dict[str, Any]]]:
        records = gather_image_records(self._records, self.distributed, self.dataset_name)
        if records is None:
            return None
        if not records:
            logger.warning(f"{self.dataset_name}: no predictions to evaluate")
            return {"sod": {k: math.nan for k in SOD_METRICS} | {"num_images": 0, "num_not_binary_gt": 0}}
        full = summarize_sod(records)
        f_curve, e_curve = full.pop("F_curve"), full.pop("E_curve")
        full["num_not_binary_gt"] = sum(r["mask_note"] == "not_binary" for r in records)
        if self.output_dir:
            images = [_json_safe({k: v for k, v in r.items() if k not in ("F_curve", "E_curve")}) for r in records]
            with atomic_open(os.path.join(self.output_dir, RESULT_FILE.format(self.dataset_name)), "w") as f:
                json.dump({"dataset": self.dataset_name, "summary": _json_safe(full),
                           "curves": {"index": "i = threshold 255 - i (pysodmetrics)", "F": f_curve.tolist(),
                                      "E": e_curve.tolist()},
                           "images": images}, f, indent=1)
        logger.info(f"SOD evaluation of {self.dataset_name} (F, E, S, MAE in 0..1; HCE in control points, lower is "
                    "better):\n" + format_sod_table({self.dataset_name: full}))
        return {"sod": dict(full)}
