"""A small generated LQSeg-layout set for CPU tests and demos: one object per image + its 0/255 mask.

Layout written under ROOT (what `rass.data.datasets.lqseg` reads, registered as
``lqseg_synthetic_test_{clear,lq1,lq2,lq3}`` when ROOT is ``$RASS_LQSEG_SYNTHETIC_ROOT`` or
``$DETECTRON2_DATASETS/synthetic_lqseg``)::

    test_clear/Synthetic/images/syn_00000.png   clean image (lossless PNG)
    test_clear/Synthetic/masks/syn_00000.png    0/255 mask of the one object
    test/Synthetic/LQ-<k>/{images,masks}/       LQ-k copies (presets lqseg_k, tools/degrade_dataset.py's engine)
    train/Synthetic/images/syn_train_00000.png  clean training image (``lqseg_synthetic_train``; degraded
    train/Synthetic/masks/syn_train_00000.png   online in training, preset lqseg_train) + its 0/255 mask
    synthetic_lqseg.json                        seed and settings (a folder made with others is refused)

Objects: ellipses, rotated rectangles, stars and thin rings (ThinObject-like), textured, on a
textured background of another colour; optionally (``distractors``) other objects outside the
mask, so that a prompt must say which object is meant. Image `i` of a split depends only on
(seed, split, i); the training images are drawn apart from the test images (another seed stream),
so they never coincide.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

from rass.data.degradation.offline import degrade_tree
from rass.data.degradation.online import derive_seed
from rass.utils.errors import UserValueError
from rass.utils.io import save_image_atomic, write_text_atomic

__all__ = ["make_synthetic_object", "make_synthetic_lqseg", "SET_NAME", "INFO_FILE", "SPLITS"]

SET_NAME = "Synthetic"
INFO_FILE = "synthetic_lqseg.json"
SHAPES = ("ellipse", "rectangle", "star", "ring")
SPLITS = ("test", "train")


def _texture(rng: np.random.Generator, hw: Tuple[int, int], base: np.ndarray, sigma: float) -> np.ndarray:
    h, w = hw
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    grad = base + (rng.uniform(-40, 40, 3).astype(np.float32) * t)
    return np.clip(grad + rng.normal(0, sigma, (h, w, 1)).astype(np.float32), 0, 255)


def _draw_shape(rng: np.random.Generator, mask: np.ndarray, shape: str, cx: int, cy: int, r: int) -> None:
    """Fill `shape` (one of SHAPES) of radius `r` centred at (cx, cy) into `mask` with 255."""
    if shape == "ellipse":
        cv2.ellipse(mask, (cx, cy), (r, max(3, int(r * rng.uniform(0.4, 1.0)))), float(rng.uniform(0, 180)), 0, 360, 255, -1)
    elif shape == "rectangle":
        box = cv2.boxPoints(((cx, cy), (2 * r, max(4, int(2 * r * rng.uniform(0.3, 1.0)))), float(rng.uniform(0, 90))))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 255)
    elif shape == "star":
        n = int(rng.integers(5, 8))
        ang = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * 0.45)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
    else:
        cv2.circle(mask, (cx, cy), r, 255, max(2, r // 5))


def _paint_distractors(rng: np.random.Generator, image: np.ndarray, target: np.ndarray, n: int) -> None:
    """Paint `n` other objects into `image` (float H×W×3), apart from the `target` mask (not in it)."""
    h, w = target.shape
    keep_out = cv2.dilate(target, np.ones((7, 7), np.uint8)) > 0
    for _ in range(n):
        for _try in range(20):  # a place apart from the target
            d = np.zeros((h, w), np.uint8)
            r = int(min(h, w) * rng.uniform(0.1, 0.2))
            cx, cy = int(rng.uniform(0.12, 0.88) * w), int(rng.uniform(0.12, 0.88) * h)
            _draw_shape(rng, d, SHAPES[int(rng.integers(0, len(SHAPES)))], cx, cy, r)
            if d.any() and not (keep_out & (d > 0)).any():
                tex = _texture(rng, (h, w), rng.uniform(20, 235, 3).astype(np.float32), 6.0)
                image[d > 0] = tex[d > 0]
                keep_out |= cv2.dilate(d, np.ones((7, 7), np.uint8)) > 0
                break


def make_synthetic_object(
    seed: int, index: int, min_size: int = 64, max_size: int = 128, split: str = "test", distractors: int = 0
) -> Tuple[np.ndarray, np.ndarray, str]:
    """One image (H×W×3 uint8) with one object, its 0/255 mask (H×W uint8) and the shape name.

    Args:
        seed: dataset seed.
        index: image index.
        min_size, max_size: range of the image sides in pixels.
        split: "test" or "train" (independent streams of images).
        distractors: other objects painted apart from the object (not in its mask), so that a prompt must
            say which object is meant; drawn from their own stream (0: the image is as without them).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    parts = ("synthetic-lqseg", int(seed), int(index)) if split == "test" else ("synthetic-lqseg-train", int(seed), int(index))
    rng = np.random.default_rng(derive_seed(*parts))
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    bg_rgb, fg_rgb = rng.uniform(20, 235, 3).astype(np.float32), rng.uniform(20, 235, 3).astype(np.float32)
    while np.abs(bg_rgb - fg_rgb).sum() < 150:  # keep the object visible
        fg_rgb = rng.uniform(20, 235, 3).astype(np.float32)
    image = _texture(rng, (h, w), bg_rgb, 12.0)
    shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.7) * h)
    r = int(min(h, w) * rng.uniform(0.15, 0.3))
    _draw_shape(rng, mask, shape, cx, cy, r)
    fg = _texture(rng, (h, w), fg_rgb, 6.0)
    if distractors > 0:
        _paint_distractors(np.random.default_rng(derive_seed(*parts, "distractors")), image, mask, int(distractors))
    inside = mask > 0
    image[inside] = fg[inside]
    return np.round(image).astype(np.uint8), mask, shape


def _check_info(root: str, info: Dict[str, Any]) -> None:
    """Refuse a folder made with other settings; record num_train in a folder made before it existed."""
    path = os.path.join(root, INFO_FILE)
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            old = json.load(f)
        for key in ("seed", "num_images", "min_size", "max_size", "num_train", "distractors"):
            if key == "distractors" and old.get(key, 0) == info[key]:  # folders made before the key: 0
                continue
            if key == "num_train" and key not in old:  # made before the training split existed: add it
                write_text_atomic(path, json.dumps({**old, key: info[key]}, indent=2, sort_keys=True) + "\n")
            elif old.get(key) != info[key]:
                raise UserValueError(f"{root} holds a synthetic LQSeg set made with {key}={old.get(key)!r}, this run "
                                     f"has {info[key]!r}; refusing to mix them: use another folder (or delete it) or "
                                     "the same settings")
    elif os.path.isdir(root) and os.listdir(root):
        raise UserValueError(f"{root} is not empty and holds no {INFO_FILE}: refusing to write a synthetic set into it")
    else:
        write_text_atomic(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def make_synthetic_lqseg(
    root: str,
    seed: int = 0,
    num_images: int = 8,
    levels: Sequence[int] = (1, 2, 3),
    min_size: int = 64,
    max_size: int = 128,
    usm: bool = False,
    final_size: Optional[int] = None,
    degradation_seed: Optional[int] = None,
    num_train: int = 0,
    distractors: int = 0,
) -> Dict[str, int]:
    """Write (or complete) a synthetic LQSeg-layout set: clean images + masks, LQ-k copies and a
    clean training split.

    Args:
        root: destination (created; a folder made with another seed or size is refused).
        seed: dataset seed (same seed → same bytes).
        num_images: number of images.
        levels: LQ levels to write (presets lqseg_1/2/3).
        min_size, max_size: range of the image sides.
        usm, final_size: GleSAM options of the LQ copies (see `degrade_tree`).
        degradation_seed: base seed of the LQ copies (default: `seed`).
        num_train: number of clean training pairs in ``train/Synthetic/{images,masks}`` (0: none).
        distractors: other objects per image, outside its mask (`make_synthetic_object`).

    Returns:
        {"clean": test images written now, "lq<k>": images degraded now, ..., and with num_train > 0
        "train": training images written now}.
    """
    if num_images < 1 or not 8 <= min_size <= max_size:
        raise UserValueError(f"num_images must be >= 1 and 8 <= min_size <= max_size, got {num_images}, {min_size}, "
                             f"{max_size}")
    if num_train < 0:
        raise UserValueError(f"num_train must be >= 0, got {num_train}")
    bad = [k for k in levels if k not in (1, 2, 3)]
    if bad:
        raise UserValueError(f"LQ levels must be 1, 2 or 3, got {bad}")
    if distractors < 0:
        raise UserValueError(f"distractors must be >= 0, got {distractors}")
    info = {"seed": int(seed), "num_images": int(num_images), "min_size": int(min_size), "max_size": int(max_size),
            "num_train": int(num_train), "distractors": int(distractors)}
    _check_info(root, info)
    clear = os.path.join(root, "test_clear", SET_NAME)
    out = {"clean": _write_pairs(clear, "syn_", "test", seed, num_images, min_size, max_size, distractors)}
    for k in levels:
        rep = degrade_tree(clear, os.path.join(root, "test", SET_NAME, f"LQ-{k}"), f"lqseg_{k}",
                           int(seed if degradation_seed is None else degradation_seed), layout="image_mask",
                           usm=usm, final_size=final_size)
        if rep.failures:
            raise RuntimeError(f"LQ-{k} of {root}: {rep.failures[:3]}")
        out[f"lq{k}"] = rep.written
    if num_train:
        out["train"] = _write_pairs(os.path.join(root, "train", SET_NAME), "syn_train_", "train", seed, num_train, min_size,
                                    max_size, distractors)
    return out


def _write_pairs(folder: str, prefix: str, split: str, seed: int, n: int, min_size: int, max_size: int,
                 distractors: int = 0) -> int:
    """Write the missing <folder>/{images,masks}/<prefix><i>.png pairs; returns how many were written."""
    written = 0
    for i in range(n):
        stem = f"{prefix}{i:05d}"
        img_path, mask_path = os.path.join(folder, "images", stem + ".png"), os.path.join(folder, "masks", stem + ".png")
        if os.path.exists(img_path) and os.path.exists(mask_path):
            continue
        image, mask, _ = make_synthetic_object(seed, i, min_size, max_size, split=split, distractors=distractors)
        save_image_atomic(img_path, image)
        save_image_atomic(mask_path, mask)
        written += 1
    return written
