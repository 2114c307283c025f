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
    # SAM vs RobustSAM vs GleSAM (ViT-L) on the same prompts and degraded copies
    python tools/eval_robustness.py --config-file configs/lqseg/glesam_vitl_sd21.yaml --compare-sam \\
        --compare-config configs/lqseg/robustsam_vit_l.yaml --dataset lqseg_ecssd_test_clear
    # MGD-SAM2 (prompt-free) vs plain SAM2 given the GT box, on DIS-TE1 and its LQSeg copies
    python tools/eval_robustness.py --config-file configs/dis5k/mgd_sam2_hiera_b+.yaml \\
        --weights weights/mgd_sam2/model_epoch_best.pth --compare-config configs/lqseg/sam2_hiera_b+.yaml \\
        --compare-opts MODEL.SAM2.CHECKPOINT weights/sam2.1_hiera_base_plus.pt --dataset dis5k_te1

A level is `clean` (the dataset itself) or a degradation preset (rass, realesrgan_x2,
realesrgan_x4, lqseg_1, lqseg_2, lqseg_3). Each degraded copy is written on the CPU with the
engine of tools/degrade_dataset.py under CACHE_DIR/<dataset>/<level>_seed<S>/ (default cache:
$DETECTRON2_DATASETS/robustness_cache) and reused by later runs. Writes OUTPUT/robustness.json,
robustness.md, robustness.png and eval_results.json (default OUTPUT: <OUTPUT_DIR>/robustness).
Runs in one process (no --num-gpus); the drop column is relative to `clean`, else the first row.
Promptable-mask sets (LQSeg, image + mask folders) report IoU / Dice / BoundaryIoU / PixelAcc;
`--compare-sam` also evaluates plain SAM (the GleSAM / RobustSAM model's own SAM weights, SAM's own
decoding, the same seeded prompts) on every row, `--compare-config` models built from other configs
(e.g. RobustSAM next to GleSAM), all reported side by side with the main model's gain.
SOD / DIS sets (dis5k_*, hrsod_test, uhrsd_test, duts_test, hkuis_test, davis_s_test, sod_synthetic_test)
report maxF / wF / S / meanE / MAE (0..1; SODEvaluator, full results in inference/*/sod_*.json): MGD-SAM2
segments prompt-free; a promptable model (SAM2, SAM) is given the GT mask's bounding box (one object per
image), so its numbers are an upper reference for a box-prompted model, not a prompt-free result.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from rass.utils.cli import add_init_seed_argument, check_config_file, report_user_error
from rass.utils.errors import UserError, UserValueError


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="model config (YAML)")
    p.add_argument("--weights", default="", help="model checkpoint (.pth / .pkl); default: the weights the config "
                   "names (e.g. MODEL.SAM.CHECKPOINT and MODEL.GLESAM.LORA_PATH of a GleSAM config)")
    p.add_argument("--compare-sam", action="store_true",
                   help="GleSAM / RobustSAM configs: plain SAM (the model's own SAM weights) on the same rows too")
    p.add_argument("--compare-config", nargs="+", default=[], metavar="[NAME=]CONFIG",
                   help="promptable configs of further models (weights as each config names them) evaluated on the "
                        "same rows, prompts and degraded copies; NAME defaults to the method (SAM, GleSAM, RobustSAM, "
                        "SAM2, MGD-SAM2). On SOD / DIS sets MGD-SAM2 is prompt-free and a promptable model (SAM2) is "
                        "given the GT mask's box")
    p.add_argument("--compare-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of every --compare-config "
                        "(e.g. MODEL.SAM2.CHECKPOINT weights/sam2.1_hiera_base_plus.pt)")
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
    if len(a.compare_opts) % 2:
        p.error(f"--compare-opts takes KEY VALUE pairs, got {len(a.compare_opts)} words: {' '.join(a.compare_opts)}")
    try:
        check_config_file(a.config_file)  # a mistyped path is reported before the heavy imports
        for spec in a.compare_config:
            check_config_file(spec.rpartition("=")[2])
    except UserError as e:
        return report_user_error(e)

    # after parsing: --help and argument errors answer without importing torch & co.
    from detectron2.utils.logger import setup_logger
    from tqdm import tqdm

    from rass.checkpoint import RASSCheckpointer
    from rass.config import setup_cfg
    from rass.data.datasets.sem_seg import datasets_root
    from rass.engine import Trainer
    from rass.engine.model_build import seeded_init
    from rass.engine.trainer import is_promptable_model
    from rass.engine.robustness import evaluate_robustness, method_name, plain_sam_of
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
        compare = {"SAM": plain_sam_of(model)} if a.compare_sam else {}
        for spec in a.compare_config:
            name, _, path = spec.rpartition("=")
            other_cfg = setup_cfg(path, list(a.compare_opts) + ["MODEL.DEVICE", cfg.MODEL.DEVICE])
            with seeded_init(a.init_seed):
                other = Trainer.build_model(other_cfg).eval()
            name = name or method_name(other)
            if name in compare or name == method_name(model):
                raise UserValueError(f"--compare-config {spec}: the name {name!r} is taken; write NAME={path}")
            # a model of another input kind (SAM2 with a box next to the prompt-free MGD-SAM2) keeps its own
            # config's test mapper; promptable models share the main config's prompts
            same_kind = is_promptable_model(other_cfg) == is_promptable_model(cfg)
            compare[name] = other if same_kind else (other, other_cfg)
        report = evaluate_robustness(
            cfg, model, output, dataset=a.dataset, levels=a.levels, datasets=a.datasets, seed=a.seed,
            cache_dir=cache_dir, info={"config_file": a.config_file, "weights": a.weights},
            progress=None if a.no_progress else (lambda total: tqdm(total=total, unit="img", desc="degrade")),
            compare=compare or None, model_name=method_name(model) if compare else "model",
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
