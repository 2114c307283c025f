"""Semantic-segmentation evaluation: detectron2's evaluator with checked label loading."""
from __future__ import annotations

import json
import math
from typing import Dict, Optional

import numpy as np
from detectron2.evaluation import SemSegEvaluator
from PIL import Image

from rass.data.dataset_mappers.io import check_labels, load_label
from rass.utils.io import atomic_open


class CheckedSemSegEvaluator(SemSegEvaluator):
    """`SemSegEvaluator` that reads labels with `np.asarray` (numpy 2), checks label values and
    that each prediction has its annotation's size, and names the file when one does not.

    Args:
        dataset_name: registered dataset.
        distributed: gather results across processes.
        output_dir: where detectron2 writes `sem_seg_predictions.json` (None: nowhere).
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None) -> None:
        super().__init__(dataset_name, distributed, output_dir, sem_seg_loading_fn=self._load_checked)

    def _load_checked(self, path: str, dtype=int) -> np.ndarray:
        label = load_label(path, np.int64)
        check_labels(label, self._num_classes, self._ignore_label, path)
        return label.astype(dtype)

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            with Image.open(gt_file) as im:
                w, h = im.size
            ph, pw = out["sem_seg"].shape[-2:]
            if (ph, pw) != (h, w):
                raise ValueError(
                    f"Annotation {gt_file} has size {w}x{h} (WxH) but image {inp['file_name']} "
                    f"gives a prediction of size {pw}x{ph} (WxH, the image's size)"
                )
        super().process(inputs, outputs)


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


def format_results_table(results: Dict) -> str:
    """A short text table of mIoU / fwIoU / mACC / pACC per dataset."""
    lines = [f"{'dataset':<34} {'mIoU':>7} {'fwIoU':>7} {'mACC':>7} {'pACC':>7}"]
    for name, res in results.items():
        m = res.get("sem_seg", res) if isinstance(res, dict) else {}
        vals = [m.get(k, float("nan")) for k in ("mIoU", "fwIoU", "mACC", "pACC")]
        lines.append(f"{name:<34} " + " ".join(f"{v:7.2f}" for v in vals))
    return "\n".join(lines)
