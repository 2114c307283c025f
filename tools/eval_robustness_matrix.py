#!/usr/bin/env python
"""Evaluate promptable models over image quality x prompt quality: the robustness matrix.

Examples:
    # SAM-L vs HQ-SAM-L on HQ-SAM's DIS-VD (also hqseg_thin_test, hqseg_coift, hqseg_hrsod), clean and degraded
    python tools/eval_robustness_matrix.py --models configs/lqseg/sam_vit_l.yaml configs/lqseg/sam_hq_vit_l.yaml \\
        --dataset hqseg_dis_val --levels clean,lqseg_1,lqseg_2,lqseg_3
    # any promptable config (GleSAM, RobustSAM, Stable-SAM, SAM2, ...), a weight file per model, named models
    python tools/eval_robustness_matrix.py --models glesam:configs/lqseg/glesam_vitl_sd21.yaml \\
        robust:configs/lqseg/robustsam_vit_l.yaml --dataset ... --limit 20
    # quick check on the tiny random models (no downloads), two processes
    python tools/eval_robustness_matrix.py --models configs/lqseg/tiny_sam.yaml configs/lqseg/tiny_sam_hq.yaml \\
        --dataset lqseg_synthetic_test_clear --levels clean,lqseg_1 --limit 4 --num-processes 2

Images are read at one size for all models (--image-size; 0 = as stored, HQ-SAM's protocol).
Models: CONFIG, CONFIG=WEIGHTS or NAME:CONFIG[=WEIGHTS] (default name: the config's stem). Levels: `clean` and/or
degradation presets; copies are cached as for tools/eval_robustness.py under CACHE_DIR/<dataset>/<level>_seed<S>/.
Prompt protocols (rass.data.prompt_quality): gt_box, box_noise_<s>, points_<n>, box_points_<n>, seeded per image
and object, from the first model's TEST.PROMPT_QUALITY keys (change them with --opts). Writes to OUTPUT:
robustness_matrix.json (+ _per_image.json), robustness_matrix.md (a table per model), matrix_<metric>.png (a heat
map per metric: mIoU, mBIoU, stability). With --num-processes N the images are split over N CPU processes (gloo);
the numbers are the same as with one.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from rass.utils.cli import add_init_seed_argument, report_user_error
from rass.utils.errors import UserError


def _run(a: argparse.Namespace) -> None:
    """The matrix in one process of the run (all processes call it)."""
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    from rass.engine.robustness_matrix import build_from_config, format_matrix_markdown, parse_model_specs, run_matrix

    setup_logger(output=a.output if comm.is_main_process() else None, name="rass", distributed_rank=comm.get_rank())
    models = parse_model_specs(a.models)
    report = run_matrix(models, lambda m: build_from_config(m, a.opts, a.init_seed), a.dataset, a.levels,
                        output_dir=a.output, cache_dir=a.cache_dir, seed=a.seed, limit=a.limit,
                        info={"opts": list(a.opts)}, progress=print if comm.is_main_process() else None)
    if report is not None:
        print(format_matrix_markdown(report))
        print(f"wrote {a.output}/robustness_matrix.json, robustness_matrix.md, matrix_*.png")


def _worker(a: argparse.Namespace) -> None:
    try:
        _run(a)
    except UserError as e:
        report_user_error(e)
        raise SystemExit(2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="CONFIG, CONFIG=WEIGHTS or NAME:CONFIG[=WEIGHTS]")
    p.add_argument("--dataset", required=True, help="registered image + mask dataset (clean)")
    p.add_argument("--levels", default="clean,lqseg_1,lqseg_2,lqseg_3",
                   help="comma-separated levels: clean and/or preset names (default: %(default)s)")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (by id) per level; 0 = all")
    p.add_argument("--seed", type=int, default=0, help="base seed of the degraded copies (default: %(default)s)")
    p.add_argument("--cache-dir", help="folder of the degraded copies (default: $DETECTRON2_DATASETS/robustness_cache)")
    p.add_argument("--output", default="output/robustness_matrix", help="output folder (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=0, help="INPUT.PROMPT.IMAGE_SIZE of every model: the square side "
                   "images are resized to before SAM's transform; 0 = as stored (HQ-SAM's protocol; default)")
    p.add_argument("--num-processes", type=int, default=1, help="CPU processes (gloo) sharing the images")
    add_init_seed_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides for every model "
                   "(last option), e.g. TEST.PROMPT_QUALITY.BOX_NOISE_SCALES [0.1,0.5]")
    a = p.parse_args(argv)
    if a.limit < 0 or a.num_processes < 1 or a.image_size < 0:
        p.error(f"--limit and --image-size must be >= 0 and --num-processes >= 1 (got {a.limit}, {a.image_size}, "
                f"{a.num_processes})")
    a.opts = ["INPUT.PROMPT.IMAGE_SIZE", str(a.image_size)] + list(a.opts)
    for item in a.models:  # a mistyped path is reported before the heavy imports
        config = item.split(":", 1)[-1] if ":" in item and not os.path.exists(item) else item
        config = config.partition("=")[0]
        if not os.path.isfile(config):
            return report_user_error(UserError(f"--models {item!r}: config file {config!r} does not exist",
                                               "give CONFIG, CONFIG=WEIGHTS or NAME:CONFIG[=WEIGHTS]"))

    from rass.data.datasets.sem_seg import datasets_root
    from rass.utils.outputs import make_output_folder

    a.cache_dir = a.cache_dir or os.path.join(datasets_root(), "robustness_cache")
    try:
        make_output_folder(a.output, "--output")
        if a.num_processes == 1:
            _run(a)
        else:
            from detectron2.engine import launch

            launch(_worker, a.num_processes, dist_url="auto", args=(a,))
    except UserError as e:
        return report_user_error(e)
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
