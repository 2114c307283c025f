"""Checkpoints a user may bring: weights of another model, broken files, a broken last checkpoint at
`--resume`, temporary files of killed saves, and the learning rate after `--resume` (tiny FPN, CPU)."""
import logging
import os
import pickle
import re

import pytest
import torch
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers the models)
from rass.checkpoint import CheckpointFileError, CheckpointMismatchError, RASSCheckpointer
from rass.checkpoint.fit import trainable_names
from rass.config import setup_cfg
from tests.conftest import REPO
from tests.test_train_net import CFG, FAST, _run, assert_user_error

RASS_CFG = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def text(self, level=logging.DEBUG):
        return "\n".join(r.getMessage() for r in self.records if r.levelno >= level)


@pytest.fixture
def rass_log():
    """Records of the `rass` loggers (which may not propagate once train_net's logger setup ran)."""
    handler, log = _Records(), logging.getLogger("rass")
    old = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old)


def _fpn(*opts):
    cfg = setup_cfg(CFG, ["MODEL.DEVICE", "cpu", *opts])
    return cfg, build_model(cfg)


@pytest.fixture(scope="module")
def fpn_file(tmp_path_factory):
    """A tiny_semantic_fpn checkpoint (150 classes) and the state it holds."""
    cfg, model = _fpn()
    folder = str(tmp_path_factory.mktemp("fpn"))
    RASSCheckpointer(model, folder).save("model_final")
    return os.path.join(folder, "model_final.pth"), {k: v.clone() for k, v in model.state_dict().items()}


def test_other_models_weights_fail_with_the_counts(fpn_file):
    """The issue's reproduction: tiny_semantic_fpn's checkpoint given to tiny_rass."""
    path, fpn_state = fpn_file
    cfg = setup_cfg(RASS_CFG, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    own = model.state_dict()
    trainable = trainable_names(model)
    unexpected = len(set(fpn_state) - set(own))
    assert not set(fpn_state) & set(own) and trainable and unexpected  # nothing of it fits
    for partial in (False, True):  # a file of which nothing fits is refused even with the partial key
        cfg_p = setup_cfg(RASS_CFG, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS_ALLOW_PARTIAL", str(partial)])
        with pytest.raises(CheckpointMismatchError) as e:
            RASSCheckpointer(cfg_p, model).load(path)
        msg = str(e.value)
        assert path in msg and "no entry of it fits the model" in msg
        assert (f"loaded 0, missing trainable {len(trainable)}, missing frozen {len(own) - len(trainable)}, "
                f"unexpected {unexpected}, shape-mismatched 0") in msg
        assert "missing trainable (" in msg and "sem_seg_head" in msg and "unexpected (" in msg
        assert len(msg.splitlines()) <= 6


def test_other_head_fails_then_loads_with_the_partial_key(fpn_file, rass_log):
    """Fine-tuning from a checkpoint with another NUM_CLASSES: refused by default, loaded with
    MODEL.WEIGHTS_ALLOW_PARTIAL (the head's classifier keeps its initial values)."""
    path, fpn_state = fpn_file
    cfg, model = _fpn("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = sorted(k for k, v in model.state_dict().items() if v.shape != fpn_state[k].shape)
    assert len(bad) == 2  # the classifier's weight and bias
    with pytest.raises(CheckpointMismatchError) as e:
        RASSCheckpointer(cfg, model).load(path)
    msg = str(e.value)
    assert f"loaded {len(before) - 2}, missing trainable 0, missing frozen 0, unexpected 0, shape-mismatched 2" in msg
    assert f"{bad[0]}: checkpoint {list(fpn_state[bad[0]].shape)} vs model {list(before[bad[0]].shape)}" in msg
    assert "MODEL.WEIGHTS_ALLOW_PARTIAL True" in msg  # the hint names the key

    cfg, model = _fpn("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "10", "MODEL.WEIGHTS_ALLOW_PARTIAL", "True")
    model.load_state_dict(before)
    ck = RASSCheckpointer(cfg, model)
    ck.load(path)
    assert ck.last_load_report.shape_mismatch and len(ck.last_load_report.loaded) == len(before) - 2
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k] if k in bad else fpn_state[k], rtol=0, atol=0, msg=k)
    assert "loaded PARTIALLY" in rass_log.text(logging.WARNING) and "shape-mismatched 2" in rass_log.text()


def test_missing_frozen_parts_are_one_line(fpn_file, rass_log):
    path, fpn_state = fpn_file
    cfg, model = _fpn("MODEL.BACKBONE.FREEZE_AT", "2")  # stem + res2 frozen
    frozen = [k for k in model.state_dict() if k not in trainable_names(model)]
    assert any(k.startswith("backbone.bottom_up.stem.") for k in frozen)
    stripped = os.path.join(os.path.dirname(path), "without_frozen.pth")
    torch.save({"model": {k: v for k, v in fpn_state.items() if k not in frozen}}, stripped)
    RASSCheckpointer(cfg, model).load(stripped)
    lines = [r.getMessage() for r in rass_log.records if r.getMessage().startswith(f"Loaded {stripped}")]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert f"missing trainable 0, missing frozen {len(frozen)}" in lines[0] and "backbone.bottom_up" in lines[0]
    assert not rass_log.text(logging.WARNING)


def test_imagenet_style_backbone_file_initialises_training_only(tmp_path, fpn_file):
    """A detectron2 ImageNet `.pkl` (matching heuristics) fills only the backbone: fine to start
    training from (the Trainer's checkpointer), refused for evaluation."""
    _, fpn_state = fpn_file
    prefix = "backbone.bottom_up."
    blobs = {k[len(prefix):]: v.numpy() for k, v in fpn_state.items() if k.startswith(prefix)}
    path = str(tmp_path / "R-tiny.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": blobs, "__author__": "torchvision", "matching_heuristics": True}, f)
    cfg, model = _fpn()
    RASSCheckpointer(cfg, model, allow_backbone_init=True).load(path)
    got = model.state_dict()
    for k in blobs:
        torch.testing.assert_close(got[prefix + k], fpn_state[prefix + k], rtol=0, atol=0, msg=k)
    with pytest.raises(CheckpointMismatchError, match=r"missing trainable \d+"):
        RASSCheckpointer(cfg, model).load(path)


def test_model_zoo_pkl_loads_completely(tmp_path, fpn_file, rass_log):
    """detectron2 / Mask2Former model-zoo `.pkl` (numpy arrays, `__author__`) still loads."""
    _, fpn_state = fpn_file
    path = str(tmp_path / "model_final_zoo.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in fpn_state.items()}, "__author__": "Detectron2 Model Zoo"}, f)
    cfg, model = _fpn()
    RASSCheckpointer(cfg, model).load(path)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, fpn_state[k], rtol=0, atol=0, msg=k)
    assert f"Loaded {path}: loaded {len(fpn_state)}, missing trainable 0, missing frozen 0" in rass_log.text()


@pytest.mark.parametrize("name,content,expect", [
    ("notes.pth", b"hello\nthis is not a checkpoint\n", "a text file"),
    ("empty.pth", b"", "an empty file"),
    ("notes.pkl", b"hello\n", "a text file"),
    ("noise.pth", bytes(range(3, 250)) * 4, "not a known checkpoint format"),
])
def test_unreadable_files_are_named(tmp_path, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointFileError) as e:
        RASSCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
    msg = str(e.value)
    assert msg.startswith(f"MODEL.WEIGHTS: cannot read {path}: it is {expect}")
    assert "expected a torch checkpoint (.pth" in msg and "detectron2 model-zoo .pkl" in msg


def test_truncated_and_non_dict_files_are_named(tmp_path):
    model = torch.nn.Linear(2, 2)
    RASSCheckpointer(model, str(tmp_path)).save("good")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match=re.escape(f"cannot read {tmp_path / 'cut.pth'}: it is a truncated "
                                                            "torch zip archive")):
        RASSCheckpointer(model).load(str(tmp_path / "cut.pth"))
    torch.save(torch.ones(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointFileError, match=f"{tmp_path / 'tensor.pth'} holds Tensor, expected a state dict"):
        RASSCheckpointer(model).load(str(tmp_path / "tensor.pth"))


def test_text_file_as_weights_through_train_net(synthetic_env, tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not weights\n")
    r = _run(["--eval-only", *FAST, "MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path / "out")], check=False)
    assert assert_user_error(r).startswith(f"error: MODEL.WEIGHTS: cannot read {bad}: it is a text file")
    assert "IndexError" not in r.stderr and "pop from empty list" not in r.stderr


class _Counter:
    """A checkpointable with state (stands in for the trainer)."""

    def __init__(self):
        self.iteration = -1

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def _saved_run(folder):
    """Checkpoints model_0000002 and model_0000005 (tagged last) of a Linear; returns the weights at 2."""
    model, counter = torch.nn.Linear(3, 2), _Counter()
    ck = RASSCheckpointer(model, str(folder), trainer=counter)
    counter.iteration = 2
    ck.save("model_0000002")
    at2 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1)
    counter.iteration = 5
    ck.save("model_0000005")
    return at2


def test_resume_falls_back_past_a_truncated_last_checkpoint(tmp_path, rass_log):
    at2 = _saved_run(tmp_path)
    last = tmp_path / "model_0000005.pth"
    last.write_bytes(last.read_bytes()[:300])  # killed mid-copy / disk full
    model, counter = torch.nn.Linear(3, 2), _Counter()
    RASSCheckpointer(model, str(tmp_path), trainer=counter).resume_or_load("", resume=True)
    assert counter.iteration == 2 and torch.equal(model.weight, at2)
    warnings = rass_log.text(logging.WARNING)
    assert f"Cannot resume from {last}: it is a truncated torch zip archive" in warnings
    assert f"Resuming from {tmp_path / 'model_0000002.pth'} instead of the broken {last}" in warnings

    (tmp_path / "model_0000002.pth").write_text("garbage")
    with pytest.raises(CheckpointFileError, match=f"cannot resume from {tmp_path}: no checkpoint there can be read"):
        RASSCheckpointer(model, str(tmp_path), trainer=counter).resume_or_load("", resume=True)


def test_stray_temp_files_are_removed_at_save_and_resume(tmp_path, rass_log):
    _saved_run(tmp_path)
    strays = [tmp_path / ".model_0000008.pth.k2j4_x9a.tmp", tmp_path / ".last_checkpoint.abcd1234.tmp"]
    other = tmp_path / ".notes.txt.abcd1234.tmp"  # not a checkpoint's: left alone
    for p in [*strays, other]:
        p.write_bytes(b"partial")
    model, counter = torch.nn.Linear(3, 2), _Counter()
    ck = RASSCheckpointer(model, str(tmp_path), trainer=counter)
    ck.resume_or_load("", resume=True)
    assert counter.iteration == 5
    assert not any(p.exists() for p in strays) and other.exists()
    for p in strays:
        assert f"Removed {p}, left by an interrupted checkpoint save" in rass_log.text(logging.WARNING)
    strays[0].write_bytes(b"partial")
    ck.save("model_0000006")
    assert not strays[0].exists() and (tmp_path / "last_checkpoint").read_text() == "model_0000006.pth"


def _trainer(out, base_lr, max_iter):
    from rass.engine import Trainer

    cfg = setup_cfg(CFG, FAST + ["OUTPUT_DIR", str(out), "SOLVER.BASE_LR", str(base_lr), "SOLVER.MAX_ITER",
                                 str(max_iter), "SOLVER.BACKBONE_MULTIPLIER", "0.1", "SOLVER.WARMUP_ITERS", "0",
                                 "SOLVER.WEIGHT_DECAY", str(base_lr)])
    return cfg, Trainer(cfg)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_resume_applies_the_configs_learning_rate(synthetic_env, tmp_path, rass_log):
    from rass.solver import build_lr_scheduler, build_optimizer

    _, first = _trainer(tmp_path, 0.5, 20)  # the "diverged" run
    for _ in range(5):
        first.scheduler.step()
    first.iter = 4
    first.checkpointer.save("model_0000004")
    ck_lrs = [g["lr"] for g in first.optimizer.param_groups]

    cfg, resumed = _trainer(tmp_path, 1e-4, 10)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 5
    # the config's schedule at iteration 5: a fresh optimizer/scheduler from the config stepped 5 times
    ref_opt = build_optimizer(cfg, build_model(cfg))
    ref_sched = build_lr_scheduler(cfg, ref_opt)
    for _ in range(5):
        ref_sched.step()
    got = [g["lr"] for g in resumed.optimizer.param_groups]
    want = [g["lr"] for g in ref_opt.param_groups]
    assert got == pytest.approx(want, rel=1e-12) and len(set(got)) == 2  # head and backbone (x0.1) groups
    assert max(got) < 1e-4 and min(ck_lrs) > 1e-2
    assert [g["weight_decay"] for g in resumed.optimizer.param_groups] == [g["weight_decay"] for g in ref_opt.param_groups]
    resumed.scheduler.step()  # the next iteration follows the config's schedule as well
    ref_sched.step()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
    assert ("resuming at iteration 5; SOLVER.BASE_LR from the config (0.0001) replaces the checkpoint's (0.5)"
            in rass_log.text(logging.INFO))
    assert "weight_decay" in rass_log.text(logging.INFO)
