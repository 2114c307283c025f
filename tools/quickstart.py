#!/usr/bin/env python
"""CPU quickstart: synthetic data -> train a tiny configuration -> evaluate -> results.

Generates the synthetic ADE20K-format dataset when it is absent ($RASS_SYNTHETIC_ROOT, default
datasets/synthetic_ade20k), trains with train_net.py on one CPU process, evaluates on
`synthetic_sem_seg_val` and leaves under output/quickstart/: eval_results.json, vis/*.png
(input | ground truth | prediction) and model_final.pth. Extra `KEY VALUE` pairs are passed to
train_net.py as config overrides.
"""
import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG, help="config to train (default: %(default)s)")
    p.add_argument("--output", default="output/quickstart", help="output folder (default: %(default)s)")
    p.add_argument("--num-vis", type=int, default=4, help="number of overlay PNGs to write")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args()
    os.chdir(REPO)

    from rass.data.datasets.register import SYNTHETIC_ROOT
    from rass.data.synthetic import make_synthetic_ade20k

    root = SYNTHETIC_ROOT.resolve()
    print(f"[quickstart] synthetic dataset: {root}")
    make_synthetic_ade20k(root, seed=0, num_train=200, num_val=50)

    cmd = [sys.executable, "train_net.py", "--config-file", a.config_file,
           "OUTPUT_DIR", a.output, "TEST.NUM_VIS", str(a.num_vis), *a.opts]
    print("[quickstart] " + " ".join(cmd))
    r = subprocess.run(cmd)
    if r.returncode != 0:
        print(f"[quickstart] training failed with exit code {r.returncode}", file=sys.stderr)
        return r.returncode

    res = json.load(open(os.path.join(a.output, "eval_results.json")))
    print("\n[quickstart] results on synthetic_sem_seg_val:")
    for name, task in res.items():
        m = task["sem_seg"]
        print(f"  {name}: mIoU {m['mIoU']:.2f}  fwIoU {m['fwIoU']:.2f}  mACC {m['mACC']:.2f}  pACC {m['pACC']:.2f}")
    print(f"[quickstart] wrote {a.output}/eval_results.json, {a.output}/vis/, {a.output}/model_final.pth")
    return 0


if __name__ == "__main__":
    sys.exit(main())
