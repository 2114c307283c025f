"""A diverged run: checkpoints written after the loss left its range are marked, named in the error,
and skipped (or, when nothing else is left, refused) by --resume."""
import json
import logging
import math
import os
from types import SimpleNamespace

import pytest
import torch
from detectron2.utils.events import EventStorage

from rass.checkpoint import RASSCheckpointer
from rass.checkpoint.divergence import MARKS_FILE, LossRange, TrainingDivergedError, read_marks
from rass.config import setup_cfg
from rass.engine.trainer import LossRangeHook
from rass.utils.errors import UserError
from tests.test_checkpoint_errors import _Counter, rass_log  # noqa: F401  (fixture)
from tests.test_train_net import CFG, FAST, _run, assert_user_error


def test_loss_range_reference_and_factor():
    r = LossRange(factor=100.0, window=3)
    assert [r.observe(i, x) for i, x in enumerate([4.0, 6.0, 5.0, 7.0])] == [False] * 4
    assert r.reference == 5.0  # median of the first 3 in-range losses; the 4th does not move it
    assert not r.observe(4, 500.0) and r.left_at is None  # 100 x 5 is still in range
    assert r.observe(5, 500.001) and r.left_at == 5 and r.left_loss == 500.001 and r.left_reference == 5.0
    assert r.observe(6, float("nan")) and r.observe(7, float("inf")) and r.left_at == 5  # the first stays
    only_nan = LossRange(factor=0.0)
    assert not only_nan.observe(0, 1.0) and not only_nan.observe(1, 1e30) and only_nan.observe(2, float("nan"))


def _fake_run(folder, losses):
    """Drive a `LossRangeHook` as the trainer would: a checkpoint at every iteration, then its loss."""
    model, counter = torch.nn.Linear(3, 2), _Counter()
    ck = RASSCheckpointer(model, str(folder), trainer=counter)
    hook = LossRangeHook(100.0)
    trainer = SimpleNamespace(iter=0, checkpointer=ck)
    hook.trainer = trainer
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it, loss in enumerate(losses):
            trainer.iter = storage.iter = it
            if math.isnan(loss):
                return hook.diverged(FloatingPointError(f"Loss became infinite or NaN at iteration={it}!"))
            storage.put_scalar("total_loss", loss)
            with torch.no_grad():
                model.weight.fill_(it)
            counter.iteration = it
            ck.save(f"model_{it:07d}", iteration=it)
            hook.after_step()


def test_checkpoints_around_an_out_of_range_loss_are_marked_and_skipped(tmp_path, rass_log):  # noqa: F811
    # the loss of iteration 4 is out of range (900 > 100 x 5): the weights of checkpoints 3 (which gave it)
    # and 4 (updated from it) are marked; 5 is fine again; NaN at 7 marks 6
    err = _fake_run(tmp_path, [5.0, 4.0, 6.0, 5.0, 900.0, 5.0, 5.0, float("nan")])
    marks = read_marks(str(tmp_path))
    assert sorted(marks) == ["model_0000003.pth", "model_0000004.pth", "model_0000006.pth"]
    assert marks["model_0000003.pth"] == {"iteration": 3, "loss_iteration": 4, "loss": "900.0", "reference": "5.0"}
    assert marks["model_0000006.pth"]["loss"] == "nan" and marks["model_0000006.pth"]["loss_iteration"] == 7
    assert isinstance(err, TrainingDivergedError) and isinstance(err, UserError)
    assert err.message == (
        "training diverged: Loss became infinite or NaN at iteration=7!; the loss left its range at iteration 4 (900, "
        "over 100 x the median 5 of the first losses); the checkpoints written since are marked as diverged in "
        f"{tmp_path / MARKS_FILE} and --resume skips them: model_0000003.pth, model_0000004.pth, model_0000006.pth")
    assert err.hint.endswith("--resume then continues from model_0000005.pth")

    model, counter = torch.nn.Linear(3, 2), _Counter()
    ck = RASSCheckpointer(model, str(tmp_path), trainer=counter)
    ck.resume_or_load("", resume=True)
    assert counter.iteration == 5 and torch.all(model.weight == 5)
    warnings = rass_log.text(logging.WARNING)
    assert (f"Skipping {tmp_path / 'model_0000006.pth'} at --resume: it was written after the training loss left its "
            f"range (the loss of iteration 7 was nan; recorded in {tmp_path / MARKS_FILE})") in warnings
    assert (f"Resuming from {tmp_path / 'model_0000005.pth'}, the newest checkpoint not marked as diverged "
            "(skipped: model_0000006.pth)") in warnings
    ck.save("model_0000006", iteration=6)  # the resumed run writes iteration 6 again: no longer diverged
    assert sorted(read_marks(str(tmp_path))) == ["model_0000003.pth", "model_0000004.pth"]


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, synthetic_root):
    """The issue's run: SOLVER.BASE_LR 1e6 with a checkpoint at every iteration, until the loss is NaN."""
    from rass.engine import Trainer

    out = tmp_path_factory.mktemp("diverged")
    cfg = setup_cfg(CFG, FAST + ["OUTPUT_DIR", str(out), "SOLVER.BASE_LR", "1e6", "SOLVER.MAX_ITER", "20",
                                 "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "0", "SOLVER.WARMUP_ITERS", "0",
                                 "SEED", "0"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RASS_SYNTHETIC_ROOT", synthetic_root)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        with pytest.raises(TrainingDivergedError) as e:
            trainer.train()
    return out, e.value


def test_diverged_run_names_and_marks_its_checkpoints(diverged_run):
    out, err = diverged_run
    marks = read_marks(str(out))
    written = sorted(n for n in os.listdir(out) if n.startswith("model_"))
    assert written and sorted(marks) == written  # every checkpoint was written after iteration 0's update
    nan_at = int(err.message.split("iteration=")[1].split("!")[0])
    assert written[-1] == f"model_{nan_at - 1:07d}.pth"
    assert err.message.startswith(f"training diverged: Loss became infinite or NaN at iteration={nan_at}!")
    assert "the loss left its range at iteration 1 (" in err.message
    assert err.message.endswith("--resume skips them: " + ", ".join(written))
    assert "start without --resume (no checkpoint before the divergence)" in err.hint
    # the checkpoint before the NaN holds finite, exploded weights (what made resuming fail at once)
    state = torch.load(out / written[-1], map_location="cpu", weights_only=True)["model"]
    biggest = max(float(v.abs().max()) for v in state.values() if v.is_floating_point())
    assert math.isfinite(biggest) and biggest > 1e4
    with open(out / MARKS_FILE) as f:
        assert json.load(f)["model_0000000.pth"]["loss_iteration"] == 1


def test_resume_refuses_a_run_with_only_diverged_checkpoints(diverged_run, synthetic_env):
    out, _ = diverged_run
    r = _run(["--resume", *FAST, "SOLVER.BASE_LR", "1e-4", "SOLVER.MAX_ITER", "30", "TEST.EVAL_PERIOD", "0",
              "OUTPUT_DIR", str(out)], check=False)
    line = assert_user_error(r)
    newest = sorted(n for n in os.listdir(out) if n.startswith("model_"))[-1]
    assert line.startswith(f"error: refusing to resume from {out}: every checkpoint there was written after the "
                           "training loss left its range (the loss of iteration")
    assert "model_0000000.pth" in line and newest in line
    assert f"hint: start without --resume (e.g. with a lower SOLVER.BASE_LR), or delete {out / MARKS_FILE}" in r.stderr
