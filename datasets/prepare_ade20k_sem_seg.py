#!/usr/bin/env python
"""Convert the official ADE20K (SceneParsing, ADEChallengeData2016) annotations to detectron2's.

Official labels are 0 = "other" and 1..150; detectron2 uses 0..149 and 255 = ignore, so
0 -> 255 and k -> k - 1. Reads `<root>/annotations/{training,validation}/*.png`, writes
`<root>/annotations_detectron2/{training,validation}/*.png` atomically. Idempotent: files that
already exist are skipped (use --overwrite to redo them).

Usage:
    python datasets/prepare_ade20k_sem_seg.py            # root = $DETECTRON2_DATASETS/ADEChallengeData2016
    python datasets/prepare_ade20k_sem_seg.py --root /data/ADEChallengeData2016
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image
from tqdm import tqdm

from rass.utils.errors import UserFileNotFoundError, UserValueError
from rass.utils.io import save_image_atomic


def convert_label(official: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Map official ADE20K labels (0 other, 1..150) to detectron2's (255 ignore, 0..149).

    Args:
        official: uint8 H x W label map.
        path: file name for error messages.
    """
    if official.ndim != 2:
        raise UserValueError(f"{path}: expected a single-channel label image, got shape {official.shape}")
    bad = np.unique(official[official > 150])
    if bad.size:
        raise UserValueError(f"{path}: label values {bad.tolist()} are outside the official range 0..150")
    out = official.astype(np.int16) - 1
    out[official == 0] = 255
    return out.astype(np.uint8)


def convert_split(root: str, split: str, overwrite: bool = False) -> int:
    """Convert one split; returns the number of files written."""
    src = os.path.join(root, "annotations", split)
    dst = os.path.join(root, "annotations_detectron2", split)
    if not os.path.isdir(src):
        raise UserFileNotFoundError(f"official annotations not found: {src} (expected "
                                    f"ADEChallengeData2016/annotations/{split})")
    names = sorted(n for n in os.listdir(src) if n.endswith(".png"))
    written = 0
    for name in tqdm(names, desc=f"ADE20K {split}"):
        out = os.path.join(dst, name)
        if os.path.isfile(out) and not overwrite:
            continue
        path = os.path.join(src, name)
        save_image_atomic(out, convert_label(np.asarray(Image.open(path)), path))
        written += 1
    return written


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "ADEChallengeData2016")
    p.add_argument("--root", default=default, help="ADEChallengeData2016 folder (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="convert files that already exist again")
    a = p.parse_args()
    if not os.path.isdir(a.root):
        print(f"error: {a.root} does not exist (set DETECTRON2_DATASETS or pass --root)", file=sys.stderr)
        return 2
    for split in ("training", "validation"):
        n = convert_split(a.root, split, a.overwrite)
        print(f"{split}: wrote {n} annotation(s)")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
