"""COCO run-length encodings of every class of a label map from one pass over the map.

detectron2's `SemSegEvaluator.encode_json_sem_seg` encodes ``label == c`` for each class c present
with `pycocotools.mask.encode`, which builds and scans a full-size Fortran-ordered mask per class
(150 masks for a noisy ADE20K prediction). A class's COCO RLE is fully determined by the runs of
the label map in column-major order: its counts are the gaps between that class's runs and their
lengths, starting with the pixels before its first run (0 when it starts the image) and ending
with its last run or the pixels after it. `label_rles` finds the runs once and hands all the count
lists to pycocotools, which compresses them to the same strings `encode` gives.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pycocotools.mask as mask_util

__all__ = ["label_rles"]


def label_rles(label: np.ndarray) -> Tuple[np.ndarray, List[dict]]:
    """The classes present in a label map and, per class c, the compressed COCO RLE of
    ``label == c``: the same dict (``{"size": [H, W], "counts": bytes}``) as
    ``pycocotools.mask.encode(np.asfortranarray((label == c).astype(np.uint8)[:, :, None]))[0]``.

    Args:
        label: H x W integer label map.

    Returns:
        ``(classes, rles)``: the values present in increasing order (as `np.unique`) and one RLE
        per value.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label_rles expects an H x W label map, got shape {label.shape}")
    h, w = label.shape
    flat = label.T.ravel()  # COCO RLE runs down the columns
    n = flat.size
    if n == 0:
        return flat[:0], []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    values = flat[starts]
    order = np.argsort(values, kind="stable")  # each class's runs stay in image order
    classes, first = np.unique(values[order], return_index=True)
    bounds = np.append(first, len(order))
    counts = []
    for i in range(len(classes)):
        runs = order[bounds[i]:bounds[i + 1]]
        s, e = starts[runs], ends[runs]
        c = np.empty(2 * len(runs) + 1, dtype=np.int64)
        c[0] = s[0]  # pixels before the first run
        c[1::2] = e - s  # the runs
        c[2:-1:2] = s[1:] - e[:-1]  # the gaps between runs
        c[-1] = n - e[-1]  # pixels after the last run: no count when the class ends the image
        counts.append({"size": [h, w], "counts": c if c[-1] else c[:-1]})
    return classes, mask_util.frPyObjects(counts, h, w)  # a list of uncompressed RLEs: compressed
