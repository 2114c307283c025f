"""Prompts drawn from a ground-truth mask (GleSAM / RobustSAM evaluation protocol), seeded per image.

Protocols:
- "points" (as released, `dataset/codeformer_add_maskv3_ms.py`): candidates are the pixels of the
  mask (resized to the image frame, cv2 bilinear) that are exactly 255, i.e. fully inside the
  object; N of them are drawn without replacement, all labelled positive (1). Fewer than N
  candidates: all of them in raster order, then the last repeated; none: the image centre.
- "box": xyxy box of the mask's pixels > threshold in the image frame (pixel indices, max
  inclusive, as the release's `misc.masks_to_boxes`), optionally jittered as the release's
  `misc.box_noise`: in (cx, cy, w, h), cx, cy move by U(−1, 1)·w/2·s, U(−1, 1)·h/2·s and w, h by
  U(−1, 1)·w·s, U(−1, 1)·h·s (s = noise scale, release 0.05), then clamped to the image.
- "point_box": both.

Empty mask (no pixel > threshold): one documented rule for every protocol: points = the image
centre (x = w/2, y = h/2, positive), box = the whole image [0, 0, w−1, h−1]; `Prompts.note` says
"empty_mask" so evaluators can count it. A non-empty mask without any fully-inside pixel (thin
objects at a small image size) gives the release's centre point, note "no_interior_pixel".

Seeding: each image's generator is seeded with `derive_seed("prompts", seed, image_id)` (SHA-256,
not Python's salted `hash`), so prompts do not depend on the process count or the order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from rass.data.degradation.online import derive_seed
from rass.utils.errors import UserValueError

__all__ = ["PROTOCOLS", "Prompts", "prompt_rng", "sample_prompts", "mask_to_box", "box_noise", "resize_mask", "check_prompts"]

PROTOCOLS = ("points", "box", "point_box")


@dataclass
class Prompts:
    """Prompts of one object in the image frame.

    Attributes:
        point_coords: N×2 float32 (x, y), or None.
        point_labels: N int64 (1 positive), or None.
        box: 4 float32 xyxy, or None.
        note: "" normally; "empty_mask" or "no_interior_pixel" when a fallback rule was used.
    """

    point_coords: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    box: Optional[np.ndarray]
    note: str = ""


def prompt_rng(seed: int, image_id: str) -> np.random.Generator:
    """The generator of one image's prompts (stable across processes and runs)."""
    return np.random.default_rng(derive_seed("prompts", int(seed), str(image_id)))


def resize_mask(mask: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """A uint8 0/255 mask resized to (h, w) with cv2 bilinear, as the release (no-op if same size)."""
    if tuple(mask.shape[:2]) == tuple(hw):
        return mask
    return cv2.resize(mask, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)


def mask_to_box(mask: np.ndarray, threshold: int = 128) -> Optional[np.ndarray]:
    """xyxy (x_min, y_min, x_max, y_max) pixel indices of `mask > threshold`; None if empty."""
    ys, xs = np.nonzero(mask > threshold)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def box_noise(box: np.ndarray, scale: float, rng: np.random.Generator, hw: Tuple[int, int]) -> np.ndarray:
    """The release's `misc.box_noise` on one xyxy box, clamped to the image [0, w] × [0, h].

    Args:
        box: 4 xyxy.
        scale: noise scale (release 0.05); 0 returns the box unchanged.
        rng: the image's generator.
        hw: (h, w) of the image frame.
    """
    if scale <= 0:
        return box.astype(np.float32)
    x0, y0, x1, y1 = (float(v) for v in box)
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=np.float64)
    diff = np.array([c[2] / 2, c[3] / 2, c[2], c[3]])
    c = c + (rng.random(4) * 2 - 1) * diff * scale
    out = np.array([c[0] - c[2] / 2, c[1] - c[3] / 2, c[0] + c[2] / 2, c[1] + c[3] / 2])
    out[[0, 2]] = out[[0, 2]].clip(0, hw[1])
    out[[1, 3]] = out[[1, 3]].clip(0, hw[0])
    return out.astype(np.float32)


def _points(mask: np.ndarray, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, str]:
    ys, xs = np.nonzero(mask == 255)
    if xs.size == 0:
        h, w = mask.shape
        return np.tile(np.array([[w / 2, h / 2]], dtype=np.float32), (n, 1)), "no_interior_pixel"
    if xs.size < n:
        idx = np.concatenate([np.arange(xs.size), np.full(n - xs.size, xs.size - 1)])
    else:
        idx = rng.choice(xs.size, size=n, replace=False)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32), ""


def sample_prompts(
    mask: np.ndarray,
    image_hw: Tuple[int, int],
    protocol: str = "points",
    num_points: int = 3,
    box_noise_scale: float = 0.0,
    rng: Optional[np.random.Generator] = None,
    threshold: int = 128,
) -> Prompts:
    """Draw the prompts of one object.

    Args:
        mask: H×W uint8 0/255 mask at its own size.
        image_hw: (h, w) of the image frame the prompts are expressed in.
        protocol: "points", "box" or "point_box".
        num_points: N positive points.
        box_noise_scale: box jitter scale (0 = exact box; release 0.05).
        rng: the image's generator (`prompt_rng`); required unless the protocol draws nothing random.
        threshold: foreground is mask > threshold (box, emptiness).

    Returns:
        `Prompts` in the image frame.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown prompt protocol {protocol!r}; expected one of {PROTOCOLS}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"sample_prompts expects an H×W uint8 mask, got {mask.dtype} {mask.shape}")
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = int(image_hw[0]), int(image_hw[1])
    m = resize_mask(mask, (h, w))
    box = mask_to_box(m, threshold)
    if box is None:
        centre = np.tile(np.array([[w / 2, h / 2]], dtype=np.float32), (num_points if protocol != "box" else 1, 1))
        whole = np.array([0, 0, w - 1, h - 1], dtype=np.float32)
        pts = centre if protocol != "box" else None
        return Prompts(pts, None if pts is None else np.ones(len(pts), np.int64), whole if protocol != "points" else None,
                       "empty_mask")
    coords, labels, note = None, None, ""
    if protocol in ("points", "point_box"):
        coords, note = _points(m, num_points, rng)
        labels = np.ones(num_points, dtype=np.int64)
    if protocol in ("box", "point_box"):
        box = box_noise(box, box_noise_scale, rng, (h, w))
    else:
        box = None
    return Prompts(coords, labels, box, note)


def check_prompts(
    image_hw: Tuple[int, int],
    point_coords: Optional[np.ndarray] = None,
    point_labels: Optional[np.ndarray] = None,
    boxes: Optional[np.ndarray] = None,
    source: str = "prompts",
) -> None:
    """Refuse user prompts that do not fit the image, naming the offending one (demo, browser page, predictor).

    Args:
        image_hw: (h, w) of the image the prompts refer to.
        point_coords: N×2 (x, y); each must be finite and lie in [0, w] × [0, h].
        point_labels: N labels, each 0 (negative) or 1 (positive).
        boxes: M×4 xyxy, finite, with 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h (a positive area).
        source: where the prompts came from (file or option), for the message.

    Raises:
        UserValueError: naming the prompt, its values and what was expected.
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    if point_coords is not None:
        pts = _numbers(point_coords, 2, "points", source)
        for i, (x, y) in enumerate(pts):
            if not (np.isfinite(x) and np.isfinite(y)):
                raise UserValueError(f"{source}: point {i} ({x:g}, {y:g}) is not a pair of finite numbers; expected "
                                     f"(x, y) pixel coordinates in the image of {h}x{w} (HxW)")
            if not (0 <= x <= w and 0 <= y <= h):
                raise UserValueError(f"{source}: point {i} ({x:g}, {y:g}) is outside the image of {h}x{w} (HxW); "
                                     f"expected (x, y) with 0 <= x <= {w}, 0 <= y <= {h}")
        if point_labels is not None:
            labels = np.asarray(point_labels).reshape(-1)
            if labels.shape[0] != pts.shape[0]:
                raise UserValueError(f"{source}: {pts.shape[0]} points but {labels.shape[0]} labels; expected one "
                                     f"label per point")
            bad = labels[~np.isin(labels, (0, 1))].tolist()
            if bad:
                raise UserValueError(f"{source}: point labels must be 1 (positive) or 0 (negative), got {bad[:3]}")
    if boxes is not None:
        for i, (x0, y0, x1, y1) in enumerate(_numbers(boxes, 4, "boxes", source)):
            shown = f"box {i} ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
            if not np.isfinite([x0, y0, x1, y1]).all():
                raise UserValueError(f"{source}: {shown} is not 4 finite numbers; expected x1, y1, x2, y2 pixels")
            if x0 > x1 or y0 > y1:
                raise UserValueError(f"{source}: {shown} is inverted ({'x1 > x2' if x0 > x1 else 'y1 > y2'}); expected "
                                     f"x1, y1 (top left), x2, y2 (bottom right) with x1 < x2 and y1 < y2")
            if x0 == x1 or y0 == y1:
                raise UserValueError(f"{source}: {shown} has zero area ({'x1 = x2' if x0 == x1 else 'y1 = y2'}); "
                                     f"expected x1 < x2 and y1 < y2")
            if not (0 <= x0 and x1 <= w and 0 <= y0 and y1 <= h):
                raise UserValueError(f"{source}: {shown} is not inside the image of {h}x{w} (HxW); expected "
                                     f"0 <= x1 < x2 <= {w}, 0 <= y1 < y2 <= {h}")


def _numbers(values, n: int, what: str, source: str) -> np.ndarray:
    """`values` as a float64 array of rows of `n` numbers, or a UserValueError naming `what`."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserValueError(f"{source}: {what} must be numbers, got {values!r:.80}") from None
    if arr.size % n:
        raise UserValueError(f"{source}: {what} must be rows of {n} numbers, got shape {arr.shape}")
    return arr.reshape(-1, n)
