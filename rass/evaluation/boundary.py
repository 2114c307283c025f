"""Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021), per class on that class's binary mask.

The boundary band of a binary mask M is ``M - erode(M)``, where the erosion is a 3x3 erosion
iterated ``d`` times with pixels outside the image counting as background, and
``d = max(1, round(dilation_ratio * image diagonal))`` (the paper's ratio is 0.02). The Boundary
IoU of class c compares the band of ``gt == c`` with the band of ``pred == c``:
``|band_gt ∩ band_pred| / |band_gt ∪ band_pred|``.

A 3x3 erosion iterated d times is the erosion by a (2d+1) x (2d+1) square, so a pixel of class c
lies in the band of c exactly when the (2d+1)-square around it reaches outside the image or holds
another label. All classes' bands of one label map therefore come from one max filter and one
min filter of the map (`label_boundary_band`) instead of two erosions per class. The filters run on
the map in the narrowest type that holds its values exactly (uint8 for ADE20K's 150 classes and the
ignore label 255, else uint16 or float32), and the counts are one `np.bincount` per quantity.
"""
from __future__ import annotations

import math
from typing import Tuple

import cv2
import numpy as np

__all__ = ["DILATION_RATIO", "boundary_width", "mask_boundary_band", "label_boundary_band", "boundary_counts"]

DILATION_RATIO = 0.02  # the Boundary IoU paper's band width, as a fraction of the image diagonal


def boundary_width(height: int, width: int, dilation_ratio: float = DILATION_RATIO) -> int:
    """Band width d in pixels: ``max(1, round(dilation_ratio * sqrt(height² + width²)))``.

    Args:
        height, width: image size in pixels.
        dilation_ratio: fraction of the image diagonal (0.02 in the paper).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"boundary_width: image size must be positive, got {height}x{width} (HxW)")
    if not dilation_ratio > 0:
        raise ValueError(f"boundary_width: dilation_ratio must be > 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def _square(d: int) -> np.ndarray:
    return np.ones((2 * d + 1, 2 * d + 1), dtype=np.uint8)


def _mark_border(band: np.ndarray, d: int) -> np.ndarray:
    """Set the pixels within `d` of the image border (their square reaches outside), in place."""
    band[:d, :] = True
    band[-d:, :] = True
    band[:, :d] = True
    band[:, -d:] = True
    return band


def _morphology_array(label: np.ndarray, name: str) -> np.ndarray:
    """`label` in the narrowest type OpenCV's morphology takes that holds its values exactly
    (uint8, uint16, else float32 for integers within ±2^24; OpenCV has no int32/int64 morphology)."""
    if label.dtype == np.uint8:
        return np.ascontiguousarray(label)
    if not label.size:
        return label.astype(np.uint8)
    lo, hi = label.min(), label.max()
    if lo >= 0 and hi <= 255:
        return label.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return label.astype(np.uint16)
    if lo < -(2**24) or hi > 2**24:
        raise ValueError(f"{name}: labels must lie within ±2^24, got {lo}..{hi}")
    return label.astype(np.float32)


def mask_boundary_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The band ``mask - erode(mask)`` of a binary mask (3x3 erosion iterated `d` times, outside
    the image = background).

    Args:
        mask: H x W bool (or 0/1) array.
        d: band width in pixels (>= 1).

    Returns:
        H x W bool array.
    """
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"mask_boundary_band expects an H x W mask, got shape {mask.shape}")
    padded = np.pad(mask.astype(np.uint8), d, constant_values=0)
    eroded = cv2.erode(padded, _square(d), borderType=cv2.BORDER_REPLICATE)[d:-d, d:-d]
    return mask & ~eroded.astype(bool)


def label_boundary_band(label: np.ndarray, d: int) -> np.ndarray:
    """Union over classes of the class bands of a label map: pixels whose (2d+1)-square
    neighbourhood reaches outside the image or contains a different label. The band of class c
    is ``band & (label == c)``.

    Args:
        label: H x W integer label map (any value, e.g. an ignore label, is a label of its own).
        d: band width in pixels (>= 1).

    Returns:
        H x W bool array.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label_boundary_band expects an H x W label map, got shape {label.shape}")
    if d < 1:
        raise ValueError(f"label_boundary_band: d must be >= 1, got {d}")
    return _band(_morphology_array(label, "label_boundary_band"), d)


def _band(lab: np.ndarray, d: int) -> np.ndarray:
    k = _square(d)
    hi = cv2.dilate(lab, k, borderType=cv2.BORDER_REPLICATE)  # a replicated border adds no new label
    lo = cv2.erode(lab, k, borderType=cv2.BORDER_REPLICATE)
    return _mark_border(hi != lo, d)


def boundary_counts(
    gt: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    ignore_label: int,
    dilation_ratio: float = DILATION_RATIO,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class boundary-band pixel counts of one image, to be summed over a dataset.

    Pixels whose ground truth is `ignore_label` are not counted (for the erosion they are simply
    not class c).

    Args:
        gt: H x W ground-truth label map (values ``0..num_classes-1`` or `ignore_label`).
        pred: H x W predicted label map (values ``0..num_classes-1``).
        num_classes: number of classes K.
        ignore_label: ground-truth value that is not evaluated.
        dilation_ratio: band width as a fraction of the image diagonal.

    Returns:
        ``(intersection, gt_band, pred_band)``, each a length-K int64 array: per class c,
        ``|band(gt==c) ∩ band(pred==c)|``, ``|band(gt==c)|`` and ``|band(pred==c)|``, over
        non-ignored pixels.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"boundary_counts: gt {gt.shape} and pred {pred.shape} must be H x W of one size")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"boundary_counts: predicted labels must lie in 0..{num_classes - 1}, "
                         f"got {pred.min()}..{pred.max()}")
    d = boundary_width(*gt.shape, dilation_ratio=dilation_ratio)
    g = _morphology_array(gt, "boundary_counts")  # uint8 for ADE's labels: the same values, 8x less memory
    p = _morphology_array(pred, "boundary_counts")
    valid = (g >= 0) & (g < num_classes)
    if 0 <= ignore_label < num_classes:
        valid &= g != ignore_label
    band_gt = _band(g, d)
    band_gt &= valid
    band_pred = _band(p, d)
    band_pred &= valid
    both = band_gt & band_pred
    both &= g == p

    def count(labels: np.ndarray, where: np.ndarray) -> np.ndarray:
        picked = labels[where]
        if picked.dtype.kind == "f":  # float32 holds labels beyond 16 bits exactly; bincount wants integers
            picked = picked.astype(np.int64)
        return np.bincount(picked, minlength=num_classes)[:num_classes].astype(np.int64)

    return count(g, both), count(g, band_gt), count(p, band_pred)
