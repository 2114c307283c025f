"""Drawing predictions: class-colour overlays with legends, SAM / GleSAM masks with their prompts, and
the evaluation's input | ground truth | prediction panels (PNG files)."""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from rass.utils.image_io import load_label, read_image_checked
from rass.utils.io import save_image_atomic

# SAM / GleSAM masks in the demos' overlays (RGB)
MASK_COLOR = (30, 144, 255)


def colorize(label: np.ndarray, colors: List[List[int]], ignore_label: int = 255) -> np.ndarray:
    """Map an H x W label map to an RGB image (ignored pixels black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    lut[ignore_label] = 0
    return lut[np.clip(label, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, colors: List[List[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an RGB uint8 image."""
    col = colorize(label, colors).astype(np.float32)
    return np.clip(image.astype(np.float32) * (1 - alpha) + col * alpha, 0, 255).astype(np.uint8)


def class_areas(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel count per class id."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]


def short_name(name: str) -> str:
    """The first of a class's synonyms ("poster, posting, placard" -> "poster")."""
    return name.split(",")[0].strip()


def draw_legend(image: np.ndarray, areas: np.ndarray, class_names: Sequence[str], colors: Sequence[Sequence[int]],
                max_rows: int = 12) -> np.ndarray:
    """Draw a box with a colour swatch and the name of every class present (largest first) in the
    top-left corner of an RGB image (returns a new image).

    Args:
        image: H x W x 3 uint8 RGB.
        areas: pixel count per class id (`class_areas`).
        class_names: name per class id.
        colors: RGB colour per class id.
        max_rows: classes listed before "+N more".
    """
    out = image.copy()
    present = [int(c) for c in np.argsort(-areas, kind="stable") if areas[c] > 0]
    rows = [(c, short_name(class_names[c])) for c in present[:max_rows]]
    if len(present) > max_rows:
        rows.append((-1, f"+{len(present) - max_rows} more"))
    if not rows:
        return out
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, float(np.clip(min(image.shape[:2]) / 700.0, 0.3, 1.0))
    sizes = [cv2.getTextSize(text, font, scale, 1) for _, text in rows]
    line = max(h + b for (_, h), b in sizes) + 4
    pad, swatch = 4, line - 4
    width = 3 * pad + swatch + max(w for (w, _), _ in sizes)
    height = 2 * pad + line * len(rows)
    region = out[:height, :width]
    region[:] = (region.astype(np.float32) * 0.35).astype(np.uint8)  # darkened background
    for i, (c, text) in enumerate(rows):
        y = pad + i * line
        if c >= 0:
            cv2.rectangle(out, (pad, y + 2), (pad + swatch, y + 2 + swatch - 1), tuple(int(v) for v in colors[c]), -1)
        cv2.putText(out, text, (2 * pad + swatch, y + line - 4 - sizes[i][1]), font, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def draw(image: np.ndarray, mask: Optional[np.ndarray], prompt: Dict, opacity: float, title: str = "") -> np.ndarray:
    """The image with a mask tinted (outlined in white) and its prompts drawn: positive points green,
    negative red, the box blue.

    Args:
        image: H x W x 3 uint8 RGB.
        mask: H x W bool, or None to draw the prompts only.
        prompt: {"points": [[x, y], ...], "labels": [1 | 0, ...], "box": [x1, y1, x2, y2] or None}.
        opacity: weight of the mask colour.
        title: text written in the top-left corner ("" for none).

    Returns:
        A new H x W x 3 uint8 RGB image.
    """
    out = image.astype(np.float32)
    if mask is not None:
        out[mask] = (1 - opacity) * out[mask] + opacity * np.asarray(MASK_COLOR, np.float32)
    out = np.ascontiguousarray(out.round().astype(np.uint8))
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    r = max(3, round(max(image.shape[:2]) / 100))
    if prompt.get("box") is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in prompt["box"])
        cv2.rectangle(out, (x1, y1), (x2, y2), (40, 90, 255), max(1, r // 2))
    for (x, y), label in zip(prompt.get("points") or [], prompt.get("labels") or []):
        color = (40, 220, 40) if label == 1 else (230, 40, 40)
        cv2.circle(out, (int(round(x)), int(round(y))), r, color, -1)
        cv2.circle(out, (int(round(x)), int(round(y))), r, (255, 255, 255), 1)
    if title:
        cv2.putText(out, title, (5, 5 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 2, cv2.LINE_AA)
        cv2.putText(out, title, (5, 5 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 1.0


@torch.no_grad()
def write_overlays(model: torch.nn.Module, mapper, dataset_name: str, out_dir: str, num: int) -> List[str]:
    """Run `model` on the first `num` images of a dataset and write overlay PNGs.

    Args:
        model: a detectron2 semantic-segmentation model (eval mode is set here and restored).
        mapper: the test dataset mapper (dataset dict -> model input).
        dataset_name: registered dataset.
        out_dir: output folder.
        num: number of images.

    Returns:
        the written file paths.
    """
    meta = MetadataCatalog.get(dataset_name)
    colors = meta.get("stuff_colors")
    dicts = DatasetCatalog.get(dataset_name)[:num]
    was_training = model.training
    model.eval()
    paths = []
    try:
        for d in dicts:
            inp = mapper(dict(d))
            pred = model([inp])[0]["sem_seg"].argmax(0).cpu().numpy()
            image = read_image_checked(d["file_name"], "RGB")
            gt = load_label(d["sem_seg_file_name"])
            panel = np.concatenate([image, overlay(image, gt, colors), overlay(image, pred, colors)], axis=1)
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
            save_image_atomic(path, panel)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
