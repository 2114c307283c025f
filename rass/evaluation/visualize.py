"""Drawing predictions: class-colour overlays with legends, SAM / GleSAM masks with their prompts, and
the evaluations' pictures (PNG files, written atomically): semantic input | ground truth | prediction
panels with titles and a legend of the classes present (`write_overlays`), promptable image | GT |
SAM | GleSAM grids with the prompts drawn and each mask's IoU (`promptable_grid`).

Panels smaller than `MIN_PANEL` pixels are enlarged by an integer factor (nearest neighbour: every
pixel stays a visible square) so that titles fit; the title says the real size.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from rass.utils.image_io import load_label, read_image_checked
from rass.utils.io import save_image_atomic

# SAM / GleSAM masks in the demos' overlays (RGB)
MASK_COLOR = (30, 144, 255)
# Panels of the evaluation pictures are enlarged (integer factor, nearest) until their longest side reaches this.
MIN_PANEL = 256
# Title bar and legend text (RGB).
_INK, _PAPER = (0, 0, 0), (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def format_score(value: float) -> str:
    """A score in [0, 1] for people: clamped to [0, 1], two decimals ("0.87"; a model's -0.004 is "0.00").

    Args:
        value: the score (e.g. SAM's predicted IoU, which is a regression output and may leave [0, 1]).
    """
    return f"{min(max(float(value), 0.0), 1.0):.2f}"


def display_factor(height: int, width: int, target: int = MIN_PANEL) -> int:
    """The integer enlargement that brings an image's longest side closest to `target` without passing it
    (1 for images of `target` / 2 pixels or more).

    Args:
        height, width: the image size.
        target: the wanted longest side.
    """
    return max(1, int(target) // max(int(height), int(width), 1))


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (each pixel becomes a factor x factor square).

    Args:
        image: H x W (x C) array of any dtype.
        factor: >= 1.
    """
    if factor == 1:
        return image
    return np.ascontiguousarray(np.repeat(np.repeat(image, factor, axis=0), factor, axis=1))


def scale_prompt(prompt: Dict, factor: int) -> Dict:
    """A prompt's pixel coordinates on the image enlarged by `factor` (pixel centres stay centres).

    Args:
        prompt: {"points", "labels", "box"} in the original image's pixels.
        factor: the enlargement.
    """
    if factor == 1:
        return prompt
    f = lambda v: (float(v) + 0.5) * factor - 0.5  # noqa: E731
    box = prompt.get("box")
    return {"points": [[f(x), f(y)] for x, y in prompt.get("points") or []], "labels": list(prompt.get("labels") or []),
            "box": None if box is None else [f(v) for v in box]}


def _text_scale(width: int) -> float:
    return float(np.clip(width / 520.0, 0.4, 0.8))


def titled(panel: np.ndarray, title: str, subtitle: str = "") -> np.ndarray:
    """The panel under a white title bar of two lines of black text (cut to the panel's width).

    Args:
        panel: H x W x 3 uint8 RGB.
        title: the first line.
        subtitle: the second line ("" for none).
    """
    w = panel.shape[1]
    scale = _text_scale(w)
    lines = [title, subtitle]  # always two lines: panels side by side stay aligned
    line_h = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1] + int(10 * scale) + 4
    bar = np.full((line_h * len(lines) + 4, w, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        if not text:
            continue
        if cv2.getTextSize(text, _FONT, scale, 1)[0][0] > w - 6:  # cut to the width
            while text and cv2.getTextSize(text + "...", _FONT, scale, 1)[0][0] > w - 6:
                text = text[:-1]
            text += "..."
        cv2.putText(bar, text, (3, (i + 1) * line_h - 4), _FONT, scale, _INK, 1 if i else 2 - (scale < 0.5),
                    cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def hstack_panels(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels side by side (white gaps; shorter panels padded white at the bottom)."""
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.concatenate([p, np.full((h - p.shape[0], p.shape[1], 3), 255, np.uint8)], axis=0)
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((h, gap, 3), 255, np.uint8))
    return np.concatenate(out, axis=1)


def legend_strip(entries: Sequence[Tuple[str, Sequence[int]]], width: int) -> np.ndarray:
    """A white strip of colour swatches and names, wrapped to `width` pixels.

    Args:
        entries: (name, RGB colour) per class.
        width: the strip's width.
    """
    scale = _text_scale(max(width // 2, 1))
    text_h = cv2.getTextSize("Ag", _FONT, scale, 1)[0][1]
    line_h, swatch, pad = text_h + 12, text_h + 4, 8
    rows: List[List[Tuple[int, str, Sequence[int]]]] = [[]]
    x = pad
    for name, color in entries:
        item = swatch + 4 + cv2.getTextSize(name, _FONT, scale, 1)[0][0] + 2 * pad
        if rows[-1] and x + item > width:
            rows.append([])
            x = pad
        rows[-1].append((x, name, color))
        x += item
    strip = np.full((line_h * len(rows) + pad, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        y = pad // 2 + r * line_h + 4
        for x0, name, color in row:
            cv2.rectangle(strip, (x0, y), (x0 + swatch, y + swatch), tuple(int(c) for c in color), -1)
            cv2.rectangle(strip, (x0, y), (x0 + swatch, y + swatch), (80, 80, 80), 1)
            cv2.putText(strip, name, (x0 + swatch + 4, y + swatch - 2), _FONT, scale, _INK, 1, cv2.LINE_AA)
    return strip


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


def semantic_panels(image: np.ndarray, gt: Optional[np.ndarray], pred: np.ndarray, class_names: Sequence[str],
                    colors: Sequence[Sequence[int]], ignore_label: int = 255, alpha: float = 0.5) -> np.ndarray:
    """input | ground truth | prediction, each under a title, over a legend of the classes present in
    the ground truth or the prediction (largest first).

    Args:
        image: H x W x 3 uint8 RGB.
        gt: H x W class ids (`ignore_label`: not annotated, darkened), or None (panel left out).
        pred: H x W predicted class ids.
        class_names: name per class id.
        colors: RGB colour per class id.
        ignore_label: the ground truth's "not annotated" value.
        alpha: weight of the class colours.
    """
    h, w = image.shape[:2]
    k = display_factor(h, w)
    size = f"{w} x {h} px" + (f", shown {k}x" if k > 1 else "")
    panels = [titled(enlarge(image, k), "input", size)]
    n = len(class_names)
    areas = np.zeros(n, np.int64)
    if gt is not None:
        valid = gt[(gt != ignore_label) & (gt < n)]
        areas += np.bincount(valid.ravel().astype(np.int64), minlength=n)[:n]
        panels.append(titled(enlarge(overlay(image, gt, list(colors), alpha), k), "ground truth",
                             "darkened: not annotated" if (gt == ignore_label).any() else ""))
    valid = pred[(pred >= 0) & (pred < n)]
    areas += np.bincount(valid.ravel().astype(np.int64), minlength=n)[:n]
    panels.append(titled(enlarge(overlay(image, pred, list(colors), alpha), k), "prediction"))
    grid = hstack_panels(panels)
    present = [int(c) for c in np.argsort(-areas, kind="stable") if areas[c] > 0]
    legend = legend_strip([(short_name(class_names[c]), colors[c]) for c in present], grid.shape[1])
    return np.concatenate([grid, legend], axis=0)


def promptable_grid(image: np.ndarray, gt: np.ndarray, masks: Dict[str, np.ndarray], prompt: Dict,
                    opacity: float = 0.5, title: str = "") -> np.ndarray:
    """image (prompts drawn) | GT | one panel per method (its mask, the prompts, its IoU with the GT),
    each under a title.

    Args:
        image: H x W x 3 uint8 RGB (the image the model saw).
        gt: H x W bool ground-truth mask (resized to the image, nearest, when its size differs).
        masks: method name (e.g. "SAM", "GleSAM") -> bool mask (resized likewise).
        prompt: {"points", "labels", "box"} in the image's pixels.
        opacity: weight of the mask colour.
        title: the first panel's title (e.g. the image id; default "image").
    """
    h, w = image.shape[:2]

    def fit(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, bool)
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        return m

    k = display_factor(h, w)
    big, shown = enlarge(image, k), scale_prompt(prompt, k)
    g = fit(gt)
    size = f"{w} x {h} px" + (f", shown {k}x" if k > 1 else "")
    panels = [titled(draw(big, None, shown, 0.0), title or "image", f"prompts; {size}"),
              titled(draw(big, enlarge(g, k), {}, opacity), "ground truth", f"{100.0 * g.mean():.1f}% of the image")]
    for name, m in masks.items():
        m = fit(m)
        panels.append(titled(draw(big, enlarge(m, k), shown, opacity), name,
                             f"IoU with GT {format_score(mask_iou(m, g))}"))
    return hstack_panels(panels)


@torch.no_grad()
def write_overlays(model: torch.nn.Module, mapper, dataset_name: str, out_dir: str, num: int) -> List[str]:
    """Run `model` on the first `num` images of a dataset and write input | ground truth | prediction
    PNGs (`semantic_panels`: titles, a legend of the classes present), atomically.

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
    names = meta.get("stuff_classes", None) or [str(i) for i in range(len(colors))]
    ignore = meta.get("ignore_label", 255)
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
            panel = semantic_panels(image, gt, pred, names, colors, ignore_label=ignore)
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
            save_image_atomic(path, panel)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
