#!/usr/bin/env python
"""Write a small synthetic dataset in ADE20K/detectron2 layout (procedural outdoor scenes).

Example:
    python tools/make_synthetic_ade20k.py --out datasets/synthetic_ade20k --seed 0
It is registered as `synthetic_sem_seg_train` / `synthetic_sem_seg_val` when the root is
$RASS_SYNTHETIC_ROOT or $DETECTRON2_DATASETS/synthetic_ade20k.

A folder made earlier with the same seed and size range is reused (and completed if images are
missing); one made with other settings is refused unless --overwrite is given, which deletes its
generated files and writes the dataset again. OUT/synthetic_ade20k.json records the settings.
"""
import argparse
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed -> same bytes)")
    p.add_argument("--num-train", type=int, default=200, help="number of training images")
    p.add_argument("--num-val", type=int, default=50, help="number of validation images")
    p.add_argument("--min-size", type=int, default=256, help="smallest image side (px)")
    p.add_argument("--max-size", type=int, default=640, help="largest image side (px)")
    p.add_argument("--overwrite", action="store_true",
                   help="regenerate a folder made with other settings (deletes its generated files)")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bars")
    a = p.parse_args(argv)
    # after parsing: --help and argument errors answer without importing torch & co.
    from rass.data.synthetic import count_images, make_synthetic_ade20k
    from rass.utils.cli import report_user_error
    from rass.utils.errors import UserError
    from rass.utils.outputs import make_output_folder
    try:
        make_output_folder(a.out, "--out")
        n = make_synthetic_ade20k(a.out, a.seed, a.num_train, a.num_val, a.min_size, a.max_size,
                                  progress=not a.no_progress, overwrite=a.overwrite)
    except UserError as e:  # e.g. a SyntheticFolderError: a folder of other data
        return report_user_error(e)
    have = count_images(a.out)
    if n["train"] or n["val"]:
        print(f"wrote {n['train']} training and {n['val']} validation images under {a.out} (seed {a.seed}; "
              f"the folder now holds {have['train']} and {have['val']})")
    else:
        print(f"reused {a.out}: it already holds the {have['train']} training and {have['val']} validation "
              f"images of seed {a.seed}; nothing written")
    if have["train"] > a.num_train or have["val"] > a.num_val:
        print(f"note: {a.out} holds more images than the {a.num_train} training / {a.num_val} validation asked "
              "for; all of them are part of the dataset (--overwrite regenerates exactly the number asked for)")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
