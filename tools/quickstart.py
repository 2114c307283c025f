#!/usr/bin/env python
"""CPU quickstart: synthetic data -> train a tiny configuration -> evaluate -> results.

Generates the synthetic ADE20K-format dataset when it is absent ($RASS_SYNTHETIC_ROOT, default
datasets/synthetic_ade20k) and a fixed degraded copy of its validation split (preset `rass`,
$RASS_SYNTHETIC_DEGRADED_ROOT, default datasets/synthetic_ade20k_degraded), trains with
train_net.py on one CPU process, evaluates on `synthetic_sem_seg_val` and
`synthetic_sem_seg_val_degraded` and leaves under output/quickstart/: eval_results.json,
vis/<dataset>/*.png (input | ground truth | prediction) and model_final.pth. Extra `KEY VALUE`
pairs are passed to train_net.py as config overrides (of the RASS configuration).

Then (unless --skip-promptable) it trains a tiny promptable SAM, configs/quickstart/tiny_promptable.yaml,
on generated one-object images ($RASS_LQSEG_SYNTHETIC_ROOT, default datasets/synthetic_lqseg;
tools/make_synthetic_lqseg.py), degraded online, evaluates it with one click per object on the
clean and LQ-1/2/3 copies and leaves output/quickstart/promptable/model_final.pth (used by the
browser page's SAM tab and demo_sam.py when present).

It runs from any folder: the built-in defaults (the config, output/quickstart, the datasets) are
the repository's folders; a relative --config-file / --output given by the user is relative to the
current folder (see rass/utils/paths.py).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"
DEFAULT_OUTPUT = "output/quickstart"
PROMPTABLE_CONFIG = "configs/quickstart/tiny_promptable.yaml"
ROBUSTNESS_NOTE = ("[quickstart] why degraded can score above clean here: the tiny RASS learns from scratch on "
                   "degraded crops only (INPUT.DEGRADATION, preset rass: the degraded copy's), so clean images are "
                   "new to it; "
                   "trained on clean images the same model drops on the degraded copy instead (--clean-baseline)")
BASELINE_SUBDIR = "clean_baseline"  # under --output: the --clean-baseline model
PROMPTABLE_SUBDIR = "promptable"  # under --output: model_final.pth of PROMPTABLE_CONFIG (read by the browser page)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, DEFAULT_CONFIG),
                   help=f"config to train (default: the repository's {DEFAULT_CONFIG})")
    p.add_argument("--output", default=os.path.join(REPO, DEFAULT_OUTPUT),
                   help=f"output folder (default: the repository's {DEFAULT_OUTPUT})")
    p.add_argument("--num-vis", type=int, default=4, help="number of overlay PNGs to write per dataset")
    p.add_argument("--num-train", type=int, default=200,
                   help="synthetic training images to generate (scenes; as many object images)")
    p.add_argument("--num-val", type=int, default=50,
                   help="synthetic validation images to generate (scenes; as many object test images)")
    p.add_argument("--skip-promptable", action="store_true",
                   help=f"do not train the tiny promptable (SAM-shaped) model ({PROMPTABLE_CONFIG})")
    p.add_argument("--promptable-iters", type=int, default=0,
                   help="training iterations of the promptable model (default 0: the config's SOLVER.MAX_ITER)")
    p.add_argument("--clean-baseline", action="store_true",
                   help="also train the same tiny RASS without degradations (INPUT.DEGRADATION.ENABLED False) and "
                        "print both models' clean -> degraded drop (doubles the RASS training time)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args()
    from rass.utils.cli import check_config_file

    check_config_file(a.config_file)  # a mistyped path is reported before the data is generated
    start = time.monotonic()

    from rass.data.datasets.register import SYNTHETIC_DEGRADED_ROOT, SYNTHETIC_ROOT
    from rass.data.degradation.offline import degrade_tree
    from rass.data.synthetic import make_synthetic_ade20k

    root, degraded = SYNTHETIC_ROOT.resolve(), SYNTHETIC_DEGRADED_ROOT.resolve()
    print(f"[quickstart] synthetic dataset: {root}")
    make_synthetic_ade20k(root, seed=0, num_train=a.num_train, num_val=a.num_val)
    print(f"[quickstart] degraded validation copy (preset rass): {degraded}")
    report = degrade_tree(root, degraded, preset="rass", seed=0, splits=("validation",))
    if report.failures:
        print(f"[quickstart] could not degrade: {report.failures}", file=sys.stderr)
        return 1

    data_min = (time.monotonic() - start) / 60
    tests = '("synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded")'
    rc = _train([a.config_file, "DATASETS.TEST", tests, "OUTPUT_DIR", a.output, "TEST.NUM_VIS", str(a.num_vis),
                 *a.opts])
    if rc:
        return rc
    baseline_out = os.path.join(a.output, BASELINE_SUBDIR)
    if a.clean_baseline:
        rc = _train([a.config_file, "DATASETS.TEST", tests, "OUTPUT_DIR", baseline_out, "TEST.NUM_VIS", "0", *a.opts,
                     "INPUT.DEGRADATION.ENABLED", "False"])
        if rc:
            return rc
    rass_min = (time.monotonic() - start) / 60 - data_min
    promptable_out = os.path.join(a.output, PROMPTABLE_SUBDIR)
    if not a.skip_promptable:
        rc = _train_promptable(promptable_out, a.num_train, a.num_val, a.promptable_iters)
        if rc:
            return rc

    res = json.load(open(os.path.join(a.output, "eval_results.json")))
    print("\n[quickstart] results of the tiny RASS (semantic segmentation, metrics in %):")
    for name, task in res.items():
        m = task["sem_seg"]
        print(f"  {name}: mIoU {m['mIoU']:.2f}  fwIoU {m['fwIoU']:.2f}  mACC {m['mACC']:.2f}  pACC {m['pACC']:.2f}")
    clean, degraded = (res[n]["sem_seg"]["mIoU"] for n in ("synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded"))
    print(f"[quickstart] clean -> degraded (preset rass): tiny RASS {clean:.2f} -> {degraded:.2f} mIoU "
          f"(drop {clean - degraded:+.2f})")
    if a.clean_baseline:
        base = json.load(open(os.path.join(baseline_out, "eval_results.json")))
        bc, bd = (base[n]["sem_seg"]["mIoU"] for n in ("synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded"))
        print(f"[quickstart] clean -> degraded: the same model trained on clean images {bc:.2f} -> {bd:.2f} mIoU "
              f"(drop {bc - bd:+.2f}; {baseline_out})")
    print(ROBUSTNESS_NOTE)
    print(f"[quickstart] wrote {a.output}/eval_results.json, {a.output}/vis/, {a.output}/model_final.pth")
    if not a.skip_promptable:
        res = json.load(open(os.path.join(promptable_out, "eval_results.json")))
        print("[quickstart] results of the tiny promptable SAM (one click per object; fractions 0..1):")
        for name, task in res.items():
            m = task["promptable"]
            print(f"  {name}: IoU {m['IoU']:.3f}  Dice {m['Dice']:.3f}  BoundaryIoU {m['BoundaryIoU']:.3f}")
        print(f"[quickstart] wrote {promptable_out}/model_final.pth (config {PROMPTABLE_CONFIG}; the browser page's "
              "SAM tab uses it)")
    total_min = (time.monotonic() - start) / 60
    extra = "" if a.skip_promptable else f", promptable model {total_min - data_min - rass_min:.1f} min"
    print(f"[quickstart] took {total_min:.1f} min (data {data_min:.1f} min, RASS training + evaluation "
          f"{rass_min:.1f} min{extra}) on {os.cpu_count()} CPU core(s)")
    return 0


def _train(args: List[str]) -> int:
    """Run train_net.py with `args` (config file + overrides); 0, or the exit status to return."""
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", *args]
    print("[quickstart] " + " ".join(cmd))
    r = subprocess.run(cmd)
    if r.returncode == 2:  # train_net.py has printed the problem
        return 2
    if r.returncode != 0:
        print(f"[quickstart] training failed with exit code {r.returncode}", file=sys.stderr)
    return r.returncode


def _train_promptable(output: str, num_train: int, num_test: int, iters: int) -> int:
    """Generate the one-object set (`make_synthetic_lqseg`) and train + evaluate PROMPTABLE_CONFIG in `output`.

    Args:
        output: OUTPUT_DIR of the promptable model (model_final.pth, eval_results.json).
        num_train: clean training pairs (degraded online in training).
        num_test: test images (clean + LQ-1/2/3 copies).
        iters: SOLVER.MAX_ITER (0: the config's).
    """
    from rass.data.datasets.lqseg import LQSEG_SYNTHETIC_ROOT
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = LQSEG_SYNTHETIC_ROOT.resolve()
    print(f"[quickstart] synthetic one-object set for the promptable model: {root}")
    make_synthetic_lqseg(root, seed=0, num_images=num_test, levels=(1, 2, 3), min_size=96, max_size=192,
                         num_train=num_train)
    opts = ["OUTPUT_DIR", output] + (["SOLVER.MAX_ITER", str(iters)] if iters > 0 else [])
    return _train([os.path.join(REPO, PROMPTABLE_CONFIG), *opts])

if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
