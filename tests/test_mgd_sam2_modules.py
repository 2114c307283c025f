"""MGD-SAM2's own modules: views, MPAdapter, MCEM, HMIM, DRM, loss (tiny dims; full-size names on `meta`)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rass.modeling.mgd_sam2 import (
    HMIM, MCEM, CenteredSinePositionEmbedding, DetailRefinement, DWConv3DAdapter, MPAdapter, gt_views,
    image_to_views, mgd_sam2_losses, soft_iou_loss, split_views, tiled_to_views, views_to_tiled)
from rass.utils.errors import UserValueError
from tests.conftest import load_manifest


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("mgd_sam2_manifest.json")["mgd_sam2_model_epoch"]["entries"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randomise(module, seed=0):
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module


# ---------------------------------------------------------------- views

def test_image_to_views_order_and_global():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    v = image_to_views(x)
    assert v.shape == (10, 3, 2, 2)
    # image-major, then TL, TR, BL, BR
    for b in range(2):
        for i, (r, c) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
            assert torch.equal(v[4 * b + i], x[b, :, r:r + 2, c:c + 2])
    # bilinear 0.5x without antialias on an even grid = mean of each 2x2 block
    assert torch.allclose(v[8:], F.avg_pool2d(x, 2))
    assert torch.equal(v[8, 0], torch.tensor([[2.5, 4.5], [10.5, 12.5]]))


def test_views_round_trip_and_quadrant_lands_in_its_view():
    x = torch.randn(3, 2, 6, 8, generator=_gen())
    assert torch.equal(views_to_tiled(tiled_to_views(x)), x)
    y = torch.zeros(2, 1, 8, 8)
    y[1, :, 0:4, 4:8] = 1.0  # image 1, top-right quadrant
    loc, glb = split_views(image_to_views(y))
    assert [int(t.sum()) for t in loc] == [0, 0, 0, 0, 0, 16, 0, 0]
    assert glb[0].sum() == 0 and torch.equal(glb[1, 0, :2, 2:], torch.ones(2, 2))


def test_gt_views_nearest_global():
    m = torch.rand(1, 1, 6, 6, generator=_gen())
    v = gt_views(m)
    assert torch.equal(v[4], m[0, :, ::2, ::2])
    assert torch.equal(views_to_tiled(v[:4]), m)


def test_views_reject_odd_sizes():
    with pytest.raises(UserValueError, match=r"even H and W, got shape \(1, 3, 5, 6\)"):
        image_to_views(torch.zeros(1, 3, 5, 6))
    with pytest.raises(UserValueError, match="5B views"):
        split_views(torch.zeros(6, 1, 2, 2))


# ---------------------------------------------------------------- MPAdapter

def test_mpadapter_release_grouping_and_counts():
    with torch.device("meta"):
        a = MPAdapter((2, 3, 16, 3), (112, 224, 448, 896), reduction=32)
    names = [a.adapter_name(i) for i in range(24)]
    assert names[:7] == ["lightweight_mlp1_0", "lightweight_mlp1_1", "lightweight_mlp1_2", "lightweight_mlp2_0",
                         "lightweight_mlp2_1", "lightweight_mlp2_2", "lightweight_mlp3_0"]
    assert names[21:] == ["lightweight_mlp3_15", "lightweight_mlp4_0", "lightweight_mlp4_1"]
    assert a.block_dims == [112] * 3 + [224] * 3 + [448] * 16 + [896] * 2
    created = sum(p.numel() for p in a.parameters())
    used = sum(p.numel() for n, p in a.named_parameters() if n.split(".")[0] in set(names))
    assert (created, used) == (490_981, 334_538)
    unused = {n.split(".")[0] for n, _ in a.named_parameters()} - set(names)
    assert unused == {"lightweight_mlp2_3", "lightweight_mlp3_16", "lightweight_mlp4_2", "lightweight_mlp4_3",
                      "shared_mlp1", "shared_mlp2", "shared_mlp3", "shared_mlp4"}
    with pytest.raises(UserValueError, match="block index 24 out of range 0..23"):
        a.adapter_name(24)


def test_mpadapter_zero_last_linear_is_identity_and_else_depends_on_input():
    torch.manual_seed(0)
    a = MPAdapter((1, 1), (32, 64), reduction=8)
    assert a.block_dims == [32, 32]
    x = torch.randn(5, 4, 4, 32, generator=_gen(1))
    y = a(x, 1)
    assert y.shape == x.shape and not torch.allclose(y, x)
    assert not torch.allclose(a(x * 2, 1) - 2 * x, y - x)
    with torch.no_grad():
        a.lightweight_mlp1_1[3].weight.zero_()
        a.lightweight_mlp1_1[3].bias.zero_()
    assert torch.equal(a(x, 1), x)


def test_dwconv3d_adapter_mixes_global_into_the_right_tiles():
    m = DWConv3DAdapter(3)
    with torch.no_grad():
        for conv in (m.dwconv_loc, m.dwconv_glb):
            conv.weight.zero_()
            conv.bias.zero_()
        m.dwconv_loc.weight[:, 0, 1, 1, 1] = 1.0  # new tiled = upsampled global (2nd of the stack)
        m.dwconv_glb.weight[:, 0, 1, 1, 1] = 1.0  # new global = downsampled tiled locals
    x = torch.randn(10, 4, 4, 3, generator=_gen(2))  # B = 2, NHWC
    out = m(x) - x
    nchw = x.permute(0, 3, 1, 2)
    loc, glb = split_views(nchw)
    tiled = views_to_tiled(loc)
    exp_loc = tiled_to_views(F.interpolate(glb, size=(8, 8), mode="bilinear", align_corners=False))
    exp_glb = F.interpolate(tiled, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(out.permute(0, 3, 1, 2), torch.cat((exp_loc, exp_glb)), atol=1e-6)


# ---------------------------------------------------------------- MCEM

@pytest.fixture(scope="module")
def mcem():
    torch.manual_seed(0)
    return MCEM(d_model=16, num_heads=2, attention_downsample_rate=2, mlp_dim=24).eval()


def test_sine_pe_at_pixel_centres():
    pe = CenteredSinePositionEmbedding(8, normalize=True)(torch.zeros(1, 1, 3, 4))
    assert pe.shape == (1, 16, 3, 4)
    y = lambda i: (i + 0.5) / (3 + 1e-6) * 2 * math.pi  # noqa: E731
    x = lambda j: (j + 0.5) / (4 + 1e-6) * 2 * math.pi  # noqa: E731
    assert pe[0, 0, 2, 1].item() == pytest.approx(math.sin(y(2)), abs=1e-6)
    assert pe[0, 1, 2, 1].item() == pytest.approx(math.cos(y(2)), abs=1e-6)
    assert pe[0, 2, 2, 1].item() == pytest.approx(math.sin(y(2) / 10000 ** 0.25), abs=1e-6)
    assert pe[0, 9, 2, 1].item() == pytest.approx(math.cos(x(1)), abs=1e-6)


def test_mcem_shapes_and_view_locality(mcem):
    v = torch.randn(10, 16, 4, 4, generator=_gen(3))  # B = 2, h = w = 4
    with torch.no_grad():
        out, tiled = mcem.forward_views(v)
        assert out.shape == (10, 16, 4, 4) and tiled.shape == (2, 16, 8, 8)
        assert torch.equal(views_to_tiled(out[:8]), tiled)
        v2 = v.clone()
        v2[8, :, 0, 1] += 1.0  # image 0's global view, a token in its top-left quadrant
        out2, _ = mcem.forward_views(v2)
    changed = (out2 - out).abs().flatten(1).amax(1) > 1e-6
    # only image 0's TL tile (attends to the global TL quadrant) and image 0's global view change
    assert changed.tolist() == [True, False, False, False, False, False, False, False, True, False]
    g_changed = (out2[8] - out[8]).abs().amax(0) > 1e-6
    assert g_changed.nonzero().tolist() == [[0, 1]]


def test_mcem_pe_reference_size(mcem):
    x = torch.zeros(1, 16, 4, 4, dtype=torch.float64)
    assert mcem.position_encoding(8, 8, x).dtype == torch.float64
    ref = MCEM(16, 2, 2, 24, pe_reference_size=(6, 6))
    pe6 = mcem.position_encoding(6, 6, x)
    assert torch.allclose(ref.position_encoding(8, 8, x), F.interpolate(pe6, size=(8, 8), mode="bicubic"))
    assert not torch.allclose(ref.position_encoding(8, 8, x), mcem.position_encoding(8, 8, x))
    with pytest.raises(UserValueError, match="expected locals"):
        mcem(torch.zeros(4, 16, 3, 3), torch.zeros(1, 16, 3, 3))


# ---------------------------------------------------------------- HMIM

def test_hmim_shapes_and_view_locality():
    torch.manual_seed(0)
    m = HMIM(8)
    _randomise(m, 4)
    x = torch.randn(10, 8, 4, 4, generator=_gen(5))
    prev = torch.randn(2, 8, 4, 4, generator=_gen(6))
    with torch.no_grad():
        out, tiled = m(x, prev)
        assert out.shape == (10, 8, 4, 4) and tiled.shape == (2, 8, 8, 8)
        assert torch.equal(views_to_tiled(out[:8]), tiled)
        x2 = x.clone()
        x2[2, :, 1, 3] += 1.0  # image 0, bottom-left tile, one pixel
        d = (m(x2, prev)[0] - out).abs().amax(1) > 1e-6
        assert d.nonzero().tolist() == [[2, 1, 3]]  # per-pixel path for locals; globals untouched
        prev2 = prev.clone()
        prev2[1] += 1.0  # previous level of image 1 -> image 1's global and its tiles
        changed = (m(x, prev2)[0] - out).abs().flatten(1).amax(1) > 1e-6
    assert changed.tolist() == [False] * 4 + [True] * 4 + [False, True]
    with pytest.raises(UserValueError, match="must match the global view"):
        m(x, torch.zeros(2, 8, 8, 8))


# ---------------------------------------------------------------- DRM

def test_drm_shape_and_inputs_matter():
    torch.manual_seed(0)
    m = _randomise(DetailRefinement(32, 32), 7).eval()
    img = torch.randn(1, 3, 32, 32, generator=_gen(8))
    emb = torch.randn(5, 32, 4, 4, generator=_gen(9))
    with torch.no_grad():
        out = m(img, emb)
        assert out.shape == (1, 1, 32, 32)
        assert not torch.allclose(m(img.flip(-1), emb), out)
        emb2 = emb.clone()
        emb2[4] += 1.0  # the global view
        assert not torch.allclose(m(img, emb2), out)
    with pytest.raises(UserValueError, match="5 views per image"):
        m(torch.zeros(2, 3, 32, 32), emb)


# ---------------------------------------------------------------- loss

def test_loss_closed_form():
    gt = torch.ones(2, 1, 4, 4)
    d = mgd_sam2_losses(torch.zeros(2, 1, 4, 4), torch.zeros(10, 1, 1, 1), gt)
    # p = 0.5 everywhere: BCE = log 2; IoU loss = 1 - 0.5N / (1.5N - 0.5N) = 0.5
    exp = {"loss_bce": math.log(2), "loss_iou": 0.5, "loss_bce_views": 0.3 * math.log(2), "loss_iou_views": 0.15}
    assert {k: round(v.item(), 6) for k, v in d.items()} == {k: round(v, 6) for k, v in exp.items()}
    d0 = mgd_sam2_losses(torch.zeros(2, 1, 4, 4), torch.zeros(10, 1, 2, 2), torch.zeros(2, 1, 4, 4))
    assert d0["loss_iou"].item() == pytest.approx(1.0) and d0["loss_iou_views"].item() == pytest.approx(0.3)


def test_loss_views_follow_gt_views():
    gt = torch.zeros(1, 1, 4, 4)
    gt[0, 0, :2, 2:] = 1.0  # top-right quadrant only
    logits = torch.full((5, 1, 2, 2), -20.0)
    logits[1] = 20.0  # TR view predicts foreground
    logits[4, 0, 0, 1] = 20.0  # global view: nearest 0.5x of gt is foreground only at (0, 1)
    d = mgd_sam2_losses(gt * 40 - 20, logits, gt)
    assert max(d["loss_bce"].item(), d["loss_iou"].item(), d["loss_bce_views"].item()) < 1e-6
    # as released, a view with an empty GT costs IoU loss 1 whatever it predicts: 3 of the 5 views here
    assert d["loss_iou_views"].item() == pytest.approx(0.3 * 3 / 5, abs=1e-6)
    assert soft_iou_loss(torch.tensor([[[[20.0, -20.0]]]]), torch.tensor([[[[1.0, 1.0]]]])).item() == \
        pytest.approx(0.5, abs=1e-6)
    assert soft_iou_loss(torch.full((1, 1, 2, 2), -200.0), torch.zeros(1, 1, 2, 2)).item() == 1.0  # no 0/0


def test_loss_rejects_bad_gt():
    with pytest.raises(UserValueError, match=r"must lie in \[0, 1\], got values in \[0.0, 255.0\]"):
        mgd_sam2_losses(torch.zeros(1, 1, 4, 4), torch.zeros(5, 1, 2, 2), torch.full((1, 1, 4, 4), 255.0) *
                        (torch.arange(16).reshape(1, 1, 4, 4) > 0))
    with pytest.raises(UserValueError, match="expected 5 view masks for 1 images, got 4"):
        mgd_sam2_losses(torch.zeros(1, 1, 4, 4), torch.zeros(4, 1, 2, 2), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------- release names and sizes

@pytest.mark.parametrize("prefix,build,count", [
    ("image_encoder.trunk.mpadapter.", lambda: MPAdapter((2, 3, 16, 3), (112, 224, 448, 896), 32), 490_981),
    ("sam_mask_decoder.new_multifieldcrossatt.", lambda: MCEM(256, 8, 2, 512), 1_186_432),
    ("sam_mask_decoder.new_fusion1.", lambda: HMIM(256), 334_080),
    ("sam_mask_decoder.new_fusion2.", lambda: HMIM(256), 334_080),
    ("detail_enhance.", lambda: DetailRefinement(32, 32), 57_649),
])
def test_state_dict_matches_release_manifest(manifest, prefix, build, count):
    with torch.device("meta"):
        m = build()
    ours = {k: list(v.shape) for k, v in m.state_dict().items()}
    ref = {k[len(prefix):]: v for k, v in manifest.items() if k.startswith(prefix)}
    assert ours == ref
    assert sum(p.numel() for p in m.parameters()) == count
