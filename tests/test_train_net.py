"""End-to-end: training, evaluation, resume, two processes and CLI errors (tiny FPN, CPU)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rass.config import setup_cfg
from tests.conftest import REPO

CFG = os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml")
TRAIN_NET = os.path.join(REPO, "train_net.py")
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MIN_SIZE_TEST", "128"]


def _run(args, timeout=600, check=True):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CFG, *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"train_net failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def test_training_loss_goes_down_and_eval_only_reproduces(synthetic_env, tmp_path):
    from rass.engine import Trainer

    out = tmp_path / "run"
    cfg = setup_cfg(CFG, FAST + ["SOLVER.MAX_ITER", "40", "OUTPUT_DIR", str(out), "TEST.NUM_VIS", "2"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)
    res = json.load(open(out / "eval_results.json"))
    miou = res["synthetic_sem_seg_val"]["sem_seg"]["mIoU"]
    assert miou > 20.0  # 9 classes present of 150: chance is far lower
    assert len(os.listdir(out / "vis" / "synthetic_sem_seg_val")) == 2
    assert (out / "model_final.pth").is_file()

    out2 = tmp_path / "eval"
    _run(["--eval-only", *FAST, "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(out2)])
    res2 = json.load(open(out2 / "eval_results.json"))
    for k in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert res2["synthetic_sem_seg_val"]["sem_seg"][k] == pytest.approx(res["synthetic_sem_seg_val"]["sem_seg"][k], abs=1e-6)


def test_two_processes_train_with_gloo(synthetic_env, tmp_path):
    r = _run(["--num-gpus", "2", *FAST, "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4",
              "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path)])
    log = r.stdout + r.stderr
    assert "World size: 2" in log
    assert (tmp_path / "model_final.pth").is_file()
    assert "synthetic_sem_seg_val" in json.load(open(tmp_path / "eval_results.json"))


def test_killed_run_resumes_from_last_checkpoint(synthetic_env, tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    args = [sys.executable, TRAIN_NET, "--config-file", CFG, *FAST, "SOLVER.MAX_ITER", "500",
            "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(tmp_path)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    tag = tmp_path / "last_checkpoint"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not (tag.is_file() and tag.read_text() >= "model_0000005.pth"):
            time.sleep(0.2)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    last = tag.read_text()
    assert last.startswith("model_") and (tmp_path / last).is_file()
    done = int(last[len("model_"):-len(".pth")]) + 1
    r = _run(["--resume", *FAST, "SOLVER.MAX_ITER", str(done + 3), "SOLVER.CHECKPOINT_PERIOD", "3",
              "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", str(tmp_path)])
    log = r.stdout + r.stderr
    assert f"Loading from {tmp_path / last}" in log or f"Loading from {tmp_path}/{last}" in log
    assert f"Starting training from iteration {done}" in log
    assert (tmp_path / "model_final.pth").is_file()
    # a temp file of a save killed by the SIGKILL above (if any) is removed by the resumed run
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_missing_weights_file_is_named(synthetic_env, tmp_path):
    missing = tmp_path / "nope" / "model.pth"
    r = _run(["--eval-only", "MODEL.WEIGHTS", str(missing), "OUTPUT_DIR", str(tmp_path)], check=False)
    assert r.returncode != 0
    assert "MODEL.WEIGHTS" in r.stderr and str(missing) in r.stderr


def test_unknown_config_key_is_named(tmp_path):
    r = _run(["MODEL.NOT_A_REAL_KEY", "3", "OUTPUT_DIR", str(tmp_path)], check=False)
    assert r.returncode != 0 and "MODEL.NOT_A_REAL_KEY" in r.stderr
