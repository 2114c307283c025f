#!/usr/bin/env python
"""Write a small generated LQSeg-layout set (one object per image + its 0/255 mask; clean + LQ-1/2/3
test copies, and clean training pairs).

Example:
    python tools/make_synthetic_lqseg.py --out datasets/synthetic_lqseg --seed 0 --num-images 16 --num-train 32
It is registered as `lqseg_synthetic_test_clear` / `_lq1` / `_lq2` / `_lq3` and `lqseg_synthetic_train`
(train/Synthetic/{images,masks}, degraded online in training) when the root is
$RASS_LQSEG_SYNTHETIC_ROOT or $DETECTRON2_DATASETS/synthetic_lqseg. A folder made with other settings
is refused (exit status 2); the same settings complete an interrupted run.
"""
from __future__ import annotations

import argparse
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed -> same bytes); also the degradation seed")
    p.add_argument("--num-images", type=int, default=16, help="number of images")
    p.add_argument("--num-train", type=int, default=32, help="number of clean training pairs (train/Synthetic; 0: none)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3], help="LQ levels to write")
    p.add_argument("--min-size", type=int, default=96, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=192, help="largest image side (px)")
    p.add_argument("--distractors", type=int, default=0,
                   help="other objects per image, outside its mask (a prompt must say which object is meant)")
    p.add_argument("--usm", action="store_true", help="USM-sharpen before degrading (as GleSAM's released sets)")
    p.add_argument("--final-size", type=int, default=None, help="fixed NxN LQ images (GleSAM's released sets: 512); default: original size")
    a = p.parse_args(argv)
    # after parsing: --help and argument errors answer without importing torch & co.
    from rass.data.synthetic_masks import make_synthetic_lqseg
    from rass.utils.cli import report_user_error
    from rass.utils.errors import UserError
    from rass.utils.outputs import make_output_folder
    try:
        make_output_folder(a.out, "--out")
        n = make_synthetic_lqseg(a.out, a.seed, a.num_images, a.levels, a.min_size, a.max_size, a.usm, a.final_size,
                                 num_train=a.num_train, distractors=a.distractors)
    except UserError as e:
        return report_user_error(e)
    levels = ", ".join(f"LQ-{k[2:]}: {v}" for k, v in n.items() if k.startswith("lq"))
    print(f"wrote {n['clean']} clean test images (+ masks), degraded copies ({levels}) and "
          f"{n.get('train', 0)} training pairs under {a.out}")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
