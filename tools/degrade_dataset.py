#!/usr/bin/env python
"""Write a degraded copy of an ADE20K-format tree (fixed, reproducible evaluation sets).

Examples:
    # ade20k_sem_seg_val_degraded (the RASS evaluation set)
    python tools/degrade_dataset.py --preset rass --input datasets/ADEChallengeData2016 \\
        --output datasets/ADEChallengeData2016_degraded --seed 0
    # the three LQSeg levels
    for L in 1 2 3; do python tools/degrade_dataset.py --preset lqseg_$L \\
        --input datasets/ADEChallengeData2016 --output datasets/ADEChallengeData2016_lqseg_$L --seed 0; done

Images are written as lossless PNG with the input's stem (exact 8-bit degraded pixels);
annotations are copied unchanged; OUTPUT/manifest.jsonl records each image's seed and sampled
parameters. Interrupted runs resume: finished images are skipped, the rest come out with the same
bytes as an uninterrupted run. Unreadable inputs are listed at the end and the exit status is 1.
"""
from __future__ import annotations

import argparse
import ast
import sys
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from rass.data.degradation.offline import degrade_tree
from rass.data.degradation.presets import PRESETS, spec_field_names


def _parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        name, raw = item.split("=", 1)
        name = name.strip().lower()
        if name not in spec_field_names():
            raise SystemExit(f"--set: unknown degradation value {name!r}; valid: {', '.join(spec_field_names())}")
        try:
            out[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[name] = raw
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="degradation preset")
    p.add_argument("--input", required=True, help="ADE20K-format root (images/<split>/, annotations_detectron2/<split>/)")
    p.add_argument("--output", required=True, help="output root (same layout); may hold an earlier partial run")
    p.add_argument("--seed", type=int, required=True, help="base seed; each image's seed derives from it, the split and the file stem")
    p.add_argument("--splits", nargs="+", default=["validation"], help="split folders to process (default: validation)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a preset value, e.g. --set jpeg_range=[40,95] (repeatable)")
    p.add_argument("--batch-size", type=int, default=4, help="images per engine call")
    p.add_argument("--device", default="cpu", help="torch device of the engine (e.g. cpu, cuda)")
    p.add_argument("--jpeg-backend", default="auto", choices=["auto", "tensor", "pillow", "opencv"], help="JPEG implementation")
    p.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    a = p.parse_args(argv)

    try:
        overrides = _parse_overrides(a.overrides)
        report = degrade_tree(
            a.input,
            a.output,
            a.preset,
            a.seed,
            splits=a.splits,
            overrides=overrides,
            batch_size=a.batch_size,
            device=a.device,
            jpeg_backend=a.jpeg_backend,
            progress=None if a.no_progress else (lambda total: tqdm(total=total, unit="img", desc=f"degrade {a.preset}")),
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"degraded {report.written} images, skipped {report.skipped} already done, "
          f"copied {report.annotations} annotations -> {a.output}")
    if report.failures:
        print(f"{len(report.failures)} input file(s) could not be read:", file=sys.stderr)
        for path, reason in report.failures:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
