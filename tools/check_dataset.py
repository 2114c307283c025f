#!/usr/bin/env python
"""List every file of a registered dataset that would stop training or evaluation.

Example:
    python tools/check_dataset.py --dataset ade20k_sem_seg_train ade20k_sem_seg_val

Reads every image and annotation (mask) as the dataset mappers do and prints one line per problem
(missing or damaged files, image/annotation size mismatches, label values outside the classes),
then a summary per dataset. Exit status 0 when every entry reads, 1 when some do not; 2 for a usage
error (e.g. an unregistered dataset name).
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from rass.utils.choices import EXIF_POLICIES


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", required=True, help="registered dataset name(s)")
    p.add_argument("--labelled-exif", default="apply", choices=EXIF_POLICIES,
                   help="as INPUT.LABELLED_EXIF: read images upright ('apply', default) or as stored ('ignore')")
    a = p.parse_args(argv)
    # after parsing: --help and argument errors answer without importing the datasets' code
    from tqdm import tqdm

    from rass import register_all
    from rass.data.check import check_dataset

    register_all()  # the datasets

    bad = 0
    for name in a.dataset:
        result = check_dataset(name, a.labelled_exif, progress=lambda it: tqdm(it, desc=name, leave=False))
        for path, message in result.problems:
            print(f"{path}: {message}")
        print(result.summary())
        bad += len(result.problems)
    return 1 if bad else 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
