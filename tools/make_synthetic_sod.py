#!/usr/bin/env python
"""Write a small generated SOD / DIS set: images with one object of thin structures + 0/255 masks.

Example:
    python tools/make_synthetic_sod.py --out datasets/synthetic_sod --seed 0 --num-train 16 --num-test 8
Layout (DIS5K-like)::

    train/im/sod_train_00000.png  train/gt/sod_train_00000.png
    test/im/sod_test_00000.png    test/gt/sod_test_00000.png
    synthetic_sod.json            seed and settings (a folder made with other settings is refused)

Registered as `sod_synthetic_train` / `sod_synthetic_test` when the root is $RASS_SOD_SYNTHETIC_ROOT
or $DETECTRON2_DATASETS/synthetic_sod. Each object is a filled blob with thin branches (1-3 px
lines), sometimes a thin ring or a wire grid; image sides are drawn from [--min-size, --max-size]
independently (any aspect). Image i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

SPLITS = ("train", "test")
INFO_FILE = "synthetic_sod.json"


def make_sod_object(seed: int, split: str, index: int, min_size: int, max_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """One RGB image (H×W×3 uint8) and its 0/255 mask (H×W uint8).

    Args:
        seed: dataset seed.
        split: "train" or "test" (independent streams).
        index: image index.
        min_size, max_size: range of each image side (drawn independently).
    """
    import cv2

    from rass.data.degradation.online import derive_seed

    rng = np.random.default_rng(derive_seed("synthetic-sod", int(seed), split, int(index)))
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    bg, fg = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    while np.abs(bg - fg).sum() < 150:  # keep the object visible
        fg = rng.uniform(20, 235, 3)
    mask = np.zeros((h, w), np.uint8)
    s = min(h, w)
    cx, cy = int(rng.uniform(0.35, 0.65) * w), int(rng.uniform(0.35, 0.65) * h)
    cv2.ellipse(mask, (cx, cy), (max(1, int(s * rng.uniform(0.08, 0.2))), max(1, int(s * rng.uniform(0.05, 0.15)))),
                float(rng.uniform(0, 180)), 0, 360, 255, -1)
    for _ in range(int(rng.integers(2, 6))):  # thin branches from the blob
        ang, length = rng.uniform(0, 2 * np.pi), s * rng.uniform(0.2, 0.45)
        end = (int(cx + length * np.cos(ang)), int(cy + length * np.sin(ang)))
        cv2.line(mask, (cx, cy), end, 255, int(rng.integers(1, 4)))
    extra = int(rng.integers(0, 3))
    if extra == 1:  # thin ring
        cv2.circle(mask, (cx, cy), max(2, int(s * rng.uniform(0.25, 0.4))), 255, 1)
    elif extra == 2:  # wire grid
        step = max(3, int(s * rng.uniform(0.06, 0.12)))
        x0, y0, x1, y1 = cx - 3 * step, cy - 2 * step, cx + 3 * step, cy + 2 * step
        for x in range(x0, x1 + 1, step):
            cv2.line(mask, (x, y0), (x, y1), 255, 1)
        for y in range(y0, y1 + 1, step):
            cv2.line(mask, (x0, y), (x1, y), 255, 1)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    image = bg + rng.uniform(-40, 40, 3) * yy + rng.normal(0, 10, (h, w, 1))
    image = np.where(mask[..., None] > 0, fg + rng.normal(0, 5, (h, w, 1)), image)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def make_synthetic_sod(root: str, seed: int = 0, num_train: int = 16, num_test: int = 8, min_size: int = 20,
                       max_size: int = 160) -> Dict[str, int]:
    """Write (or complete) the generated set under `root`; returns {"train": n written, "test": n written}.

    Args:
        root: destination (a folder made with other settings, or a non-empty folder without
            ``synthetic_sod.json``, is refused).
        seed: dataset seed (same seed → same bytes).
        num_train, num_test: images per split.
        min_size, max_size: range of each image side (>= 8).
    """
    from rass.utils.errors import UserValueError
    from rass.utils.io import save_image_atomic, write_text_atomic

    if num_train < 0 or num_test < 0 or not 8 <= min_size <= max_size:
        raise UserValueError(f"need num_train, num_test >= 0 and 8 <= min_size <= max_size, got {num_train}, {num_test}, "
                             f"{min_size}, {max_size}")
    info = {"seed": int(seed), "num_train": int(num_train), "num_test": int(num_test), "min_size": int(min_size),
            "max_size": int(max_size)}
    path = os.path.join(root, INFO_FILE)
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            old = json.load(f)
        if old != info:
            raise UserValueError(f"{root} holds a synthetic SOD set made with {old}, this run has {info}; use another "
                                 "folder (or delete it) or the same settings")
    elif os.path.isdir(root) and os.listdir(root):
        raise UserValueError(f"{root} is not empty and holds no {INFO_FILE}: refusing to write a synthetic set into it")
    else:
        write_text_atomic(path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    written = {}
    for split, n in (("train", num_train), ("test", num_test)):
        written[split] = 0
        for i in range(n):
            stem = f"sod_{split}_{i:05d}"
            im_path, gt_path = (os.path.join(root, split, d, stem + ".png") for d in ("im", "gt"))
            if os.path.exists(im_path) and os.path.exists(gt_path):
                continue
            image, mask = make_sod_object(seed, split, i, min_size, max_size)
            save_image_atomic(im_path, image)
            save_image_atomic(gt_path, mask)
            written[split] += 1
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed -> same bytes)")
    p.add_argument("--num-train", type=int, default=16, help="training images (train/im, train/gt)")
    p.add_argument("--num-test", type=int, default=8, help="test images (test/im, test/gt)")
    p.add_argument("--min-size", type=int, default=20, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=160, help="largest image side (px)")
    a = p.parse_args(argv)
    from rass.utils.cli import report_user_error
    from rass.utils.errors import UserError
    from rass.utils.outputs import make_output_folder

    try:
        make_output_folder(a.out, "--out")
        n = make_synthetic_sod(a.out, a.seed, a.num_train, a.num_test, a.min_size, a.max_size)
    except UserError as e:
        return report_user_error(e)
    print(f"wrote {n['train']} training and {n['test']} test images (+ 0/255 masks) under {a.out}")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
