"""Plain SAM2 as a promptable model ("PromptableSAM2", tiny random SAM2, CPU): SAM2's square preprocessing and
prompt transform, boxes as corner points labelled 2 / 3 before the points, best-by-IoU multimask selection, the
output dicts of "PromptableSAM", weights from MODEL.SAM2.CHECKPOINT, and the robustness tool on it."""
from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers PromptableSAM2)
from rass.checkpoint.sam2_loader import save_sam2_original
from rass.config import setup_cfg
from tests.conftest import REPO, load_script

TINY_SAM2 = os.path.join(REPO, "configs", "lqseg", "tiny_sam2.yaml")
POINTS = torch.tensor([[[30.0, 40.0], [50.0, 60.0]]])


def _model(*opts):
    torch.manual_seed(0)
    return build_model(setup_cfg(TINY_SAM2, list(opts))).eval()


@pytest.fixture(scope="module")
def sam2():
    return _model()


@pytest.fixture(scope="module")
def sam2_multimask(sam2):
    model = _model("MODEL.SAM2.MULTIMASK_OUTPUT", "True")
    model.sam2.load_state_dict(sam2.sam2.state_dict())
    return model


def _image(h=100, w=140, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_square_resize_imagenet_normalisation_and_prompt_scaling(sam2):
    t = sam2.transform
    flat = torch.full((3, 30, 50), 200, dtype=torch.uint8)
    x = t(flat)
    assert tuple(x.shape) == (1, 3, 64, 64)  # aspect not kept
    expected = (200 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 10, 20], expected)
    coords = t.apply_coords(torch.tensor([[25.0, 15.0], [50.0, 30.0]]), (30, 50))
    torch.testing.assert_close(coords, torch.tensor([[32.0, 32.0], [64.0, 64.0]]))  # x * 64 / w, y * 64 / h
    torch.testing.assert_close(t.apply_boxes(torch.tensor([[5.0, 3.0, 25.0, 15.0]]), (30, 50)),
                               torch.tensor([[6.4, 6.4, 32.0, 32.0]]))


def test_outputs_at_the_requested_size_for_points_boxes_and_both(sam2):
    inputs = [
        {"image": _image(), "point_coords": POINTS, "point_labels": torch.ones(1, 2, dtype=torch.long),
         "height": 50, "width": 70},
        {"image": _image(seed=1), "boxes": torch.tensor([[10.0, 10.0, 90.0, 90.0], [0.0, 0.0, 40.0, 60.0]])},
        {"image": _image(seed=2), "boxes": torch.tensor([[10.0, 10.0, 90.0, 90.0]]),
         "point_coords": POINTS[:, :1], "point_labels": torch.ones(1, 1, dtype=torch.long)},
    ]
    outs = sam2(inputs)
    assert [tuple(o["mask_logits"].shape) for o in outs] == [(1, 50, 70), (2, 100, 140), (1, 100, 140)]
    for o in outs:
        assert o["masks"].dtype == torch.bool
        torch.testing.assert_close(o["masks"], o["mask_logits"] > 0)
        assert tuple(o["iou_pred"].shape) == (o["mask_logits"].shape[0],)


def test_box_is_two_corner_points_before_the_points_and_logits_resize_straight(sam2):
    image = _image()
    inp = {"image": image, "boxes": torch.tensor([[14.0, 10.0, 70.0, 50.0]]), "point_coords": POINTS[:, :1],
           "point_labels": torch.ones(1, 1, dtype=torch.long), "height": 37, "width": 53}
    out = sam2([inp], return_intermediates=True)[0]
    s = sam2.sam2
    feats = s.image_features(sam2.transform(image))
    # by hand: frame 64 x 64 from 100 x 140 -> x * 64 / 140, y * 64 / 100; labels [2, 3, 1] (+ SAM2's padding)
    coords = torch.tensor([[[[14 * 64 / 140, 10 * 64 / 100], [70 * 64 / 140, 50 * 64 / 100],
                             [30 * 64 / 140, 40 * 64 / 100]]]])
    low, iou, obj = s.predict(feats, coords, torch.tensor([[[2, 3, 1]]]), multimask_output=False)
    torch.testing.assert_close(out["intermediates"]["low_res_logits"], low[0])
    torch.testing.assert_close(out["mask_logits"], F.interpolate(low[0], (37, 53), mode="bilinear",
                                                                 align_corners=False)[:, 0])
    torch.testing.assert_close(out["iou_pred"], iou[0, :, 0])
    torch.testing.assert_close(out["intermediates"]["object_score_logits"], obj[0, :, 0])
    # the same box given as points labelled 0 / 1 is another prompt
    other, _, _ = s.predict(feats, coords, torch.tensor([[[0, 1, 1]]]), multimask_output=False)
    assert (other - low).abs().max() > 1e-4


def test_multimask_returns_the_mask_of_highest_predicted_iou(sam2_multimask):
    inp = {"image": _image(seed=3), "point_coords": torch.tensor([[[20.0, 20.0]], [[90.0, 70.0]], [[60.0, 30.0]]]),
           "point_labels": torch.ones(3, 1, dtype=torch.long)}
    out = sam2_multimask([inp], return_intermediates=True)[0]
    mid = out["intermediates"]
    assert tuple(mid["low_res_logits"].shape) == (3, 3, 16, 16) and tuple(mid["iou_predictions"].shape) == (3, 3)
    torch.testing.assert_close(mid["chosen"], mid["iou_predictions"].argmax(dim=1))
    torch.testing.assert_close(out["iou_pred"], mid["iou_predictions"].max(dim=1).values)
    picked = mid["low_res_logits"][torch.arange(3), mid["chosen"]]
    torch.testing.assert_close(out["mask_logits"], F.interpolate(picked[:, None], (100, 140), mode="bilinear",
                                                                 align_corners=False)[:, 0])


def test_outputs_depend_on_the_image_and_the_prompt(sam2):
    base = {"image": _image(), "point_coords": POINTS, "point_labels": torch.ones(1, 2, dtype=torch.long)}
    a = sam2([base])[0]["mask_logits"]
    b = sam2([dict(base, image=_image(seed=5))])[0]["mask_logits"]
    c = sam2([dict(base, point_coords=POINTS.flip(-1))])[0]["mask_logits"]
    assert (a - b).abs().max() > 1e-3 and (a - c).abs().max() > 1e-3


def test_bad_prompts_are_named(sam2):
    image = _image()
    with pytest.raises(ValueError, match=r"x.png: no prompt"):
        sam2([{"image": image, "file_name": "x.png"}])
    with pytest.raises(ValueError, match=r"'point_labels' must be 1 \(positive\), 0 \(negative\) or -1 \(padding\), "
                                         r"got \[2\]"):
        sam2([{"image": image, "point_coords": POINTS, "point_labels": torch.full((1, 2), 2)}])
    with pytest.raises(ValueError, match=r"same number of prompts P, got 1 and 2"):
        sam2([{"image": image, "point_coords": POINTS, "point_labels": torch.ones(1, 2),
               "boxes": torch.zeros(2, 4)}])
    with pytest.raises(NotImplementedError, match="inference only"):
        sam2.train()([{"image": image, "point_coords": POINTS, "point_labels": torch.ones(1, 2)}])
    sam2.eval()


def test_weights_from_the_config_give_the_same_model(sam2, tmp_path):
    path = str(tmp_path / "sam2.1_hiera_test.pt")
    save_sam2_original(sam2.sam2, path)
    torch.manual_seed(1)  # another random init, replaced by the file
    loaded = build_model(setup_cfg(TINY_SAM2, ["MODEL.SAM2.CHECKPOINT", path])).eval()
    inp = {"image": _image(), "point_coords": POINTS, "point_labels": torch.ones(1, 2, dtype=torch.long)}
    torch.testing.assert_close(loaded([inp])[0]["mask_logits"], sam2([inp])[0]["mask_logits"], rtol=0, atol=0)


def test_robustness_tool_runs_sam2_on_the_promptable_protocol(tmp_path, monkeypatch):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = tmp_path / "lqseg"
    make_synthetic_lqseg(str(root), 0, 2, [3], 64, 96, False, None)
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", str(root))
    out = tmp_path / "robustness"
    rc = load_script("tools/eval_robustness.py", "eval_robustness").main(
        ["--config-file", TINY_SAM2, "--output", str(out), "--datasets", "lqseg_synthetic_test_clear"])
    assert rc == 0
    row = json.loads((out / "robustness.json").read_text())["levels"]["lqseg_synthetic_test_clear"]
    assert row["images"] == 2 and all(0.0 <= row[k] <= 1.0 for k in ("IoU", "Dice", "BoundaryIoU", "PixelAcc"))
