"""RobustSAM ("RobustSAM" meta-architecture): released names and sizes on `meta`, batched prompts = one at a
time, AMFG's Fourier step keeps the phase, strict loading of the released format, training through the
project's Trainer (the loss falls, resume)."""
from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers RobustSAM)
from rass.checkpoint.fit import CheckpointMismatchError
from rass.checkpoint.robustsam_loader import load_robustsam_checkpoint, save_robustsam_release
from rass.checkpoint.sam_keys import hf_to_original_keys, hf_to_original_name
from rass.config import setup_cfg
from rass.modeling.robustsam import FourierGuidance, TokenBlock
from rass.modeling.sam import SAM_VARIANTS
from rass.utils.errors import UserValueError
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "lqseg", "tiny_robustsam.yaml")
TINY_TRAIN = os.path.join(REPO, "configs", "lqseg", "tiny_robustsam_train.yaml")
KEYS = os.path.join(REPO, "tests", "reference", "robustsam_keys")
POINTS = torch.tensor([[[30.0, 40.0], [50.0, 60.0], [70.0, 70.0]], [[10.0, 12.0], [100.0, 90.0], [60.0, 20.0]],
                       [[64.0, 64.0], [20.0, 100.0], [110.0, 30.0]]])
BOXES = torch.tensor([[10.0, 10.0, 90.0, 90.0], [40.0, 20.0, 120.0, 100.0], [0.0, 0.0, 60.0, 127.0]])


def _model(*opts):
    torch.manual_seed(0)
    return build_model(setup_cfg(TINY, list(opts))).eval()


@pytest.fixture(scope="module")
def tiny():
    model = _model()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as a trained model has
        for m in model.robust.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
                m.running_var.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    return model


def _image(seed=0, h=128, w=128):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_full_size_names_and_shapes_are_the_released_ones(variant):
    with open(os.path.join(KEYS, f"robustsam_{variant}.json")) as f:
        ref = json.load(f)
    # the packaged config, built on `meta` (shapes only; the released file is not read)
    model = build_model(setup_cfg(os.path.join(REPO, "configs", "lqseg", f"robustsam_{variant}.yaml"),
                                  ["MODEL.DEVICE", "meta"]))
    sam, robust = model.sam, model.robust
    assert model.sam.config.vision_config.hidden_size == SAM_VARIANTS[variant].embed_dim
    ours = {n: list(v.shape) for n, v in hf_to_original_keys(sam.state_dict()).items()}
    ours.update({f"mask_decoder.{n}": list(v.shape) for n, v in robust.state_dict().items()})
    assert sorted(set(ref["keys"]) - set(ours)) == [] and sorted(set(ours) - set(ref["keys"])) == []
    assert {n: s for n, s in ours.items() if ref["keys"][n] != s} == {}
    added = sum(p.numel() for p in robust.parameters())
    # segment-anything keeps the prompt encoder's random Fourier matrix [2, 128] as a buffer, transformers as a
    # (tied) parameter
    sam_params = sum(p.numel() for n, p in sam.named_parameters() if not n.endswith("positional_embedding"))
    assert sam_params + added == ref["num_parameters"]  # the release's model, parameter for parameter
    if variant == "vit_b":
        assert added == 59_445_732  # the "+59.4 M" (parameters; BatchNorm statistics are buffers)


def test_released_training_config_trains_every_decoder_parameter():
    with open(os.path.join(KEYS, "robustsam_vit_l.json")) as f:
        ref = json.load(f)["keys"]
    cfg = setup_cfg(os.path.join(REPO, "configs", "lqseg", "robustsam_train_vit_l.yaml"),
                    ["MODEL.DEVICE", "meta", "MODEL.SAM.CHECKPOINT", ""])
    assert cfg.SOLVER.OPTIMIZER == "ADAM" and cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.STEPS == ()
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 1.0
    assert (cfg.INPUT.PROMPT.NUM_POINTS, cfg.INPUT.PROMPT.IMAGE_SIZE) == (3, 512)
    model = build_model(cfg)
    assert model.loss_weights == {"loss_focal": 20.0, "loss_dice": 1.0, "loss_token": 2.0, "loss_embedding": 100.0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_names) and model.has_unused_parameters
    released = {hf_to_original_name(n[len("sam."):]) if n.startswith("sam.") else "mask_decoder." + n[len("robust."):]
                for n in trainable}
    want = {k for k in ref if k.startswith("mask_decoder.") and not k.split(".")[-1].startswith(("running_", "num_"))}
    assert released == want


def test_batched_prompts_give_the_same_masks_as_one_at_a_time(tiny):
    image = _image()
    labels = torch.ones(3, 3, dtype=torch.long)
    with torch.no_grad():
        z, early, valid = tiny.encode_robust([image])
        cases = [(False, {"point_coords": POINTS, "point_labels": labels}),
                 (True, {"point_coords": POINTS, "point_labels": labels, "boxes": BOXES})]
        for multimask, extra in cases:
            tiny.multimask_output = multimask
            try:
                together = tiny.decode_robust({"image": image, **extra}, z, early, valid[0])
                assert together["mask_logits"].shape == (3, 128, 128)
                for p in range(3):
                    alone = tiny.decode_robust({"image": image, **{k: v[p:p + 1] for k, v in extra.items()}}, z, early,
                                               valid[0])
                    torch.testing.assert_close(together["mask_logits"][p], alone["mask_logits"][0], atol=1e-5,
                                               rtol=1e-5)
                    torch.testing.assert_close(together["iou_pred"][p], alone["iou_pred"][0], atol=1e-6, rtol=1e-6)
            finally:
                tiny.multimask_output = False
    # forward = encode_robust + decode_robust; the prompts and the image matter
    out = tiny([{"image": image, "point_coords": POINTS, "point_labels": labels}], return_intermediates=True)[0]
    assert (out["mask_logits"][0] - out["mask_logits"][1]).abs().max() > 1e-3
    assert out["intermediates"]["robust_logits"].shape == (3, 16, 64, 64)
    torch.testing.assert_close(out["mask_logits"], tiny.to_output_size(out["intermediates"]["robust_logits"][:, 0],
                                                                        (256, 256), (128, 128)))
    other = tiny([{"image": _image(5), "point_coords": POINTS, "point_labels": labels}])[0]
    assert (other["mask_logits"] - out["mask_logits"]).abs().max() > 1e-3


def test_fourier_guidance_keeps_the_phase_and_maps_the_magnitude():
    # two channels with one frequency each: cos(theta + phi0) and 3 cos(theta + phi1). A 1x1 conv that swaps the
    # magnitudes gives 3 cos(theta + phi0) and cos(theta + phi1): each channel keeps its own phase.
    fgm = FourierGuidance(1)
    with torch.no_grad():
        fgm.conv_layer.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(2, 2, 1, 1))
        fgm.conv_layer.bias.zero_()
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    theta = 2 * math.pi * (1 * yy + 2 * xx) / 8
    x = torch.stack([torch.cos(theta + 0.3), 3 * torch.cos(theta - 1.1)])[None]
    want = torch.stack([3 * torch.cos(theta + 0.3), torch.cos(theta - 1.1)])[None]
    torch.testing.assert_close(fgm(x), want, atol=1e-5, rtol=0)
    # scaling every magnitude by 2 (phase kept) scales the map by 2
    with torch.no_grad():
        fgm.conv_layer.weight.copy_(2 * torch.eye(2).view(2, 2, 1, 1))
    torch.testing.assert_close(fgm(x), 2 * x, atol=1e-5, rtol=0)


def test_token_block_handles_any_number_of_tokens_as_the_release_does_one():
    block = TokenBlock(4, 256)
    tokens = torch.randn(5, 4, 256, generator=torch.Generator().manual_seed(0))
    out = block(tokens)
    assert out.shape == (5, 4, 4, 256)
    t = tokens[2, 1]
    n = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-5)
    n = (n - n.mean()) / torch.sqrt(n.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(out[2, 1], block.mlp(n.view(4, 64)))  # the release's view(4, -1) of one token


@pytest.mark.parametrize("prefix", [True, False])
def test_released_format_loads_strictly_and_round_trips(tiny, tmp_path, prefix):
    path = str(tmp_path / "robustsam_checkpoint_tiny.pth")
    names = save_robustsam_release(tiny.sam, tiny.robust, path, module_prefix=prefix)
    assert all(n.startswith("module.") == prefix for n in names)
    assert any(n.endswith("mask_decoder.custom_robust_token.weight") for n in names)
    model = _model("MODEL.ROBUSTSAM.CHECKPOINT", path, "SEED", "3")
    inp = [{"image": _image(1), "point_coords": POINTS[:2], "point_labels": torch.ones(2, 3, dtype=torch.long)}]
    torch.testing.assert_close(model(inp)[0]["mask_logits"], tiny(inp)[0]["mask_logits"], atol=0, rtol=0)
    # strictness: a missing robust tensor, a plain SAM file, both checkpoint keys at once
    state = torch.load(path, map_location="cpu", weights_only=True)
    key = next(n for n in state if n.endswith("robust_mlp.layers.2.bias"))
    broken = dict(state)
    broken.pop(key)
    with pytest.raises(CheckpointMismatchError, match="1 robust tensors not in the file.*robust_mlp.layers.2.bias"):
        load_robustsam_checkpoint(model.sam, model.robust, broken)
    plain = {n: v for n, v in state.items() if "custom_" not in n and "robust_mlp" not in n and "fourier_" not in n}
    with pytest.raises(CheckpointMismatchError, match="no RobustSAM modules") as err:
        load_robustsam_checkpoint(model.sam, model.robust, plain)
    assert "MODEL.SAM.CHECKPOINT" in err.value.hint
    with pytest.raises(UserValueError, match="leave MODEL.SAM.CHECKPOINT"):
        _model("MODEL.ROBUSTSAM.CHECKPOINT", path, "MODEL.SAM.CHECKPOINT", path)


def test_plain_sam_file_plus_random_robust_modules(tiny, tmp_path, caplog):
    from rass.checkpoint.sam_loader import save_sam_original

    path = str(tmp_path / "sam_tiny.pth")
    save_sam_original(tiny.sam, path)
    model = _model("MODEL.SAM.CHECKPOINT", path)
    assert all(torch.equal(v, tiny.sam.state_dict()[k]) for k, v in model.sam.state_dict().items())
    assert any("robust modules are RANDOM" in r.getMessage() for r in caplog.records)


def test_training_terms_pair_the_clear_teacher_with_the_degraded_student(tiny):
    import torch.nn.functional as F

    from rass.modeling.enhancement.losses import release_dice_loss, release_focal_loss
    from rass.modeling.robustsam import prompt_embeddings, robust_decode

    image, low = _image(3), _image(4)
    gt = torch.zeros(96, 96, dtype=torch.bool)
    gt[20:70, 30:80] = True
    inp = {"image": image, "gt_mask": gt, "point_coords": POINTS[:1],
           "point_labels": torch.ones(1, 3, dtype=torch.long)}
    tiny.degradation = lambda images: [low.float()]  # a fixed "degraded copy"
    try:
        with torch.no_grad():
            got = tiny.training_losses([inp])
            z, early, valid = tiny.encode_robust([image, low])
            sparse, dense, pe = prompt_embeddings(tiny.sam, **tiny._prompts(inp, (128, 128)))
            clear = robust_decode(tiny.sam, tiny.robust, z[:1], early[:1], sparse, dense, pe, clear=True)
            robust = robust_decode(tiny.sam, tiny.robust, z[1:], early[1:], sparse, dense, pe, clear=False)
    finally:
        tiny.degradation = None
    logits = tiny.transform.postprocess_masks(robust["masks"][:, :1], valid[1], (128, 128))
    target = F.interpolate(gt[None, None].float(), size=(128, 128), mode="bilinear", align_corners=False)
    want = {"loss_focal": 20 * release_focal_loss(logits, target), "loss_dice": release_dice_loss(logits, target),
            "loss_token": 2 * F.mse_loss(robust["robust_tokens"], clear["robust_tokens"]),
            "loss_embedding": 100 * F.mse_loss(robust["robust_embeddings"], clear["robust_embeddings"])}
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)
    assert all(v > 0 for v in got.values())


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = str(tmp_path_factory.mktemp("synthetic_lqseg_train"))
    make_synthetic_lqseg(root, 0, 1, [], 64, 96, False, None, num_train=2)
    return root


def _trainer(out, *opts):
    from rass.engine import Trainer

    return Trainer(setup_cfg(TINY_TRAIN, ["OUTPUT_DIR", str(out), *opts]))


def test_training_lowers_the_loss_and_resumes(train_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", train_root)
    opts = ("SOLVER.BASE_LR", "0.001", "SOLVER.IMS_PER_BATCH", "1")
    trainer = _trainer(tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", *opts)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(model.trainable_names)
    assert all(n.startswith(("sam.mask_decoder.", "robust.")) for n in trainable)
    assert any(n.startswith("robust.") for n in trainable) and not any("vision_encoder" in n for n in trainable)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    trainer.train()
    hist = {k: [v for v, _ in trainer.storage.history(k).values()]
            for k in ("total_loss", "loss_focal", "loss_dice", "loss_token", "loss_embedding")}
    assert len(hist["total_loss"]) == 3 and all(v[0] > 0 for v in hist.values())
    assert hist["total_loss"][-1] < 0.8 * hist["total_loss"][0], hist
    assert hist["loss_embedding"][-1] < hist["loss_embedding"][0], hist
    # resume from the iteration-2 checkpoint: same weights and Adam moments, continues at iteration 2
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    saved = torch.load(tmp_path / "model_0000001.pth", map_location="cpu", weights_only=False)
    resumed = _trainer(tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", *opts)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in saved["model"].items())
    moments = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    want = [s["exp_avg"] for s in saved["trainer"]["_trainer"]["optimizer"]["state"].values()]
    assert len(moments) == len(want) > 0 and all(torch.equal(a, b) for a, b in zip(moments, want))
    resumed.train()
    assert [it for _, it in resumed.storage.history("total_loss").values()] == [2]


def test_training_needs_model_side_degradation_and_nan_gradients_are_zeroed(tmp_path):
    with pytest.raises(UserValueError, match="INPUT.DEGRADATION.DEVICE 'model'"):
        _model("MODEL.ROBUSTSAM.TRAIN", "True")
    model = build_model(setup_cfg(TINY_TRAIN, ["OUTPUT_DIR", str(tmp_path)]))
    p = model.robust.custom_robust_token.weight
    (p * torch.tensor(float("nan"))).sum().backward()
    assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))
    twin = copy.deepcopy(model)  # tensor hooks do not survive a deep copy: the copy registers its own
    twin._ensure_nan_hooks()
    q = twin.robust.custom_robust_token.weight
    (q * torch.tensor(float("nan"))).sum().backward()
    assert torch.equal(q.grad, torch.zeros_like(q))
    with pytest.raises(NotImplementedError, match="MODEL.ROBUSTSAM.TRAIN"):
        _model().train()([{"image": _image()}])


def test_eval_robustness_compares_robustsam_with_sam_on_the_same_rows(tmp_path, monkeypatch):
    from rass.data.synthetic_masks import make_synthetic_lqseg
    from tests.conftest import load_script

    root = str(tmp_path / "lqseg")
    make_synthetic_lqseg(root, 0, 2, [3], 64, 96, False, None)
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", root)
    out = tmp_path / "out"
    sam_cfg = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")
    rc = load_script("tools/eval_robustness.py", "eval_robustness").main(
        ["--config-file", TINY, "--compare-sam", "--compare-config", f"SAM_config={sam_cfg}", "--output", str(out),
         "--datasets", "lqseg_synthetic_test_lq3"])
    assert rc == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["run"]["model"] == "RobustSAM" and report["compared"] == ["SAM", "SAM_config"]
    row = report["levels"]["lqseg_synthetic_test_lq3"]
    for name in ("SAM", "SAM_config"):
        assert all(0.0 <= row["compare"][name][k] <= 1.0 for k in ("IoU", "Dice", "BoundaryIoU", "PixelAcc"))
    # --compare-sam is RobustSAM's own SAM, the config's SAM is the same random tiny SAM (same seed): same numbers,
    # RobustSAM's decoder gives others
    assert row["compare"]["SAM"]["IoU"] == pytest.approx(row["compare"]["SAM_config"]["IoU"])
    assert row["IoU"] != pytest.approx(row["compare"]["SAM"]["IoU"])
