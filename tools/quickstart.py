#!/usr/bin/env python
"""CPU quickstart: synthetic data -> train a tiny configuration -> evaluate -> results.

Generates the synthetic ADE20K-format dataset when it is absent ($RASS_SYNTHETIC_ROOT, default
datasets/synthetic_ade20k) and a fixed degraded copy of its validation split (preset `rass`,
$RASS_SYNTHETIC_DEGRADED_ROOT, default datasets/synthetic_ade20k_degraded), trains with
train_net.py on one CPU process, evaluates on `synthetic_sem_seg_val` and
`synthetic_sem_seg_val_degraded` and leaves under output/quickstart/: eval_results.json,
vis/<dataset>/*.png (input | ground truth | prediction) and model_final.pth. Extra `KEY VALUE`
pairs are passed to train_net.py as config overrides.

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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"
DEFAULT_OUTPUT = "output/quickstart"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, DEFAULT_CONFIG),
                   help=f"config to train (default: the repository's {DEFAULT_CONFIG})")
    p.add_argument("--output", default=os.path.join(REPO, DEFAULT_OUTPUT),
                   help=f"output folder (default: the repository's {DEFAULT_OUTPUT})")
    p.add_argument("--num-vis", type=int, default=4, help="number of overlay PNGs to write per dataset")
    p.add_argument("--num-train", type=int, default=200, help="synthetic training images to generate")
    p.add_argument("--num-val", type=int, default=50, help="synthetic validation images to generate")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args()
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
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", a.config_file, "DATASETS.TEST", tests,
           "OUTPUT_DIR", a.output, "TEST.NUM_VIS", str(a.num_vis), *a.opts]
    print("[quickstart] " + " ".join(cmd))
    r = subprocess.run(cmd)
    if r.returncode == 2:  # train_net.py has printed the problem
        return 2
    if r.returncode != 0:
        print(f"[quickstart] training failed with exit code {r.returncode}", file=sys.stderr)
        return r.returncode

    res = json.load(open(os.path.join(a.output, "eval_results.json")))
    print("\n[quickstart] results:")
    for name, task in res.items():
        m = task["sem_seg"]
        print(f"  {name}: mIoU {m['mIoU']:.2f}  fwIoU {m['fwIoU']:.2f}  mACC {m['mACC']:.2f}  pACC {m['pACC']:.2f}")
    print(f"[quickstart] wrote {a.output}/eval_results.json, {a.output}/vis/, {a.output}/model_final.pth")
    total_min = (time.monotonic() - start) / 60
    print(f"[quickstart] took {total_min:.1f} min (data {data_min:.1f} min, training + evaluation "
          f"{total_min - data_min:.1f} min) on {os.cpu_count()} CPU core(s)")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
