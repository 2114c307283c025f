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


def _run(args, timeout=600, check=True, script=TRAIN_NET):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("RASS_DEBUG", None)
    r = subprocess.run([sys.executable, script, "--config-file", CFG, *args], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"train_net failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def assert_user_error(r: subprocess.CompletedProcess) -> str:
    """What the README promises for a problem with the input: exit status 2, no traceback, and stderr
    ends with exactly one ``error:`` line (plus an optional ``  hint:`` line). Returns the error line."""
    assert r.returncode == 2, (r.returncode, r.stderr[-5000:])
    assert "Traceback" not in r.stderr, r.stderr[-5000:]
    lines = r.stderr.rstrip("\n").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-5000:]
    tail = lines[errors[0] + 1:]
    assert tail == [] or (len(tail) == 1 and tail[0].startswith("  hint: ")), r.stderr[-5000:]
    return lines[errors[0]]


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
    line = assert_user_error(r)
    assert line.startswith("error: MODEL.WEIGHTS: ") and str(missing) in line, line


def test_unknown_config_key_is_named(tmp_path):
    r = _run(["MODEL.NOT_A_REAL_KEY", "3", "OUTPUT_DIR", str(tmp_path)], check=False)
    assert assert_user_error(r) == ("error: command-line override: unknown config key MODEL.NOT_A_REAL_KEY "
                                    "(not a detectron2/RASS config key)")


@pytest.mark.parametrize("bug", ["ValueError", "OSError"])
def test_an_internal_error_is_a_bug_with_its_traceback(tmp_path, bug):
    """An error that no code raised as a user error exits with status 1 and its traceback, even a
    ValueError raised on purpose by a project check, or an OSError: it is not an input mistake."""
    script = tmp_path / "train_net_with_a_bug.py"
    script.write_text(
        "import runpy, sys\n"
        "from rass.engine import Trainer\n"
        "from rass.utils.io import atomic_open\n"
        "BUG = sys.argv[-1]\n"
        "def broken(cfg):\n"
        "    if BUG == 'ValueError':\n"
        "        atomic_open('x', mode='r').__enter__()  # a plain ValueError of a project check\n"
        "    open('/nonexistent/rass/state.bin')  # an OSError nobody turned into a message\n"
        "Trainer.build_model = staticmethod(broken)\n"
        f"sys.argv = [{TRAIN_NET!r}] + sys.argv[1:-1]\n"
        f"runpy.run_path({TRAIN_NET!r}, run_name='__main__')\n")
    r = _run(["--eval-only", "OUTPUT_DIR", str(tmp_path / "out"), bug], check=False, script=str(script))
    assert r.returncode == 1, r.stderr[-3000:]
    assert "Traceback (most recent call last)" in r.stderr
    assert not [line for line in r.stderr.splitlines() if line.startswith("error:")]
    last = r.stderr.rstrip().splitlines()[-1]
    if bug == "ValueError":
        assert last == "ValueError: atomic_open: mode must be 'wb' or 'w', got 'r'"
    else:
        assert last == "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/rass/state.bin'"
