"""MGD-SAM2's test protocol (tiny model, CPU): the TTA passes in ttach's order, each pass undone exactly (flip,
bilinear scale and back), the mean of logits, the release's cached MCEM encoding during TTA, and an end-to-end
`train_net.py --eval-only` run with released-format weights as MODEL.WEIGHTS through the SOD evaluator."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

import rass  # noqa: F401  (registers everything)
from rass.checkpoint.mgd_sam2_loader import mgd_sam2_original_names
from rass.modeling.mgd_sam2.model import build_mgd_sam2
from rass.modeling.mgd_sam2.tta import mcem_pe_reference, mgd_sam2_tta_logits, tta_passes
from rass.utils.errors import UserValueError
from tests.conftest import REPO, load_script

TINY = os.path.join(REPO, "configs", "dis5k", "tiny_mgd_sam2.yaml")
SIZE = 128


@pytest.fixture(scope="module")
def model():
    return build_mgd_sam2("test", SIZE, None, adapter_reduction=4, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def x():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))


def _f(model, x):
    return model.logits(x)[0]


def test_passes_in_ttach_order():
    assert tta_passes([0.75, 1, 1.25], True) == [(False, 0.75), (False, 1.0), (False, 1.25), (True, 0.75),
                                                  (True, 1.0), (True, 1.25)]
    assert tta_passes([1.0], False) == [(False, 1.0)]
    with pytest.raises(UserValueError, match="TTA_SCALES"):
        tta_passes([0.0], True)


@torch.no_grad()
def test_each_pass_is_undone_and_the_logits_averaged(model, x):
    torch.testing.assert_close(mgd_sam2_tta_logits(model, x, [1.0], False, pe_cache=False), _f(model, x),
                               rtol=0, atol=0)
    flipped = (_f(model, x) + _f(model, x.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(mgd_sam2_tta_logits(model, x, [1.0], True, pe_cache=False), flipped, rtol=0, atol=0)
    small = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    back = F.interpolate(_f(model, small), size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    torch.testing.assert_close(mgd_sam2_tta_logits(model, x, [0.5], False, pe_cache=False), back, rtol=0, atol=0)
    with pytest.raises(UserValueError, match=r"scale 0.75 of the 128-px input gives 96"):
        mgd_sam2_tta_logits(model, x, [0.75], False)


@torch.no_grad()
def test_release_pe_cache_uses_the_first_pass_encoding(model, x):
    mcem = model.mask_decoder.new_multifieldcrossatt
    # first pass: 0.5 x 128 = 64-px input, 32-px views, 2 x 2 stride-16 maps, tiled 4 x 4
    first = F.interpolate(_f(model, F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)),
                          size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    with mcem_pe_reference(model, (4, 4)):
        second = _f(model, x)
    assert mcem.pe_reference_size is None
    calls = []
    hook = mcem.register_forward_hook(lambda m, args, out: calls.append((m.pe_reference_size, out[0])))
    try:
        cached = mgd_sam2_tta_logits(model, x, [0.5, 1.0], False, pe_cache=True)
        fresh = mgd_sam2_tta_logits(model, x, [0.5, 1.0], False, pe_cache=False)
    finally:
        hook.remove()
    torch.testing.assert_close(cached, (first + second) / 2, rtol=1e-6, atol=1e-6)
    assert [c[0] for c in calls] == [(4, 4), (4, 4), None, None]
    torch.testing.assert_close(calls[0][1], calls[2][1], rtol=0, atol=0)  # first pass: its own size, no change
    assert (calls[1][1] - calls[3][1]).abs().max() > 1e-4  # scale-1 pass: MCEM sees the resized 4 x 4 encoding
    assert mcem.pe_reference_size is None


def test_eval_only_through_train_net(model, tmp_path):
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    data = str(tmp_path / "sod")
    tool.make_synthetic_sod(data, seed=2, num_train=0, num_test=2, min_size=30, max_size=60)
    weights = str(tmp_path / "model_epoch_best.pth")
    names = mgd_sam2_original_names(model)
    torch.save({names[k]: v for k, v in model.state_dict().items()}, weights)  # the released format
    train_net = load_script("train_net.py", "train_net_mgd_eval")
    os.environ["RASS_SOD_SYNTHETIC_ROOT"] = data
    try:
        results = {}
        for tta in ("True", "False"):
            out = str(tmp_path / f"out_{tta}")
            args = train_net.build_parser().parse_args(["--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", weights,
                                                        "OUTPUT_DIR", out, "MODEL.MGD_SAM2.TTA", tta])
            results[tta] = train_net.main(args)["sod_synthetic_test"]["sod"]
            with open(os.path.join(out, "inference", "sod_synthetic_test", "sod_sod_synthetic_test.json")) as f:
                assert json.load(f)["summary"]["MAE"] == pytest.approx(results[tta]["MAE"])
    finally:
        del os.environ["RASS_SOD_SYNTHETIC_ROOT"]
    for res in results.values():
        assert res["num_images"] == 2 and 0 <= res["MAE"] <= 1 and 0 <= res["S"] <= 1
    assert results["True"]["MAE"] != results["False"]["MAE"]  # TTA on / off are different predictions

    # the same numbers from the model evaluated directly (MODEL.WEIGHTS was read, released names and all)
    from detectron2.data import DatasetCatalog
    from rass.data.dataset_mappers.sod import MGDSODDatasetMapper
    from rass.evaluation.sod import sod_image_metrics, summarize_sod

    os.environ["RASS_SOD_SYNTHETIC_ROOT"] = data
    try:
        dicts = DatasetCatalog.get("sod_synthetic_test")
    finally:
        del os.environ["RASS_SOD_SYNTHETIC_ROOT"]
    mapper = MGDSODDatasetMapper(is_train=False, image_size=SIZE)
    records = []
    from rass.modeling.sam2 import Sam2ImageTransform

    transform = Sam2ImageTransform(SIZE)
    for d in sorted(dicts, key=lambda d: d["image_id"]):
        inp = mapper(d)
        with torch.no_grad():
            logits = F.interpolate(_f(model, transform(inp["image"])), size=(inp["height"], inp["width"]),
                                   mode="bilinear", align_corners=False)[0, 0]
        records.append(sod_image_metrics(torch.sigmoid(logits).numpy() * 255, inp["gt_mask"].numpy() * 255))
    assert summarize_sod(records)["MAE"] == pytest.approx(results["False"]["MAE"], abs=1e-6)
