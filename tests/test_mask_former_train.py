"""End-to-end on the tiny Mask2Former configuration: training lowers the loss, and `--eval-only`
on the saved checkpoint reproduces the metrics of the evaluation after training."""
import json
import os
import subprocess
import sys

import pytest

from rass.config import setup_cfg
from tests.conftest import REPO

CFG = os.path.join(REPO, "configs/quickstart/tiny_maskformer_r18.yaml")
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MIN_SIZE_TEST", "128", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"]


def test_tiny_maskformer_trains_and_eval_only_reproduces(synthetic_env, tmp_path):
    from rass.engine import Trainer

    out = tmp_path / "run"
    cfg = setup_cfg(CFG, FAST + ["SOLVER.MAX_ITER", "30", "OUTPUT_DIR", str(out)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 30
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)
    res = json.load(open(out / "eval_results.json"))["synthetic_sem_seg_val"]["sem_seg"]
    assert (out / "model_final.pth").is_file()

    out2 = tmp_path / "eval"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run(
        [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CFG, "--eval-only", *FAST,
         "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out2)],
        capture_output=True, text=True, timeout=600, env=env, cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    res2 = json.load(open(out2 / "eval_results.json"))["synthetic_sem_seg_val"]["sem_seg"]
    for k in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert res2[k] == pytest.approx(res[k], abs=1e-6)
