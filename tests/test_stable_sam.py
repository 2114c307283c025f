"""Stable-SAM's plugins on the tiny SAM (CPU): SAM's outputs exactly with routing (0, 1), the deformable sampling
in closed form, routing weights in range, parameter counts at full size (meta), GleSAM + Stable-SAM, plugin
files (another SAM size is refused) and the RTS prompt / loss helpers."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers StableSAM)
from rass.config import setup_cfg
from rass.modeling.point_sampling import SeededPointGenerator
from rass.modeling.sam import sam_predict
from rass.modeling.stable_sam import (
    DeformableSamplingPlugin, DynamicRoutingPlugin, RtsPromptSampler, StableSamPlugins, load_plugin_file,
    rts_mask_loss, sam_encoder_shape, save_plugin_file, shift_sample)
from rass.utils.errors import UserValueError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "lqseg", "tiny_stable_sam.yaml")
BOXES = torch.tensor([[10.0, 12.0, 80.0, 70.0], [40.0, 30.0, 120.0, 90.0]])
POINTS = torch.tensor([[[30.0, 40.0], [50.0, 60.0]], [[90.0, 60.0], [100.0, 70.0]]])


def _model(*opts, seed=0):
    torch.manual_seed(seed)
    return build_model(setup_cfg(TINY, ["MODEL.STABLE_SAM.STAGE", "none", *opts])).eval()


def _image(h=96, w=128, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _perturb(plugins: StableSamPlugins, seed: int = 1) -> None:
    """Trained-looking plugins: random non-zero offset head, non-identity projection, uneven routing."""
    g = torch.Generator().manual_seed(seed)
    for p in plugins.parameters():
        p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def inputs():
    return [{"image": _image(), "boxes": BOXES, "point_coords": POINTS, "point_labels": torch.tensor([[1, 0], [1, 1]])},
            {"image": _image(128, 100, 1), "boxes": BOXES[:1], "height": 200, "width": 150}]


def test_untrained_plugins_and_routing_0_1_give_sams_outputs_exactly(model, inputs):
    plain = model.plain_sam()
    want = plain(inputs)
    for got, ref in zip(model(inputs), want):  # untrained: identity projection, zero offsets
        assert torch.equal(got["mask_logits"], ref["mask_logits"]) and torch.equal(got["iou_pred"], ref["iou_pred"])
    state = {k: v.clone() for k, v in model.plugins.state_dict().items()}
    try:
        _perturb(model.plugins)
        changed = model(inputs)
        assert (changed[0]["mask_logits"] - want[0]["mask_logits"]).abs().max() > 1e-3  # the plugins act
        model.plugins.fixed_routing = (0.0, 1.0)
        for got, ref in zip(model(inputs), want):
            assert torch.equal(got["mask_logits"], ref["mask_logits"]) and torch.equal(got["iou_pred"], ref["iou_pred"])
        for got, ref in zip(plain(inputs), want):  # plain SAM (same SamModel) is untouched by the hook
            assert torch.equal(got["mask_logits"], ref["mask_logits"])
    finally:
        model.plugins.fixed_routing = None
        model.plugins.load_state_dict(state)


def test_each_prompt_of_a_batch_is_decoded_as_alone_and_routing_is_in_range(model, inputs):
    state = {k: v.clone() for k, v in model.plugins.state_dict().items()}
    try:
        _perturb(model.plugins, 2)
        both = model([inputs[0]], return_intermediates=True)[0]
        routing = both["intermediates"]["routing"]
        assert routing.shape == (2, 2) and bool(((routing > 0) & (routing < 1)).all())
        torch.testing.assert_close(routing.sum(1), torch.ones(2))
        assert not torch.allclose(routing[0], routing[1])  # depends on the prompt's token
        for p in range(2):
            one = dict(inputs[0], boxes=BOXES[p:p + 1], point_coords=POINTS[p:p + 1],
                       point_labels=inputs[0]["point_labels"][p:p + 1])
            alone = model([one], return_intermediates=True)[0]
            torch.testing.assert_close(alone["mask_logits"][0], both["mask_logits"][p], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(alone["intermediates"]["routing"][0], routing[p])
    finally:
        model.plugins.load_state_dict(state)


def test_drp_weights_are_a_softmax_in_range_and_follow_the_token():
    torch.manual_seed(0)
    drp = DynamicRoutingPlugin(256, 24)
    tokens = torch.randn(50, 256) * 5
    a = drp(tokens)
    assert a.shape == (50, 2) and bool(((a > 0) & (a < 1)).all())
    torch.testing.assert_close(a.sum(-1), torch.ones(50))
    logits = drp.fc2(F.gelu(drp.fc1(F.layer_norm(tokens, (256,), drp.norm.weight, drp.norm.bias))))
    torch.testing.assert_close(a[:, 0], torch.sigmoid(logits[:, 0] - logits[:, 1]))
    drp.reset_parameters()
    torch.testing.assert_close(drp(tokens), torch.full((50, 2), 0.5))  # untrained: (0.5, 0.5)


def test_a_one_cell_shift_moves_the_sampled_features_by_one_cell_in_closed_form():
    h, w = 6, 8
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    feat = torch.stack([10 * ys + xs + 1, -(10 * ys + xs + 1)])[None]  # 1 x 2 x H x W, f(y, x) = 10y + x + 1
    right = torch.zeros(1, 2, h, w)
    right[:, 0] = 1.0
    out = shift_sample(feat, right)
    want = torch.zeros_like(feat)
    want[..., :-1] = feat[..., 1:]  # out(y, x) = f(y, x + 1); zeros beyond the last column
    torch.testing.assert_close(out, want)
    up = torch.zeros(1, 2, h, w)
    up[:, 1] = -1.0
    want = torch.zeros_like(feat)
    want[..., 1:, :] = feat[..., :-1, :]
    torch.testing.assert_close(shift_sample(feat, up), want)
    half = right * 0.5  # bilinear: the mean of the two cells (inside), half the last cell at the edge
    out = shift_sample(feat, half)
    torch.testing.assert_close(out[..., :-1], feat[..., :-1] + 0.5 * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1))
    torch.testing.assert_close(out[..., -1], 0.5 * feat[..., -1])
    # the DSP end to end: identity projection, constant offset (1, 0) and amplitude 2·sigmoid(a)
    dsp = DeformableSamplingPlugin(2, 5, amplitudes=True)
    dsp.reset_parameters()
    with torch.no_grad():
        dsp.offset_proj.bias.copy_(torch.tensor([1.0, 0.0, 0.3]))
    want = torch.zeros_like(feat)
    want[..., :-1] = feat[..., 1:]
    torch.testing.assert_close(dsp(feat), want * 2 * torch.sigmoid(torch.tensor(0.3)))


def test_parameter_counts_at_full_size_on_meta():
    counts = {}
    for variant, amplitudes in (("vit_l", True), ("vit_b", True), ("vit_h", False)):
        cfg = setup_cfg(TINY, ["MODEL.SAM.VARIANT", variant, "MODEL.SAM.IMAGE_SIZE", "1024", "MODEL.DEVICE", "meta",
                               "MODEL.STABLE_SAM.DSP_AMPLITUDES", str(amplitudes)])
        m = build_model(cfg)
        assert m.plugins.dsp.input_proj.weight.device.type == "meta"
        counts[variant] = m.plugins.part_counts()
        assert {n for n, p in m.named_parameters() if p.requires_grad} == set(m.trainable_names)
        assert all(n.startswith("plugins.") for n in m.trainable_names) and len(m.trainable_names) == 14
    print("Stable-SAM plugin parameters at C = 256:", counts)
    c = 256
    dsp = (c * c + c) + (25 * c + c) + 2 * c + (3 * c + 3)  # 1x1 C->C, DW 5x5, LN, 1x1 C->3 (offsets + amplitude)
    drp = 2 * c + (c * 24 + 24) + (24 * 2 + 2)  # LN, C->24, 24->2
    assert counts["vit_l"] == counts["vit_b"] == {"dsp": dsp, "drp": drp, "total": dsp + drp} == \
        {"dsp": 73731, "drp": 6730, "total": 80461}
    assert counts["vit_h"]["dsp"] == dsp - c - 1 and abs(counts["vit_h"]["total"] - 80_000) < 1_000


@pytest.fixture(scope="module")
def stable_glesam(model):
    torch.manual_seed(0)
    m = build_model(setup_cfg(TINY, ["MODEL.STABLE_SAM.STAGE", "none", "MODEL.GLESAM.ENHANCE", "True"])).eval()
    m.sam.load_state_dict(model.sam.state_dict())
    m.plugins.load_state_dict(model.plugins.state_dict())
    _perturb(m.plugins, 3)
    return m


def test_glesam_enhancement_then_the_plugged_decoder(stable_glesam, inputs):
    m = stable_glesam
    assert m.enhancer is not None
    out = m([inputs[0]], return_intermediates=True)[0]
    inter = out["intermediates"]
    with torch.no_grad():
        z_low, _ = m.encode([inputs[0]["image"]])
        z = m.enhancer(z_low)
        torch.testing.assert_close(inter["z_enhanced"], z)
        prompts = m._prompts(inputs[0], tuple(inputs[0]["image"].shape[-2:]))
        with m.plugins.active():
            plugged, _ = sam_predict(m.sam, z, **prompts)
        plain, _ = sam_predict(m.sam, z, **prompts)
        on_raw, _ = sam_predict(m.sam, z_low, **prompts)
    torch.testing.assert_close(inter["low_res_logits"][:, 0], plugged[0, :, 0])
    assert (plugged - plain).abs().max() > 1e-3 and (plugged - on_raw).abs().max() > 1e-3


def test_plugin_file_loads_onto_another_checkpoint_of_the_same_size_and_refuses_another_size(model, tmp_path):
    state = {k: v.clone() for k, v in model.plugins.state_dict().items()}
    _perturb(model.plugins, 4)
    path = str(tmp_path / "plugins.pth")
    try:
        save_plugin_file(path, model.plugins.state_dict(), sam_encoder_shape(model.sam))
        assert os.path.getsize(path) < 400_000
        other = _model("MODEL.STABLE_SAM.PLUGIN_WEIGHTS", path, seed=5)  # another random tiny SAM
        assert not torch.equal(other.sam.mask_decoder.iou_token.weight, model.sam.mask_decoder.iou_token.weight)
        for k, v in model.plugins.state_dict().items():
            assert torch.equal(other.plugins.state_dict()[k], v), k
        vit_b = {"embed_dim": 768, "depth": 12, "patch": 16, "image_size": 1024, "num_heads": 12,
                 "global_attn_indexes": (2, 5, 8, 11), "window_size": 14}
        wrong = str(tmp_path / "plugins_vit_b.pth")
        save_plugin_file(wrong, model.plugins.state_dict(), vit_b)
        with pytest.raises(UserValueError, match=r"trained on SAM vit_b .*this model's SAM is tiny"):
            load_plugin_file(wrong, model.plugins, model.sam)
        no_amp = StableSamPlugins(256, 5, amplitudes=False, image_size=16)
        with pytest.raises(UserValueError, match="plugin settings"):
            load_plugin_file(path, no_amp, model.sam)
        torch.save({"model": {}}, str(tmp_path / "not_plugins.pth"))
        with pytest.raises(UserValueError, match="is not a Stable-SAM plugin file"):
            load_plugin_file(str(tmp_path / "not_plugins.pth"), model.plugins, model.sam)
    finally:
        model.plugins.load_state_dict(state)


def test_bad_settings_are_clear_errors():
    with pytest.raises(UserValueError, match=r"BOX_NOISE_RANGE .*0 <= min <= max, got \(-0.1, 0.3\)"):
        RtsPromptSampler(box_noise_range=(-0.1, 0.3))
    with pytest.raises(UserValueError, match="BOX_NOISE_RANGE"):
        build_model(setup_cfg(TINY, ["MODEL.STABLE_SAM.RTS.BOX_NOISE_RANGE", "[-0.5, 0.1]"]))
    with pytest.raises(UserValueError, match="NUM_POINTS_RANGE"):
        RtsPromptSampler(num_points_range=(0, 3))
    with pytest.raises(UserValueError, match="FIXED_ROUTING"):
        _model("MODEL.STABLE_SAM.FIXED_ROUTING", "[1.5, 0.0]")
    with pytest.raises(UserValueError, match="MODEL.STABLE_SAM.STAGE must be one of"):
        _model("MODEL.STABLE_SAM.STAGE", "train")


def test_rts_prompts_are_low_quality_boxes_or_1_to_3_interior_points_seeded_per_sample():
    mask = torch.zeros(64, 80, dtype=torch.bool)
    mask[10:50, 20:60] = True
    s = RtsPromptSampler(0.5, (0.1, 0.5), (1, 3), seed=3)
    draws = [s.draw(mask, (64, 80), s.rng(0, it, 0)) for it in range(200)]
    boxes = [d for d in draws if "boxes" in d]
    points = [d for d in draws if "point_coords" in d]
    assert 70 < len(boxes) < 130 and len(boxes) + len(points) == 200
    scales = np.array([float(d["noise_scale"]) for d in boxes])
    assert scales.min() >= 0.1 and scales.max() <= 0.5
    exact = np.array([20, 10, 59, 49], dtype=np.float32)
    moved = np.array([np.abs(d["boxes"][0].numpy() - exact).max() for d in boxes])
    assert (moved > 0).all() and (moved <= 0.5 * 40 + 1e-4).all()  # |Δ| <= s·size (s <= 0.5, sizes 40)
    ks = sorted({int(d["num_points"]) for d in points})
    assert ks == [1, 2, 3]
    for d in points:
        xy = d["point_coords"][0].long()
        assert bool(mask[xy[:, 1], xy[:, 0]].all()) and bool((d["point_labels"] == 1).all())
    again = s.draw(mask, (64, 80), s.rng(0, 7, 0))
    assert all(torch.equal(again[k], draws[7][k]) for k in again)


def test_rts_loss_is_bce_plus_dice_on_sampled_points_in_closed_form():
    # logits 0 against an empty mask: every sampled point (zero padding included) has p = 0.5, target 0
    logits = [torch.zeros(1, 20, 30), torch.zeros(2, 10, 10)]
    masks = [torch.zeros(40, 60, dtype=torch.bool), torch.zeros(10, 10, dtype=torch.bool)]
    n = 64
    out = rts_mask_loss(logits, masks, n, 3.0, 0.75, SeededPointGenerator(0))
    torch.testing.assert_close(out["loss_mask"], torch.tensor(math.log(2.0)))  # mean over the 3 masks
    torch.testing.assert_close(out["loss_dice"], torch.tensor(1 - 1 / (0.5 * n + 1)))
    # the loss follows the prediction: right (inside +8, outside -8) < constant 0 < wrong (signs swapped)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 8:24] = True
    right = torch.where(mask, 8.0, -8.0)[None]
    terms = [rts_mask_loss([lg], [mask], 256, 3.0, 0.75, SeededPointGenerator(1))
             for lg in (right, torch.zeros(1, 32, 32), -right)]
    for key in ("loss_mask", "loss_dice"):
        assert terms[0][key] < 0.5 and terms[0][key] < terms[1][key] < terms[2][key], key
