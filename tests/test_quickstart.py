"""The quickstart driver end to end, shrunk (few images, 3 iterations)."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_quickstart_generates_data_trains_evaluates_and_writes_outputs(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore", RASS_SYNTHETIC_ROOT=str(tmp_path / "synth"),
               RASS_SYNTHETIC_DEGRADED_ROOT=str(tmp_path / "synth_deg"))
    out = tmp_path / "qs"
    cmd = [sys.executable, os.path.join(REPO, "tools/quickstart.py"), "--output", str(out), "--num-train", "6",
           "--num-val", "2", "--num-vis", "1", "SOLVER.MAX_ITER", "3", "INPUT.CROP.SIZE", "(128, 128)",
           "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert len(os.listdir(tmp_path / "synth" / "images" / "training")) == 6
    assert len(os.listdir(tmp_path / "synth_deg" / "images" / "validation")) == 2
    res = json.load(open(out / "eval_results.json"))
    assert set(res) == {"synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded"}
    for name in res:
        m = res[name]["sem_seg"]
        assert all(0 <= m[k] <= 100 for k in ("mIoU", "fwIoU", "mACC", "pACC"))
        assert f"{name}: mIoU {m['mIoU']:.2f}" in r.stdout
        assert len(os.listdir(out / "vis" / name)) == 1
    assert (out / "model_final.pth").is_file()
