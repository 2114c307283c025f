"""GleSAM training through the project's Trainer (tiny models, generated pairs, CPU): stage 1 trains only
the CRE UNet's LoRA, stage 2 only SAM's mask decoder without its IoU head, the losses go down, the
full-size trainable sets match the published manifests, and a checkpoint resumes at its iteration."""
from __future__ import annotations

import math
import os

import pytest
import torch
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers everything)
from rass.checkpoint.sam_keys import hf_to_original_name
from rass.config import setup_cfg
from rass.modeling.meta_arch.glesam_training import stage1_paper_loss, stage2_loss
from rass.solver import build_optimizer
from tests.conftest import REPO, load_manifest

STAGE1 = os.path.join(REPO, "configs", "lqseg", "tiny_glesam_stage1.yaml")
STAGE2 = os.path.join(REPO, "configs", "lqseg", "tiny_glesam_stage2.yaml")


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


def _trainer(config, out, *opts):
    from rass.engine import Trainer

    cfg = setup_cfg(config, ["OUTPUT_DIR", str(out), *opts])
    return Trainer(cfg)


def _state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def _fixed_stage1_pair(model, trainer):
    """(z_L, z_H) of the first training batch, degraded once with a fixed seed: one fixed stage-1 problem."""
    batch = next(iter(trainer.build_train_loader(trainer.cfg)))
    clean = [x["image"].to(model.device, torch.float32) for x in batch]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        low = model.degradation(clean)
        z, _ = model.encode(clean + low)
    return z[len(clean):], z[:len(clean)]


def _history(trainer, key):
    return [v for v, _ in trainer.storage.history(key).values()]


def test_stage1_trains_only_the_lora_and_the_reconstruction_loss_falls(train_env, tmp_path):
    trainer = _trainer(STAGE1, tmp_path, "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer.resume_or_load(resume=False)
    model = trainer.model
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert lora == set(model.trainable_names) and lora
    assert all(".lora_A." in n or ".lora_B." in n for n in lora) and all(n.startswith("enhancer.unet.") for n in lora)
    before = _state(trainer)
    z_low, z_high = _fixed_stage1_pair(model, trainer)
    with torch.no_grad():
        loss_before = stage1_paper_loss(model.enhancer, z_low, z_high)["loss_mse"].item()
    trainer.train()
    changed = _changed(before, _state(trainer))
    assert changed == lora  # every LoRA tensor moved (B starts at 0), nothing else (SAM, base UNet, text embedding)
    losses = _history(trainer, "total_loss")  # = loss_mse (detectron2 logs single terms only as the total)
    assert len(losses) == 5 and all(math.isfinite(v) and v > 0 for v in losses), losses
    # The tiny SAM now sees its images, so each iteration's loss depends on that iteration's random degradation
    # (noisy from step to step); the reconstruction loss on one fixed degraded batch must fall.
    with torch.no_grad():
        loss_after = stage1_paper_loss(model.enhancer, z_low, z_high)["loss_mse"].item()
    assert loss_after < loss_before, (loss_before, loss_after)
    assert losses[0] != losses[1]  # z_L differs with the degradation: the SAM image path is not a constant


def test_stage2_trains_the_decoder_but_not_its_iou_head_on_batches_of_two(train_env, tmp_path):
    trainer = _trainer(STAGE2, tmp_path, "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer.resume_or_load(resume=False)
    model = trainer.model
    assert trainer.cfg.SOLVER.IMS_PER_BATCH == 2 and isinstance(trainer.optimizer, torch.optim.Adam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_names)
    assert all(n.startswith("sam.mask_decoder.") and "iou" not in n for n in trainable)
    before = _state(trainer)
    trainer.train()
    changed = _changed(before, _state(trainer))
    assert changed and changed <= trainable
    assert len(changed) > 0.9 * len(trainable)
    assert not any("iou" in k for k in changed)  # the IoU token and head stay as loaded
    total, focal = _history(trainer, "total_loss"), _history(trainer, "loss_focal")
    assert len(total) == 8
    assert sum(total[-3:]) < sum(total[:3]), total
    assert focal[-1] < 0.8 * focal[0], focal


def test_stage2_loss_is_dice_plus_focal_against_the_soft_mask():
    # one image, logits already in the image frame: a mask that fits perfectly gives Dice ~0
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = True
    logits = torch.where(mask, 20.0, -20.0)[None]
    out = stage2_loss([logits], [mask])
    assert out["loss_dice"].item() == pytest.approx(0.0, abs=1e-6) and out["loss_focal"].item() < 1e-8
    # all-zero logits: sigma = 0.5 everywhere -> Dice = 1 - 2*0.5*16 / (32 + 16); focal = 0.25 * 0.5^2 * ln 2
    zero = torch.zeros(1, 8, 8)
    out = stage2_loss([zero, zero], [mask, mask], dice_weight=2.0)
    assert out["loss_dice"].item() == pytest.approx(2.0 * (1 - 16 / 48), rel=1e-5)
    assert out["loss_focal"].item() == pytest.approx(0.25 * 0.25 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)
    # a GT mask at another size is resized bilinearly to the logits' frame (soft target)
    big = torch.zeros(16, 16, dtype=torch.bool)
    big[4:12, 4:12] = True
    assert stage2_loss([logits], [big])["loss_dice"].item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="one per image"):
        stage2_loss([logits], [mask, mask])


def test_checkpoint_resumes_at_the_saved_iteration(train_env, tmp_path):
    from detectron2.engine import HookBase

    class Kill(HookBase):
        def after_step(self):
            if self.trainer.iter == 2:
                raise RuntimeError("killed")

    trainer = _trainer(STAGE2, tmp_path, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2")
    trainer.resume_or_load(resume=False)
    trainer.register_hooks([Kill()])
    with pytest.raises(RuntimeError, match="killed"):
        trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    saved = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert saved["iteration"] == 1

    resumed = _trainer(STAGE2, tmp_path, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    state = resumed.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved["model"].items())
    moments = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    want = [s["exp_avg"] for s in saved["trainer"]["_trainer"]["optimizer"]["state"].values()]
    assert len(moments) == len(want) > 0 and all(torch.equal(a, b) for a, b in zip(moments, want))
    resumed.train()
    assert [it for _, it in resumed.storage.history("total_loss").values()] == [2, 3]
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.parametrize("stage", ["decoder", "denoise"])
def test_full_size_trainable_sets_match_the_manifests(stage):
    cfg = setup_cfg(os.path.join(REPO, "configs", "lqseg", f"glesam_stage{1 if stage == 'denoise' else 2}_vitl_sd21.yaml"),
                    ["MODEL.DEVICE", "meta", "MODEL.SAM.CHECKPOINT", "", "MODEL.GLESAM.LORA_PATH", "",
                     "MODEL.GLESAM.SD_PATH", ""])
    assert cfg.MODEL.GLESAM.STAGE == stage
    model = build_model(cfg)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == set(model.trainable_names)
    if stage == "decoder":
        sam = load_manifest("sam_vit_manifest.json")["sam_vit_l"]
        want = {k for k in sam["keys"] if k.startswith("mask_decoder.") and "iou" not in k}
        assert {hf_to_original_name(n[len("sam."):]) for n in trainable} == want
        assert len(want) == sam["glesam_trainable_keys"] == 113
        assert sum(trainable.values()) == sam["glesam_trainable_numel"] == 3_925_472
    else:  # the released config trains the release recipe: generator LoRA + guidance (fake LoRA + head)
        assert cfg.MODEL.GLESAM.STAGE1_LOSS == "release"
        part = {k: sum(v for n, v in trainable.items() if n.startswith(k)) for k in
                ("enhancer.unet.", "guidance.fake_unet.", "guidance.head.")}
        # rank-8 LoRA of the SD-2.1 CRE UNet (the released file) twice, and the release's cls_pred_branch
        assert part == {"enhancer.unet.": 8_518_144, "guidance.fake_unet.": 8_518_144, "guidance.head.": 52_437_761}
        assert sum(part.values()) == sum(trainable.values())


def test_release_recipe_updates_the_generator_every_nth_iteration(train_env, tmp_path):
    from detectron2.engine import HookBase

    snaps = []

    class Snapshot(HookBase):
        def after_step(self):
            snaps.append(_state(self.trainer))

    trainer = _trainer(STAGE1, tmp_path, "MODEL.GLESAM.STAGE1_LOSS", "release", "MODEL.GLESAM.GEN_UPDATE_RATIO", "2",
                       "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100")
    trainer.resume_or_load(resume=False)
    model = trainer.model
    generator = {n for n in model.trainable_names if n.startswith("enhancer.unet.")}
    guidance = {n for n in model.trainable_names if n.startswith("guidance.")}
    assert generator and any(n.startswith("guidance.head.") for n in guidance)
    assert any(n.startswith("guidance.fake_unet.") for n in guidance)
    before = _state(trainer)
    trainer.register_hooks([Snapshot()])
    trainer.train()
    steps = [_changed(a, b) for a, b in zip([before] + snaps[:-1], snaps)]
    # iterations 0 and 2: generator + guidance; iteration 1: guidance only (the generator's gradients are None)
    assert steps[0] <= generator | guidance and steps[0] & generator and steps[0] & guidance
    assert steps[1] & guidance and not steps[1] & generator
    assert steps[2] & generator
    assert [it for _, it in trainer.storage.history("loss_dm").values()] == [0, 2]
    assert [it for _, it in trainer.storage.history("loss_fake_mean").values()] == [0, 1, 2]


def test_adam_optimizer_and_config_errors():
    cfg = setup_cfg(STAGE2, ["SOLVER.BASE_LR", "0.01", "SOLVER.WEIGHT_DECAY", "0.1"])
    lin = torch.nn.Linear(3, 2)
    opt = build_optimizer(cfg, lin)
    assert type(opt) is torch.optim.Adam  # stage 2 has no clipping
    ref = torch.nn.Linear(3, 2)
    ref.load_state_dict(lin.state_dict())
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.1)
    x = torch.randn(4, 3)
    for m, o in ((lin, opt), (ref, ref_opt)):
        m(x).square().sum().backward()
        o.step()
    torch.testing.assert_close(lin.weight, ref.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ADAMW, ADAM or SGD"):
        build_optimizer(setup_cfg(STAGE2, ["SOLVER.OPTIMIZER", "LION"]), lin)
    with pytest.raises(ValueError, match="INPUT.DEGRADATION.ENABLED"):
        build_model(setup_cfg(STAGE1, ["INPUT.DEGRADATION.ENABLED", "False"]))
    with pytest.raises(ValueError, match="needs MODEL.GLESAM.ENHANCE True"):
        build_model(setup_cfg(STAGE1, ["MODEL.GLESAM.ENHANCE", "False"]))
    with pytest.raises(ValueError, match="MODEL.GLESAM.STAGE must be one of"):
        build_model(setup_cfg(STAGE1, ["MODEL.GLESAM.STAGE", "both"]))


def test_export_to_the_released_formats_and_import_back_gives_identical_outputs(tmp_path):
    import importlib.util

    from rass.checkpoint import RASSCheckpointer

    spec = importlib.util.spec_from_file_location("export_glesam", os.path.join(REPO, "tools", "export_glesam.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tiny = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
    torch.manual_seed(3)
    model = build_model(setup_cfg(tiny)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "trained" model: non-zero LoRA B and a changed decoder
        for n, p in model.named_parameters():
            if ".lora_B." in n or n.startswith("sam.mask_decoder.output_upscaling"):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    RASSCheckpointer(model, str(tmp_path)).save("trained")
    out = tmp_path / "export"
    assert tool.main(["--config-file", tiny, "--weights", str(tmp_path / "trained.pth"), "--out", str(out)]) == 0
    lora, sam = out / "pytorch_lora_weights.safetensors", out / "sam.pth"
    assert lora.is_file() and sam.is_file()
    # import: the same config reading the two files (the base UNet and text embedding are the seeded random ones)
    torch.manual_seed(3)
    back = build_model(setup_cfg(tiny, ["MODEL.SAM.CHECKPOINT", str(sam), "MODEL.GLESAM.LORA_PATH", str(lora)])).eval()
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=g)
    inp = [{"image": image, "point_coords": torch.tensor([[[40.0, 50.0], [60.0, 70.0], [64.0, 64.0]]]),
            "point_labels": torch.ones(1, 3, dtype=torch.long)}]
    a, b = model(inp)[0], back(inp)[0]
    assert torch.equal(a["mask_logits"], b["mask_logits"]) and torch.equal(a["iou_pred"], b["iou_pred"])
    torch.manual_seed(3)
    fresh = build_model(setup_cfg(tiny)).eval()
    assert not torch.equal(fresh(inp)[0]["mask_logits"], a["mask_logits"])  # the exported changes matter
    assert tool.main(["--config-file", tiny, "--weights", str(tmp_path / "nope.pth"), "--out", str(out)]) == 2


def test_release_recipe_trains_in_two_processes(train_env, tmp_path):
    # generator-free (guidance-only) iterations leave the generator's LoRA without a gradient: DDP must
    # be told (PromptableSAM.has_unused_parameters), else the second iteration fails
    import subprocess
    import sys

    r = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
                        os.path.join(REPO, "configs", "lqseg", "tiny_glesam_stage1.yaml"), "--num-gpus", "2",
                        "MODEL.GLESAM.STAGE1_LOSS", "release", "SOLVER.MAX_ITER", "4", "TEST.EVAL_PERIOD", "0",
                        "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
