#!/usr/bin/env python
"""Prompt-free segmentation with MGD-SAM2 on your images: one object mask per image, at the image's size.

    python demo/demo_mgd.py --config-file configs/dis5k/mgd_sam2_hiera_b+.yaml --input photos/ "more/*.jpg" \\
        --output out/ --opts MODEL.WEIGHTS weights/mgd_sam2/model_epoch_best.pth
    python demo/demo_mgd.py --config-file configs/dis5k/mgd_sam2_hiera_b+.yaml --input photo.jpg --output out/ \\
        --degrade lqseg_3 --box 40,30,600,420 --opts MODEL.WEIGHTS weights/mgd_sam2/model_epoch_best.pth \\
        MODEL.MGD_SAM2.SAM2_INIT weights/sam2.1_hiera_base_plus.pt
    python demo/demo_mgd.py --config-file configs/dis5k/tiny_mgd_sam2.yaml --input img.png   # tiny, random weights

`--input` takes image files, folders (every image inside, sorted by name) and glob patterns, of any size
and aspect. MGD-SAM2 resizes each image to MODEL.MGD_SAM2.IMAGE_SIZE squared (1024 as released; bilinear,
the aspect is not kept) and its mask is resized back to the image's own size, so `<name>_mask.png` (0/255)
has the input's size; `<name>.png` is the mask over the image. `--degrade PRESET` (lqseg_1/2/3, rass) first
degrades each image as the browser demo does (seeded by `--degrade-seed`; written as `<name>_degraded.png`)
and segments the degraded image. `--box x1,y1,x2,y2` also runs plain SAM2 given that box (the SAM 2.1
weights of MODEL.MGD_SAM2.SAM2_INIT, same size; random when empty): `<name>.png` then shows MGD-SAM2 | SAM2
and `<name>_sam2_mask.png` is SAM2's mask; a box outside an image is an error naming it. `--output` is a
folder, or a .png/.jpg file name for a single input. Without `--output` the mask area is printed per image.
`MODEL.MGD_SAM2.TTA False` (after `--opts`) runs one pass instead of the release's six (flip x 3 scales).
An unreadable input is reported by name, the others are still processed and the exit code is 1; problems
with the arguments, the config or the output are one `error:` line (exit code 2). A model with random
weights is announced: its masks mean nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only what parsing the arguments and checking the outputs needs is imported here: `--help` and argument
# errors answer at once; torch, detectron2 and the models come in `main` after them.
from rass.utils.choices import APP_DEGRADATIONS  # noqa: E402
from rass.utils.cli import (DEBUG_FLAG, DEBUG_HELP, add_init_seed_argument, check_config_file,  # noqa: E402
                            enable_debug, run_cli)
from rass.utils.errors import UserError, UserValueError  # noqa: E402
from rass.utils.inputs import collect_image_paths  # noqa: E402
from rass.utils.io import save_image_atomic  # noqa: E402
from rass.utils.outputs import check_writable, image_outputs  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="an MGD-SAM2 config (configs/dis5k/*.yaml)")
    p.add_argument("--input", nargs="+", default=[], metavar="PATH", help="image files, folders or glob patterns")
    p.add_argument("--output", default=None, metavar="DIR_OR_FILE", help="folder (or a .png/.jpg file for one input)")
    p.add_argument("--degrade", default="none", choices=APP_DEGRADATIONS,
                   help="degrade each image first, as the browser demo (default: none)")
    p.add_argument("--degrade-seed", type=int, default=0, help="seed of --degrade (0 .. 2**31-1, default 0)")
    p.add_argument("--box", default=None, metavar="X1,Y1,X2,Y2", help="also run plain SAM2 given this box")
    p.add_argument("--opacity", type=float, default=0.5, help="mask opacity in the overlay (0..1)")
    add_init_seed_argument(p)
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides (KEY VALUE pairs), last on the command line")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must be in [0, 1], got {args.opacity}")
    if args.debug:
        enable_debug()
    return args


def parse_box(text: Optional[str]) -> Optional[List[float]]:
    """The --box value as [x1, y1, x2, y2] (None when not given)."""
    if text is None:
        return None
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise UserValueError(f"--box {text!r}: expected 4 comma-separated numbers x1,y1,x2,y2 (pixels)")
    return box


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 ok, 1 some input failed, 2 bad arguments / config / output)."""
    args = parse_args(argv)
    check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
    if not args.input:
        raise UserValueError("--input is required: image files, folders or glob patterns")
    if len(args.opts) % 2:
        raise UserValueError(f"--opts must be KEY VALUE pairs, got {len(args.opts)} words: {' '.join(args.opts)}")
    box = parse_box(args.box)
    paths, problems = collect_image_paths(args.input)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=sys.stderr)
    if not paths:
        raise UserError("no input image could be found", hint="give image files, folders or glob patterns")
    outs = image_outputs(paths, args.output, extra="_mask") if args.output else {}
    for folder in sorted({os.path.dirname(o) for pair in outs.values() for o in pair if o}):
        check_writable(args.output, folder)  # before any model is built

    from rass.app.inputs import Degrader, check_seed
    from rass.app.mgd_tab import SAM2_NAME, MgdSegmenter
    from rass.config import setup_cfg
    from rass.engine.model_build import seeded_init
    from rass.evaluation.visualize import format_score, hstack_panels, titled
    from rass.utils.image_io import read_image_checked

    seed = check_seed(args.degrade_seed)
    cfg = setup_cfg(args.config_file, args.opts)
    with seeded_init(args.init_seed):  # parts without weights (e.g. the tiny MGD-SAM2) are seeded
        seg = MgdSegmenter.from_cfg(cfg, with_sam2=box is not None, opacity=args.opacity)
    if seg.weight_notes:
        print(f"note: {len(seg.weight_notes)} model part(s) have random weights: the masks are not meaningful "
              "(the warnings above say which)", file=sys.stderr)
    degrader = Degrader() if args.degrade != "none" else None
    failed = len(problems)
    for path in paths:
        try:
            image = read_image_checked(path, "RGB")
            if degrader is not None:
                image = degrader(image, args.degrade, seed)
            res = seg.run(image, box)
            h, w = image.shape[:2]
            line = f"{path} ({w}x{h}): MGD-SAM2 mask {100.0 * res.masks['MGD-SAM2'].mean():.1f}% of the image"
            if box is not None:
                line += (f"; SAM2 (box) {100.0 * res.masks[SAM2_NAME].mean():.1f}%, confidence "
                         f"{format_score(res.sam2_iou_pred)}; IoU MGD-SAM2 vs SAM2 {format_score(res.mutual_iou)}")
            print(line)
            if outs:
                overlay_path, mask_path = outs[path]
                stem = os.path.splitext(mask_path)[0][: -len("_mask")]
                views = res.overlays["MGD-SAM2"]
                if box is not None:
                    views = hstack_panels([titled(res.overlays[name], name) for name in res.overlays])
                    save_image_atomic(f"{stem}_sam2_mask.png", res.masks[SAM2_NAME].astype(np.uint8) * 255)
                save_image_atomic(overlay_path, views)
                save_image_atomic(mask_path, res.masks["MGD-SAM2"].astype(np.uint8) * 255)
                if degrader is not None:
                    save_image_atomic(f"{stem}_degraded.png", image)
        except UserError as e:  # this input's problem (file, box); a bug propagates with its traceback
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
    if outs:
        print(f"wrote {len(paths) - failed + len(problems)} mask(s) to {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
