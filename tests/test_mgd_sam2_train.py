"""MGD-SAM2 training through the project's Trainer (tiny "test"-size model, generated SOD pairs, CPU): the trunk is
frozen except the adapters, the release's two parameter groups come from SOLVER.PARAM_RULES, the loss on a fixed
batch falls, and a checkpoint resumes at its iteration with the same weights."""
from __future__ import annotations

import os
import re

import pytest
import torch

import rass  # noqa: F401  (registers everything)
from rass.config import setup_cfg
from tests.conftest import REPO, load_script

TINY = os.path.join(REPO, "configs", "dis5k", "tiny_mgd_sam2.yaml")


@pytest.fixture(scope="module")
def sod_root(tmp_path_factory):
    """Two training images: with IMS_PER_BATCH 2 the fixed-batch loss is on both."""
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    root = str(tmp_path_factory.mktemp("synthetic_sod"))
    tool.make_synthetic_sod(root, seed=3, num_train=2, num_test=2, min_size=40, max_size=72)
    return root


@pytest.fixture
def sod_env(sod_root, monkeypatch):
    monkeypatch.setenv("RASS_SOD_SYNTHETIC_ROOT", sod_root)
    return sod_root


def _trainer(out, *opts):
    from rass.engine import Trainer

    cfg = setup_cfg(TINY, ["OUTPUT_DIR", str(out), *opts])
    return Trainer(cfg)


TRAIN = ("SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.BASE_LR", "0.002", "DATASETS.TEST", "()")


def _fixed_loss(model, batch) -> float:
    """Total loss on a fixed batch in training mode (BN on batch statistics), leaving every buffer as it was."""
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    with torch.no_grad():
        loss = float(sum(model(batch).values()))
    for k, v in model.named_buffers():
        v.copy_(buffers[k])
    return loss


def test_trainable_parts_and_parameter_groups(sod_env, tmp_path):
    trainer = _trainer(tmp_path)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    trunk = {n for n, _ in model.named_parameters() if n.startswith("image_encoder.trunk.")}
    assert {n for n in trunk if n in trainable} == {n for n in trunk if ".mpadapter." in n}
    assert any(n.startswith("image_encoder.neck.") for n in trainable)
    assert any(n.startswith("mask_decoder.transformer.") for n in trainable)
    base = trainer.cfg.SOLVER.BASE_LR
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert set(groups) == trainable
    for name, (lr, wd) in groups.items():
        fast = (".mpadapter." in name or "mask_tokens" in name or ".new_" in name
                or name.startswith(("detail_enhance.", "no_mask_embed.")))
        # the release: group 1 (lr, wd 0) = adapters, new_*, mask tokens, DRM, no_mask_embed; group 0 (0.1 lr, 1e-5)
        assert (lr, wd) == ((base, 0.0) if fast else (pytest.approx(0.1 * base), 1e-5)), name
        assert fast or re.match(r"(image_encoder\.neck|mask_decoder)\.", name), name
    assert type(trainer.optimizer).__name__ == "AdamW"


def test_short_run_lowers_the_loss_and_resumes(sod_env, tmp_path):
    trainer = _trainer(tmp_path, *TRAIN)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    assert batch[0]["image"].shape == (3, 128, 128) and batch[0]["gt_mask"].shape == (128, 128)
    trunk = {k: v.clone() for k, v in model.image_encoder.trunk.state_dict().items() if "mpadapter" not in k}
    before = _fixed_loss(model, batch)
    trainer.train()
    after = _fixed_loss(model, batch)
    assert after < before, (before, after)
    assert all(torch.equal(v, model.image_encoder.trunk.state_dict()[k]) for k, v in trunk.items())  # frozen
    assert {"model_0000001.pth", "model_final.pth"} <= set(os.listdir(tmp_path))

    resumed = _trainer(tmp_path, *TRAIN)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    own = resumed.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    assert resumed.optimizer.state_dict()["state"], "optimizer moments restored"
    lrs = {g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups}
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in resumed.optimizer.param_groups} == lrs  # both groups


def test_param_rules_are_checked():
    from rass.solver.build import build_param_groups
    from rass.utils.errors import UserValueError

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    cfg = setup_cfg(TINY, ["SOLVER.PARAM_RULES.PATTERNS", "['^0\\\\.']", "SOLVER.PARAM_RULES.LR_MULTIPLIERS", "[0.5]",
                           "SOLVER.PARAM_RULES.WEIGHT_DECAYS", "[0.25]", "SOLVER.WEIGHT_DECAY_NORM", "0.125"])
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in build_param_groups(cfg, model)}
    base = cfg.SOLVER.BASE_LR
    assert groups == {"0.weight": (0.5 * base, 0.25), "0.bias": (0.5 * base, 0.25), "1.weight": (base, 0.125),
                      "1.bias": (base, 0.125)}  # unmatched names keep the default rules
    cfg.defrost()
    cfg.SOLVER.PARAM_RULES.WEIGHT_DECAYS = []
    with pytest.raises(UserValueError, match=r"SOLVER.PARAM_RULES: PATTERNS \(1\), LR_MULTIPLIERS \(1\) and "
                                             r"WEIGHT_DECAYS \(0\) must have the same length"):
        build_param_groups(cfg, model)
    cfg.SOLVER.PARAM_RULES.WEIGHT_DECAYS = [0.0]
    cfg.SOLVER.PARAM_RULES.PATTERNS = ["("]
    with pytest.raises(UserValueError, match=r"SOLVER.PARAM_RULES.PATTERNS: '\(' is not a valid regex"):
        build_param_groups(cfg, model)
