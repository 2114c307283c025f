"""Generated semantic-evaluation cases (label maps with ignore pixels and class scores with ties),
shared by the evaluator's reference tests and its one- vs two-process test."""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
import torch
from PIL import Image

NUM_CLASSES = 7
IGNORE = 255
CLASSES = [f"class{i}" for i in range(NUM_CLASSES)]
# (kind, H, W): noise, blobs and stripes; thin, tiny and non-square images
SHAPES = [("noise", 31, 47), ("blobs", 40, 33), ("blobs", 64, 64), ("stripes", 9, 70), ("blobs", 60, 80),
          ("noise", 3, 50), ("stripes", 1, 5), ("blobs", 97, 23), ("blobs", 150, 200)]


def label_map(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """An H x W int64 label map in 0..NUM_CLASSES-1 with ignore pixels, including on the border."""
    g = np.random.default_rng(seed)
    if kind == "noise":
        label = g.integers(0, NUM_CLASSES, (h, w))
    elif kind == "blobs":
        small = g.integers(0, NUM_CLASSES, (h // 5 + 1, w // 5 + 1))
        label = np.kron(small, np.ones((5, 5), np.int64))[:h, :w]
    else:  # vertical stripes of random widths
        label = np.repeat(g.integers(0, NUM_CLASSES, w), g.integers(1, 5, w))[:w][None].repeat(h, 0)
    label = label.astype(np.int64)
    label[g.random((h, w)) < 0.05] = IGNORE
    label[:, -1] = np.where(g.random(h) < 0.5, IGNORE, label[:, -1])  # ignore along the right border
    return label


def scores_for(label: np.ndarray, seed: int) -> torch.Tensor:
    """K x H x W scores from a few integer levels (many ties between classes), biased toward the
    label so that the prediction is partly right."""
    g = np.random.default_rng(seed + 1000)
    s = g.integers(0, 3, (NUM_CLASSES, *label.shape)).astype(np.float32)
    h, w = np.nonzero(label != IGNORE)
    s[label[h, w], h, w] += g.integers(0, 3, h.size)
    return torch.from_numpy(s)


def cases() -> List[Tuple[str, np.ndarray, torch.Tensor]]:
    """(image file name, ground truth, scores) per generated image."""
    out = []
    for i, (kind, h, w) in enumerate(SHAPES):
        gt = label_map(kind, h, w, seed=i)
        out.append((f"img_{i}.jpg", gt, scores_for(gt, seed=i)))
    return out


def write_labels(folder: str) -> List[dict]:
    """Write the cases' ground truth as label PNGs; the dataset records (images never read)."""
    records = []
    for name, gt, _ in cases():
        path = os.path.join(folder, name.replace(".jpg", ".png"))
        Image.fromarray(gt.astype(np.uint8)).save(path)
        records.append({"file_name": name, "sem_seg_file_name": path})
    return records


def register(name: str, records: List[dict]) -> None:
    """Register the records as a NUM_CLASSES-class dataset."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE)
