#!/usr/bin/env python
"""Evaluate a model across degradation levels: a robustness table, JSON and plot.

Examples:
    # clean ADE20K-val and the three LQSeg levels (copies written once, then reused)
    python tools/eval_robustness.py --config-file configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml \\
        --weights weights/rass.pth --dataset ade20k_sem_seg_val --levels clean,lqseg_1,lqseg_2,lqseg_3
    # the paper's benchmarks, evaluated as registered
    python tools/eval_robustness.py --config-file ... --weights weights/rass.pth \\
        --datasets ade20k_sem_seg_val ade20k_sem_seg_val_degraded reallq_sem_seg_val
    # quickstart model on the synthetic data
    python tools/eval_robustness.py --config-file configs/quickstart/tiny_rass.yaml \\
        --weights output/quickstart/model_final.pth --dataset synthetic_sem_seg_val
    # SAM vs GleSAM on LQSeg's ECSSD: the released clean / LQ-1 / LQ-2 / LQ-3 sets (IoU, Dice)
    python tools/eval_robustness.py --config-file configs/lqseg/glesam_vitl_sd21.yaml --compare-sam \\
        --datasets lqseg_ecssd_test_clear lqseg_ecssd_test_lq1 lqseg_ecssd_test_lq2 lqseg_ecssd_test_lq3
    # ... or copies of any image + mask set made here with the lqseg presets
    python tools/eval_robustness.py --config-file configs/lqseg/glesam_vitl_sd21.yaml --compare-sam \\
        --dataset lqseg_ecssd_test_clear --levels clean,lqseg_1,lqseg_2,lqseg_3

A level is `clean` (the dataset itself) or a degradation preset (rass, realesrgan_x2,
realesrgan_x4, lqseg_1, lqseg_2, lqseg_3). Each degraded copy is written on the CPU with the
engine of tools/degrade_dataset.py under CACHE_DIR/<dataset>/<level>_seed<S>/ (default cache:
$DETECTRON2_DATASETS/robustness_cache) and reused by later runs. Writes OUTPUT/robustness.json,
robustness.md, robustness.png and eval_results.json (default OUTPUT: <OUTPUT_DIR>/robustness).
Runs in one process (no --num-gpus); the drop column is relative to `clean`, else the first row.
Promptable-mask sets (LQSeg, image + mask folders) report IoU / Dice / BoundaryIoU / PixelAcc;
`--compare-sam` also evaluates plain SAM (the GleSAM model's own SAM weights, no enhancement, the
same seeded prompts) on every row and reports both side by side with GleSAM's gain.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from rass.engine.model_build import add_init_seed_argument


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="model config (YAML)")
    p.add_argument("--weights", default="", help="model checkpoint (.pth / .pkl); default: the weights the config "
                   "names (e.g. MODEL.SAM.CHECKPOINT and MODEL.GLESAM.LORA_PATH of a GleSAM config)")
    p.add_argument("--compare-sam", action="store_true", help="GleSAM configs: plain SAM on the same rows too")
    p.add_argument("--dataset", help="registered clean dataset whose degraded copies are evaluated")
    p.add_argument("--levels", default="clean,lqseg_1,lqseg_2,lqseg_3",
                   help="comma-separated levels: clean and/or preset names (default: %(default)s)")
    p.add_argument("--datasets", nargs="+", default=[], help="registered datasets evaluated as they are (one row each)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the degraded copies (default: %(default)s)")
    p.add_argument("--cache-dir", help="folder of the degraded copies (default: $DETECTRON2_DATASETS/robustness_cache)")
    p.add_argument("--output", help="output folder (default: <OUTPUT_DIR of the config>/robustness)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while degrading")
    add_init_seed_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides (last option)")
    a = p.parse_args(argv)
    if a.dataset is None and not a.datasets:
        p.error("give --dataset (with --levels) and/or --datasets")

    # after parsing: --help and argument errors answer without importing torch & co.
    from detectron2.utils.logger import setup_logger
    from tqdm import tqdm

    from rass.checkpoint import RASSCheckpointer
    from rass.config import setup_cfg
    from rass.data.datasets.sem_seg import datasets_root
    from rass.engine import Trainer
    from rass.engine.model_build import seeded_init
    from rass.engine.robustness import evaluate_robustness, plain_sam_of
    from rass.utils.cli import report_user_error
    from rass.utils.errors import UserError
    from rass.utils.outputs import make_output_folder

    try:
        cfg = setup_cfg(a.config_file, list(a.opts) + (["MODEL.WEIGHTS", a.weights] if a.weights else []))
    except UserError as e:
        return report_user_error(e)
    output = a.output or os.path.join(cfg.OUTPUT_DIR, "robustness")
    cache_dir = a.cache_dir or os.path.join(datasets_root(), "robustness_cache")
    try:
        make_output_folder(output, "--output")
    except UserError as e:
        return report_user_error(e)
    setup_logger(output=output, name="rass")
    setup_logger(output=output, name="detectron2", abbrev_name="d2")
    try:
        with seeded_init(a.init_seed):  # parts without weights (e.g. a tiny random SAM) are seeded
            model = Trainer.build_model(cfg)
        if a.weights:
            RASSCheckpointer(cfg, model, save_dir=output).load(a.weights)
        compare = {"SAM": plain_sam_of(model)} if a.compare_sam else None
        report = evaluate_robustness(
            cfg, model, output, dataset=a.dataset, levels=a.levels, datasets=a.datasets, seed=a.seed,
            cache_dir=cache_dir, info={"config_file": a.config_file, "weights": a.weights},
            progress=None if a.no_progress else (lambda total: tqdm(total=total, unit="img", desc="degrade")),
            compare=compare, model_name="GleSAM" if a.compare_sam else "model",
        )
    except UserError as e:  # a RobustnessError names the level or dataset
        return report_user_error(e)
    from rass.evaluation.robustness_report import format_markdown

    print(format_markdown(report))
    print(f"wrote {output}/robustness.json, robustness.md, robustness.png, eval_results.json")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
