"""Stable-SAM's RTS training through the project's Trainer (tiny SAM, generated pairs, CPU): only the plugins
train, the loss on a fixed batch falls, a checkpoint resumes at its iteration, and the exported plugin file
loads onto another SAM checkpoint of the same size."""
from __future__ import annotations

import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import rass  # noqa: F401  (registers everything)
from rass.config import setup_cfg
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "lqseg", "tiny_stable_sam.yaml")


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    """Two generated training pairs: with IMS_PER_BATCH 2 every batch is the same two images (a fixed batch)."""
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = str(tmp_path_factory.mktemp("synthetic_lqseg_train"))
    make_synthetic_lqseg(root, 0, 1, [], 64, 96, False, None, num_train=2)
    return root


@pytest.fixture
def train_env(train_root, monkeypatch):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", train_root)
    return train_root


def _trainer(out, *opts):
    from rass.engine import Trainer

    return Trainer(setup_cfg(TINY, ["OUTPUT_DIR", str(out), *opts]))


def _fixed_loss(model, batch) -> float:
    """The RTS loss of `batch` with the prompts and points of iteration 0 (the same problem every call)."""
    with torch.no_grad(), EventStorage(0):
        return float(sum(model.training_losses(batch).values()))


def test_rts_trains_only_the_plugins_and_the_loss_falls_on_a_fixed_batch(train_env, tmp_path):
    trainer = _trainer(tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.BASE_LR", "0.01")
    trainer.resume_or_load(resume=False)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_names) and all(n.startswith("plugins.") for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    loss_before = _fixed_loss(model, batch)
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("plugins.") for k in changed)  # SAM's weights unchanged
    assert {"plugins.dsp.offset_proj.weight", "plugins.drp.fc2.weight"} <= changed
    loss_after = _fixed_loss(model, batch)
    print("RTS fixed-batch loss before / after 8 iterations:", loss_before, loss_after)
    assert loss_after < 0.97 * loss_before, (loss_before, loss_after)
    hist = trainer.storage.history("loss_dice").values()
    assert len(hist) == 8 and all(v > 0 for v, _ in hist)

    from tools.export_stable_sam import main as export_main

    plugin_file = tmp_path / "plugins_tiny.pth"
    assert export_main(["--weights", str(tmp_path / "model_final.pth"), "--out", str(plugin_file)]) == 0
    assert 0 < plugin_file.stat().st_size < 400_000
    torch.manual_seed(7)  # another random tiny SAM, the exported plugins
    other = build_model(setup_cfg(TINY, ["MODEL.STABLE_SAM.STAGE", "none",
                                         "MODEL.STABLE_SAM.PLUGIN_WEIGHTS", str(plugin_file)])).eval()
    assert not torch.equal(other.sam.mask_decoder.iou_token.weight, model.sam.mask_decoder.iou_token.weight)
    for k, v in model.plugins.state_dict().items():
        assert torch.equal(other.plugins.state_dict()[k], v), k


def test_export_refuses_a_checkpoint_without_plugins(tmp_path, capsys):
    from tools.export_stable_sam import main as export_main

    torch.save({"model": {"sam.vision_encoder.patch_embed.projection.weight": torch.zeros(2, 3, 16, 16)}},
               str(tmp_path / "sam_only.pth"))
    assert export_main(["--weights", str(tmp_path / "sam_only.pth"), "--out", str(tmp_path / "p.pth")]) != 0
    err = capsys.readouterr().err
    assert "no Stable-SAM plugin weights" in err and "sam_only.pth" in err and "Traceback" not in err


def test_rts_checkpoint_resumes_at_the_saved_iteration(train_env, tmp_path):
    from detectron2.engine import HookBase

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                raise RuntimeError("killed")

    trainer = _trainer(tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "2")
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([Kill()])
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    saved = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == 1 and any(k.startswith("plugins.") for k in saved["model"])

    resumed = _trainer(tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["model"].items())
    moments = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert len(moments) == 14  # Adam state of the 14 plugin tensors only
    resumed.train()
    assert [it for _, it in resumed.storage.history("total_loss").values()] == [2, 3]
    assert (tmp_path / "model_final.pth").is_file()
