"""Semantic-segmentation evaluation: detectron2's evaluator with checked label loading, a
per-class Boundary IoU and short, readable log tables."""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.comm import all_gather, synchronize
from tabulate import tabulate

from rass.utils.errors import UserValueError
from rass.utils.image_io import check_labels, exif_note, load_label
from rass.utils.io import atomic_open

from .boundary import DILATION_RATIO, boundary_counts
from .rle import label_rles

__all__ = ["CheckedSemSegEvaluator", "argmax_labels", "format_results_table", "format_class_table",
           "write_eval_results"]

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("mIoU", "fwIoU", "mACC", "pACC", "mBoundaryIoU")
MISSING = "–"  # printed instead of NaN / a metric that was not computed


class _DropResultDict(logging.Filter):
    """Drops the record `SemSegEvaluator.evaluate` logs with the whole result dict (one line of
    ~20,000 characters for 150 classes); the dict goes to eval_results.json instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(record.msg, Mapping)


_detectron2_log = logging.getLogger(__name__ + ".detectron2")
_detectron2_log.addFilter(_DropResultDict())


def argmax_labels(scores: torch.Tensor) -> np.ndarray:
    """``scores.argmax(dim=0)`` as an H x W int64 numpy array (the first class on ties), several
    times faster on the CPU: torch's arg-max over the leading dimension runs element by element
    (1.6 s for 150 x 2048 x 1024 scores), while numpy's maximum and one vectorised comparison per
    class, from the last class down, take a fraction of that, in one thread (no per-class thread
    start-ups that a busy machine makes expensive). NaN scores (whose arg-max numpy's maximum cannot
    locate), types numpy lacks and non-CPU tensors use torch's ``argmax`` itself.

    Args:
        scores: K x H x W class scores.
    """
    scores = scores.detach()
    if scores.device.type != "cpu" or scores.dtype not in (torch.float32, torch.float64) or not len(scores):
        return scores.argmax(dim=0).cpu().numpy()
    if scores.permute(1, 2, 0).is_contiguous() and not scores.is_contiguous():  # channels last
        hwk = scores.permute(1, 2, 0).numpy()
        labels = hwk.argmax(axis=2)  # a NaN anywhere along the classes is what numpy's arg-max picks
        nan = np.isnan(np.take_along_axis(hwk, labels[..., None], axis=2)).any()
        return labels if not nan else scores.argmax(dim=0).numpy()
    s = scores.contiguous().numpy()
    best = s.max(axis=0)
    if np.isnan(best).any():
        return scores.argmax(dim=0).numpy()
    labels = np.zeros(best.shape, np.uint8 if len(s) <= 256 else np.int64)
    equal = np.empty(best.shape, bool)
    for k in range(len(s) - 1, 0, -1):  # downwards: the lowest class with the maximum wins
        np.equal(s[k], best, out=equal)
        np.copyto(labels, k, where=equal)
    np.equal(s[0], best, out=equal)
    np.copyto(labels, 0, where=equal)
    return labels.astype(np.int64, copy=False)


class CheckedSemSegEvaluator(SemSegEvaluator):
    """`SemSegEvaluator` that reads labels with `np.asarray` (numpy 2), checks label values and
    that each prediction has its annotation's size (naming the file when not), and replaces
    detectron2's label-map "BoundaryIoU" by a per-class Boundary IoU (`rass.evaluation.boundary`).

    `process` computes detectron2's confusion matrix and RLE predictions with the same results but
    takes each image's arg-max once (`argmax_labels`), encodes all classes' RLEs from one pass
    (`rass.evaluation.rle`) and only when `output_dir` is set (they are written nowhere else), and
    gets the boundary bands of every class from one min / max filter of each label map (see
    tests/test_sem_seg_evaluator.py for the references it is compared with).

    Results (``{"sem_seg": {...}}``, in %): detectron2's mIoU, fwIoU, mACC, pACC, ``IoU-<class>``
    and ``ACC-<class>`` (NaN for a class absent from the ground truth, as detectron2), plus
    ``mBoundaryIoU`` and ``BoundaryIoU-<class>``: band intersection / union summed over the
    dataset, reported only for classes whose ground-truth or predicted band is non-empty, and
    averaged over those. Instead of the whole dict, `evaluate` logs a per-class table of the
    classes present in the ground truth or the prediction.

    Args:
        dataset_name: registered dataset.
        distributed: gather results across processes.
        output_dir: where detectron2 writes `sem_seg_predictions.json` (None: nowhere).
        boundary_dilation_ratio: Boundary IoU band width as a fraction of the image diagonal.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        boundary_dilation_ratio: float = DILATION_RATIO,
    ) -> None:
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=self._load_checked)
        self._compute_boundary_iou = False  # detectron2's version erodes the label map as a whole
        self._logger = _detectron2_log
        self._boundary_ratio = float(boundary_dilation_ratio)

    def reset(self) -> None:
        super().reset()
        k = self._num_classes
        self._b_inter, self._b_gt, self._b_pred = (np.zeros(k, dtype=np.int64) for _ in range(3))

    def _load_checked(self, path: str, dtype=int) -> np.ndarray:
        label = load_label(path, np.int64)
        self._check_values(label, path)
        return label.astype(dtype, copy=False)

    def _check_values(self, label: np.ndarray, path: str) -> None:
        bad = (label < 0) | (label >= self._num_classes)
        if bad.any() and (label[bad] != self._ignore_label).any():  # check_labels names them (np.unique: slow)
            check_labels(label, self._num_classes, self._ignore_label, path)

    def _load_for(self, inp: Dict, scores: torch.Tensor) -> np.ndarray:
        """The checked annotation of `inp`, refused by name when its size is not the prediction's."""
        gt_file = self.input_file_to_gt_file[inp["file_name"]]
        label = load_label(gt_file, np.int64)
        (h, w), (ph, pw) = label.shape, scores.shape[-2:]
        if (ph, pw) != (h, w):
            note = exif_note(inp["file_name"], inp.get("exif_applied", True))
            raise UserValueError(
                f"Annotation {gt_file} has size {w}x{h} (WxH) but image {inp['file_name']} "
                f"gives a prediction of size {pw}x{ph} (WxH, the image's size)" + (note[0] if note else ""),
                hint=note[1] if note else None,
            )
        if scores.shape[0] > self._num_classes:
            raise UserValueError(
                f"The model gives {scores.shape[0]} class scores for {inp['file_name']} but {self._dataset_name} "
                f"has {self._num_classes} classes", hint="MODEL.SEM_SEG_HEAD.NUM_CLASSES must match the dataset")
        self._check_values(label, gt_file)
        return label

    def process(self, inputs, outputs) -> None:
        """Add each image's confusion matrix (detectron2's, with the ignore label as the extra
        last row / column), boundary counts and, with an output_dir, detectron2's RLE predictions.

        Args:
            inputs: dataset dicts (with "file_name").
            outputs: model outputs, each with "sem_seg" (K x H x W scores at the image's size).
        """
        k = self._num_classes
        for inp, out in zip(inputs, outputs):
            gt = self._load_for(inp, out["sem_seg"])
            pred = argmax_labels(out["sem_seg"])
            index = pred * (k + 1) + np.where(gt == self._ignore_label, k, gt)
            self._conf_matrix += np.bincount(index.ravel(), minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
            inter, b_gt, b_pred = boundary_counts(gt, pred, k, self._ignore_label, self._boundary_ratio)
            self._b_inter += inter
            self._b_gt += b_gt
            self._b_pred += b_pred
            if self._output_dir:  # only written there (detectron2 encodes and gathers them always)
                self._predictions.extend(self.encode_json_sem_seg(pred, inp["file_name"]))

    def encode_json_sem_seg(self, sem_seg: np.ndarray, input_file_name: str) -> List[Dict]:
        """detectron2's COCO-stuff records (one RLE per class present), from one pass over the
        label map (`label_rles`) instead of one mask and one `pycocotools` call per class.

        Args:
            sem_seg: H x W predicted label map.
            input_file_name: the image, recorded in each record.
        """
        to_dataset = self._contiguous_id_to_dataset_id
        records = []
        for label, rle in zip(*label_rles(sem_seg)):
            if to_dataset is not None and label not in to_dataset:
                raise ValueError(f"Label {label} is not in the metadata info for {self._dataset_name}")
            rle["counts"] = rle["counts"].decode("utf-8")
            records.append({"file_name": input_file_name,
                            "category_id": to_dataset[label] if to_dataset is not None else int(label),
                            "segmentation": rle})
        return records

    def evaluate(self) -> Optional[Dict]:
        """Gather, compute the metrics, log the per-class table (main process) and return
        ``{"sem_seg": metrics}``; None on the other processes."""
        if self._distributed:
            synchronize()
            gathered = all_gather((self._b_inter, self._b_gt, self._b_pred))
            self._b_inter, self._b_gt, self._b_pred = (sum(g[i] for g in gathered) for i in range(3))
        results = super().evaluate()  # gathers the confusion matrix; None on other processes
        if results is None:
            return None
        res = results["sem_seg"]
        union = self._b_gt + self._b_pred - self._b_inter
        present = union > 0
        b_iou = np.where(present, self._b_inter / np.maximum(union, 1), np.nan)
        out = OrderedDict((k, float(res[k])) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
        out["mBoundaryIoU"] = 100 * float(b_iou[present].mean()) if present.any() else float("nan")
        for prefix in ("IoU-", "BoundaryIoU-", "ACC-"):
            for i, name in enumerate(self._class_names):
                if prefix == "BoundaryIoU-":
                    if present[i]:
                        out[prefix + name] = 100 * float(b_iou[i])
                else:
                    out[prefix + name] = float(res[prefix + name])
        if self._output_dir:  # detectron2 saved the dict without the boundary metrics; plain floats
            # load with torch.load(..., weights_only=True)
            with atomic_open(os.path.join(self._output_dir, "sem_seg_evaluation.pth"), "wb") as f:
                torch.save(dict(out), f)
        conf = self._conf_matrix[:-1, :-1]
        shown = [n for i, n in enumerate(self._class_names) if conf[:, i].sum() > 0 or conf[i, :].sum() > 0]
        logger.info(f"Per-class results on {self._dataset_name} ({len(shown)} classes present in the "
                    f"ground truth or the prediction):\n" + format_class_table(out, shown))
        return OrderedDict({"sem_seg": out})


def _num(value) -> Optional[float]:
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    return float(value)


def _cell(value) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.2f}"


def format_class_table(metrics: Mapping, class_names: Sequence[str]) -> str:
    """A text table (class, IoU, Acc, BoundaryIoU in %) of the given classes.

    Args:
        metrics: one evaluator result (``IoU-<class>``, ``ACC-<class>``, ``BoundaryIoU-<class>``).
        class_names: the classes to list, in order.

    Returns:
        The table; a value that is NaN or was not computed is printed as "–" (IoU / Acc of a class
        absent from the ground truth, which mIoU / mACC leave out).
    """
    rows = [[n, _cell(metrics.get(f"IoU-{n}")), _cell(metrics.get(f"ACC-{n}")), _cell(metrics.get(f"BoundaryIoU-{n}"))]
            for n in class_names]
    table = tabulate(rows, headers=["class", "IoU", "Acc", "BoundaryIoU"], tablefmt="pipe",
                     colalign=("left", "right", "right", "right"), disable_numparse=True)
    return table + f"\n({MISSING}: class absent from the ground truth, not in mIoU / mACC)"


def format_results_table(results: Mapping) -> str:
    """A short text table of mIoU / fwIoU / mACC / pACC / mBoundaryIoU (%) per dataset.

    Args:
        results: ``{dataset: {"sem_seg": {metric: value}}}`` (or ``{dataset: {metric: value}}``).
    """
    rows = []
    for name, res in results.items():
        m = res.get("sem_seg", res) if isinstance(res, Mapping) else {}
        rows.append([name, *(_cell(m.get(k)) for k in SUMMARY_METRICS)])
    return tabulate(rows, headers=["dataset", *SUMMARY_METRICS], tablefmt="pipe",
                    colalign=("left",) + ("right",) * len(SUMMARY_METRICS), disable_numparse=True)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_eval_results(results: Dict, path: str) -> None:
    """Write the evaluation result dict (dataset -> task -> metric) as strict JSON (NaN -> null),
    atomically."""
    with atomic_open(path, "w") as f:
        json.dump(_jsonable(results), f, indent=2, allow_nan=False)
