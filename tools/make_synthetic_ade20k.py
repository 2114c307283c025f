#!/usr/bin/env python
"""Write a small synthetic dataset in ADE20K/detectron2 layout (procedural outdoor scenes).

Example:
    python tools/make_synthetic_ade20k.py --out datasets/synthetic_ade20k --seed 0
It is registered as `synthetic_sem_seg_train` / `synthetic_sem_seg_val` when the root is
$RASS_SYNTHETIC_ROOT or $DETECTRON2_DATASETS/synthetic_ade20k.
"""
import argparse

from rass.data.synthetic import make_synthetic_ade20k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed -> same bytes)")
    p.add_argument("--num-train", type=int, default=200, help="number of training images")
    p.add_argument("--num-val", type=int, default=50, help="number of validation images")
    p.add_argument("--min-size", type=int, default=256, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=640, help="largest image side (px)")
    a = p.parse_args()
    n = make_synthetic_ade20k(a.out, a.seed, a.num_train, a.num_val, a.min_size, a.max_size)
    print(f"wrote {n['train']} training and {n['val']} validation images under {a.out}")


if __name__ == "__main__":
    main()
