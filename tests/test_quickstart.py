"""The quickstart driver end to end, shrunk (few images, 3 RASS and 2 promptable-SAM iterations)."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO


def _env(tmp_path):
    return dict(os.environ, PYTHONWARNINGS="ignore", RASS_SYNTHETIC_ROOT=str(tmp_path / "synth"),
                RASS_SYNTHETIC_DEGRADED_ROOT=str(tmp_path / "synth_deg"),
                RASS_LQSEG_SYNTHETIC_ROOT=str(tmp_path / "lqseg"))


def test_quickstart_generates_data_trains_evaluates_and_writes_outputs(tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "qs"
    cmd = [sys.executable, os.path.join(REPO, "tools/quickstart.py"), "--output", str(out), "--num-train", "6",
           "--num-val", "2", "--num-vis", "1", "--promptable-iters", "2", "SOLVER.MAX_ITER", "3",
           "INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0"]
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
    # the tiny promptable SAM: its one-object set, its checkpoint, and its results printed as fractions
    assert len(os.listdir(tmp_path / "lqseg" / "train" / "Synthetic" / "images")) == 6
    assert len(os.listdir(tmp_path / "lqseg" / "test" / "Synthetic" / "LQ-3" / "images")) == 2
    assert (out / "promptable" / "model_final.pth").is_file()
    pres = json.load(open(out / "promptable" / "eval_results.json"))
    assert set(pres) == {f"lqseg_synthetic_test_{s}" for s in ("clear", "lq1", "lq2", "lq3")}
    for name, task in pres.items():
        m = task["promptable"]
        assert 0 <= m["IoU"] <= 1 and m["num_images"] == 2
        assert f"{name}: IoU {m['IoU']:.3f}" in r.stdout
    assert "promptable model" in r.stdout.splitlines()[-1]  # its time is reported


def test_quickstart_skip_promptable_and_clean_baseline(tmp_path):
    env = _env(tmp_path)
    out = tmp_path / "qs"
    cmd = [sys.executable, os.path.join(REPO, "tools/quickstart.py"), "--output", str(out), "--num-train", "2",
           "--num-val", "1", "--num-vis", "0", "--skip-promptable", "--clean-baseline", "SOLVER.MAX_ITER", "1",
           "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TEST", "64", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "64"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert (out / "model_final.pth").is_file()
    assert not (out / "promptable").exists() and not (tmp_path / "lqseg").exists()
    # the clean-trained baseline: trained without degradations, its clean -> degraded drop printed next to RASS's
    assert "ENABLED: false" in (out / "clean_baseline" / "config.yaml").read_text().split("DEGRADATION:")[1][:200]
    assert "ENABLED: true" in (out / "config.yaml").read_text().split("DEGRADATION:")[1][:200]
    res = {k: json.load(open(d / "eval_results.json")) for k, d in (("rass", out), ("base", out / "clean_baseline"))}
    for key, words in (("rass", "tiny RASS"), ("base", "the same model trained on clean images")):
        c, d = (res[key][n]["sem_seg"]["mIoU"] for n in ("synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded"))
        assert f"{words} {c:.2f} -> {d:.2f} mIoU (drop {c - d:+.2f}" in r.stdout
    assert "promptable" not in r.stdout.splitlines()[-1]
