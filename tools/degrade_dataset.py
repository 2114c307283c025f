#!/usr/bin/env python
"""Write a degraded copy of a dataset (fixed, reproducible evaluation sets).

Examples:
    # ade20k_sem_seg_val_degraded (the RASS evaluation set)
    python tools/degrade_dataset.py --preset rass --input datasets/ADEChallengeData2016 \\
        --output datasets/ADEChallengeData2016_degraded --seed 0
    # LQ-1/2/3 copies of an image+mask set, as GleSAM's released LQSeg test sets (USM, 512x512)
    for L in 1 2 3; do python tools/degrade_dataset.py --layout image_mask --preset lqseg_$L \\
        --input datasets/LQSeg/test_clear/ECSSD --output datasets/LQSeg/test/ECSSD/LQ-$L \\
        --usm --final-size 512 --seed 0; done

Layouts: "ade20k" (images/<split>/ + annotations_detectron2/<split>/) and "image_mask"
(INPUT/images/ + INPUT/masks/<stem>.png, or --image-dir/--mask-dir; written as OUTPUT/images/ +
OUTPUT/masks/). Images are written as lossless PNG with the input's stem (exact 8-bit degraded
pixels); annotations are copied unchanged, and only for images that were written, so the output
is always a loadable dataset. OUTPUT/manifest.jsonl records each image's seed and sampled
parameters. Interrupted runs resume: finished images are skipped, the rest come out with the same
bytes as an uninterrupted run. Inputs left out (no annotation, no image, unreadable image or
annotation, image/annotation size mismatch) are summarised per reason and the exit status is 1;
usage errors exit with 2.

GleSAM options: --usm sharpens the input first (basicsr USMSharp: radius 50, weight 0.5,
threshold 10) and --final-size 512 resizes the result to a fixed 512x512 square (masks keep their
size); the released LQSeg test sets used both (GleSAM's generator also saved them as JPEG q95;
this tool writes PNG). --final-size orig (the default) keeps the input size.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

# Parsing imports nothing heavy (`--help` and argument errors answer at once); the engine (torch) comes after.
from rass.utils.choices import DEGRADATION_PRESETS, DEGRADE_LAYOUTS
from rass.utils.cli import report_user_error
from rass.utils.errors import UserError, UserKeyError, UserValueError
from rass.utils.outputs import make_output_folder


def _parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    from rass.data.degradation.presets import spec_field_names

    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserValueError(f"--set expects NAME=VALUE, got {item!r}")
        name, raw = item.split("=", 1)
        name = name.strip().lower()
        if name not in spec_field_names():
            raise UserKeyError(f"--set: unknown degradation value {name!r}; valid: {', '.join(spec_field_names())}")
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[name] = raw
    return out


def _final_size(value: str) -> Optional[int]:
    if value == "orig":
        return None
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'orig' or a positive integer (e.g. 512), got {value!r}")
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected 'orig' or a positive integer (e.g. 512), got {value!r}")
    return size


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(DEGRADATION_PRESETS), help="degradation preset")
    p.add_argument("--input", required=True, help="input root: ADE20K format (images/<split>/, annotations_detectron2/<split>/) "
                   "or, with --layout image_mask, the folder holding --image-dir and --mask-dir")
    p.add_argument("--output", required=True, help="output root (same layout); may hold an earlier partial run")
    p.add_argument("--layout", default="ade20k", choices=DEGRADE_LAYOUTS, help="input/output layout (default: ade20k)")
    p.add_argument("--image-dir", default="images", help="image_mask layout: image folder, relative to --input (default: images)")
    p.add_argument("--mask-dir", default="masks", help="image_mask layout: mask folder (<stem>.png), relative to --input (default: masks)")
    p.add_argument("--usm", action="store_true", help="USM-sharpen each input first (GleSAM's LQSeg generator; used for the released sets)")
    p.add_argument("--final-size", type=_final_size, default=None, metavar="{orig,N}",
                   help="'orig' (default): keep the input size; N: fixed NxN output (512 as GleSAM's released sets; image_mask only)")
    p.add_argument("--seed", type=int, required=True, help="base seed; each image's seed derives from it, the split and the file stem")
    p.add_argument("--splits", nargs="+", default=None, help="ade20k layout: split folders to process (default: validation)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a preset value, e.g. --set jpeg_range=[40,95] (repeatable)")
    p.add_argument("--batch-size", type=int, default=4, help="images per engine call")
    p.add_argument("--device", default="cpu", help="torch device of the engine (e.g. cpu, cuda)")
    p.add_argument("--jpeg-backend", default="auto", choices=["auto", "tensor", "pillow", "opencv"], help="JPEG implementation")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    a = p.parse_args(argv)

    if a.layout == "image_mask" and a.splits is not None:
        p.error("--splits applies to the ade20k layout only (image_mask reads --image-dir and --mask-dir)")
    try:
        from rass.data.degradation.offline import degrade_tree

        overrides = _parse_overrides(a.overrides)
        make_output_folder(a.output, "--output")
        report = degrade_tree(
            a.input,
            a.output,
            a.preset,
            a.seed,
            splits=a.splits or ["validation"],
            overrides=overrides,
            batch_size=a.batch_size,
            device=a.device,
            jpeg_backend=a.jpeg_backend,
            progress=None if a.no_progress else (lambda total: tqdm(total=total, unit="img", desc=f"degrade {a.preset}")),
            layout=a.layout,
            image_dir=a.image_dir,
            mask_dir=a.mask_dir,
            usm=a.usm,
            final_size=a.final_size,
        )
    except UserError as e:
        return report_user_error(e)
    print(f"degraded {report.written} images, skipped {report.skipped} already done, "
          f"copied {report.annotations} annotations -> {a.output}")
    if report.failures:
        print(f"{len(report.failures)} input file(s) left out (the output holds only complete image+annotation pairs):",
              file=sys.stderr)
        for line in report.summary():
            print(f"  {line}", file=sys.stderr)
        for path, reason in report.failures[:20]:
            print(f"    {path}: {reason}", file=sys.stderr)
        if len(report.failures) > 20:
            print(f"    ... and {len(report.failures) - 20} more", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
