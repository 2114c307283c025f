"""PromptableMaskEvaluator and mask_metrics against values computed by hand."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rass.evaluation.promptable import PromptableMaskEvaluator, format_promptable_table, mask_metrics


def _square(h, w, y0, x0, side_y, side_x=None):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + side_y, x0 : x0 + (side_x or side_y)] = True
    return m


def test_shifted_square_iou_dice_pixel_accuracy():
    g = _square(40, 40, 10, 10, 10)
    p = _square(40, 40, 10, 12, 10)  # shifted right by 2 px
    m = mask_metrics(p, g)
    assert m["IoU"] == pytest.approx(80 / 120)
    assert m["Dice"] == pytest.approx(160 / 200)
    assert m["PixelAcc"] == pytest.approx((1600 - 40) / 1600)


def test_boundary_iou_by_hand():
    # 10×10 image: d = max(1, round(0.02·14.14)) = 1 → band = mask minus its 3×3 erosion
    g = _square(10, 10, 2, 2, 5)  # rows/cols 2..6: band = 5×5 − 3×3 = 16 px
    p = _square(10, 10, 2, 3, 5)  # cols 3..7
    # common band pixels: rows 2 and 6, cols 3..6 → 8; union 16 + 16 − 8 = 24
    assert mask_metrics(p, g)["BoundaryIoU"] == pytest.approx(8 / 24)
    # at the image border the outside counts as background: the full image's band is the 1-px ring (36 px);
    # left half (cols 0..4): band = col 0 (10) + col 4 (10) + rows 0, 9 at cols 1..3 (6) = 26;
    # common: col 0 (10) + rows 0, 9 at cols 1..4 (8) = 18; union 36 + 26 − 18 = 44
    full, left = np.ones((10, 10), bool), _square(10, 10, 0, 0, 10, 5)
    assert mask_metrics(left, full)["BoundaryIoU"] == pytest.approx(18 / 44)
    assert mask_metrics(full, full)["BoundaryIoU"] == 1.0


def test_band_width_grows_with_the_diagonal():
    # 100×100: d = round(0.02·141.4) = 3 → the band of a 20×20 square is 20² − 14² = 204 px;
    # the same square shifted by 1 px: common band = by hand via the sets below
    g = _square(100, 100, 40, 40, 20)
    p = _square(100, 100, 40, 41, 20)

    def band(m, d):
        inner = np.zeros_like(m)
        ys, xs = np.nonzero(m)
        inner[ys.min() + d : ys.max() + 1 - d, xs.min() + d : xs.max() + 1 - d] = True
        return m & ~inner

    bg, bp = band(g, 3), band(p, 3)
    assert bg.sum() == 204
    assert mask_metrics(p, g)["BoundaryIoU"] == pytest.approx((bg & bp).sum() / (bg | bp).sum())


def test_empty_masks_have_defined_values():
    e, s = np.zeros((8, 8), bool), _square(8, 8, 2, 2, 2)
    assert mask_metrics(e, e) == {"IoU": 1.0, "Dice": 1.0, "BoundaryIoU": 1.0, "PixelAcc": 1.0}
    m = mask_metrics(s, e)  # empty GT, non-empty prediction
    assert m["IoU"] == m["Dice"] == m["BoundaryIoU"] == 0.0 and m["PixelAcc"] == pytest.approx(60 / 64)
    m = mask_metrics(e, s)  # empty prediction
    assert m["IoU"] == m["Dice"] == m["BoundaryIoU"] == 0.0 and m["PixelAcc"] == pytest.approx(60 / 64)
    assert not any(np.isnan(v) for v in m.values())


def _inp(image_id, gt, note=""):
    return {"image_id": image_id, "gt_mask": torch.from_numpy(gt), "prompt_note": note, "mask_note": ""}


def test_evaluator_averages_over_images_and_writes_json(tmp_path):
    g1, p1 = _square(40, 40, 10, 10, 10), _square(40, 40, 10, 12, 10)
    g2 = np.zeros((20, 30), bool)
    ev = PromptableMaskEvaluator("toy", distributed=False, output_dir=str(tmp_path))
    ev.reset()
    ev.process([_inp("b", g1), _inp("a", g2, "empty_mask")],
               [{"masks": torch.from_numpy(p1)[None]}, {"masks": torch.zeros(1, 20, 30, dtype=torch.bool)}])
    res = ev.evaluate()["promptable"]
    assert res["IoU"] == pytest.approx((80 / 120 + 1.0) / 2)
    assert res["Dice"] == pytest.approx((0.8 + 1.0) / 2)
    assert res["num_images"] == 2 and res["empty_gt"] == 1 and res["empty_pred"] == 1 and res["prompt_fallbacks"] == 1
    data = json.load(open(os.path.join(tmp_path, "promptable_per_image_toy.json")))
    assert [r["image_id"] for r in data["images"]] == ["a", "b"]
    assert data["images"][1]["IoU"] == pytest.approx(80 / 120)
    table = format_promptable_table({"toy": {"promptable": res}})
    assert "toy" in table and "0.8333" in table and len(table.splitlines()) == 3


def test_gathered_result_does_not_depend_on_the_process_count(monkeypatch):
    rng = np.random.default_rng(0)
    items = [(f"im{i}", rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.5) for i in range(6)]

    def run(parts):
        evs = [PromptableMaskEvaluator("toy", distributed=True) for _ in parts]
        for ev, part in zip(evs, parts):
            ev.reset()
            for image_id, g, p in part:
                ev.process([_inp(image_id, g)], [{"masks": torch.from_numpy(p)}])
        import detectron2.utils.comm as comm

        monkeypatch.setattr(comm, "gather", lambda data, dst=0: [ev._records for ev in evs])
        monkeypatch.setattr(comm, "is_main_process", lambda: True)
        monkeypatch.setattr(comm, "synchronize", lambda: None)
        return evs[0].evaluate()["promptable"]

    one = run([items])
    two = run([items[::2], items[1::2]])  # two processes, interleaved as an inference sampler would not even do
    assert one == two
    with pytest.raises(ValueError, match="more than once"):
        run([items, items[:1]])


def test_bad_predictions_are_named():
    ev = PromptableMaskEvaluator("toy", distributed=False)
    g = _square(10, 10, 2, 2, 3)
    with pytest.raises(ValueError, match="'x'.*differ in size"):
        ev.process([_inp("x", g)], [{"masks": torch.zeros(1, 12, 10, dtype=torch.bool)}])
    with pytest.raises(ValueError, match="must be bool"):
        ev.process([_inp("x", g)], [{"masks": torch.zeros(1, 10, 10)}])
    with pytest.raises(ValueError, match="one mask per image"):
        ev.process([_inp("x", g)], [{"masks": torch.zeros(2, 10, 10, dtype=torch.bool)}])
    with pytest.raises(KeyError, match="gt_mask"):
        ev.process([{"image_id": "x"}], [{"masks": torch.zeros(10, 10, dtype=torch.bool)}])


# ----------------------------------------------------------------- pictures (TEST.NUM_VIS)
def _vis_input(image_id, image, gt, point, box=None):
    inp = _inp(image_id, gt)
    inp.update({"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "point_coords": torch.tensor([[point, [0.0, 0.0]]], dtype=torch.float32),
                "point_labels": torch.tensor([[1, -1]])})  # -1: padding, not drawn
    if box is not None:
        inp["boxes"] = torch.tensor([box], dtype=torch.float32)
    return inp


def test_evaluator_draws_image_gt_and_every_models_mask_with_its_iou(tmp_path):
    from rass.evaluation.visualize import MIN_PANEL, draw, enlarge, promptable_grid, titled

    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    gt, pred, other = _square(32, 32, 8, 8, 12), _square(32, 32, 8, 10, 12), _square(32, 32, 0, 0, 6)
    calls = []

    def sam(batch):  # a second model drawn next to the evaluated one
        calls.append(batch[0]["image_id"])
        return [{"masks": torch.from_numpy(other)[None]}]

    ev = PromptableMaskEvaluator("toy", distributed=False, output_dir=str(tmp_path), num_vis=2, model_name="GleSAM",
                                 compare={"SAM": sam})
    ev.reset()
    inputs = [_vis_input(f"img/{i}", image, gt, [14.0, 13.0], [8, 8, 19, 19]) for i in range(3)]
    ev.process(inputs, [{"masks": torch.from_numpy(pred)[None]}] * 3)
    assert calls == ["img/0", "img/1"]  # the other model runs for the drawn images only
    assert [os.path.relpath(p, tmp_path) for p in ev.vis_paths] == ["vis/img_0.png", "vis/img_1.png"]
    grid = np.asarray(Image.open(ev.vis_paths[0]).convert("RGB"))
    prompt = {"points": [[14.0, 13.0]], "labels": [1], "box": [8.0, 8.0, 19.0, 19.0]}
    np.testing.assert_array_equal(grid, promptable_grid(image, gt, {"SAM": other, "GleSAM": pred}, prompt,
                                                        title="img/0"))
    k = MIN_PANEL // 32
    side = 32 * k
    assert grid.shape[1] == 4 * side + 3 * 4  # image | GT | SAM | GleSAM, 4-px gaps
    # the GleSAM panel: its mask (enlarged, nearest) under a title naming it and its IoU with the GT
    panel = grid[:, 3 * (side + 4):]
    big_prompt = {"points": [[(14 + 0.5) * k - 0.5, (13 + 0.5) * k - 0.5]], "labels": [1],
                  "box": [(v + 0.5) * k - 0.5 for v in (8, 8, 19, 19)]}
    expected = titled(draw(enlarge(image, k), enlarge(pred, k), big_prompt, 0.5), "GleSAM",
                      f"IoU with GT {120 / 168:.2f}")  # 12x12 squares 2 px apart: 120 / 168
    np.testing.assert_array_equal(panel, expected)
    assert not np.array_equal(titled(panel[-side:], "GleSAM", "IoU with GT 0.10"), expected)  # the IoU is written


def test_no_pictures_by_default_and_use_model_adds_plain_sam_for_glesam(tmp_path):
    from detectron2.modeling import build_model

    from rass.config import setup_cfg

    from conftest import REPO

    ev = PromptableMaskEvaluator("toy", distributed=False, output_dir=str(tmp_path))
    assert ev.num_vis == 0
    ev.process([_inp("a", _square(8, 8, 2, 2, 3))], [{"masks": torch.zeros(8, 8, dtype=torch.bool)}])
    assert ev.vis_paths == [] and not os.path.exists(tmp_path / "vis")
    model = build_model(setup_cfg(os.path.join(REPO, "configs/lqseg/tiny_glesam.yaml"))).eval()
    ev = PromptableMaskEvaluator("toy", distributed=False, output_dir=str(tmp_path), num_vis=1).use_model(model)
    assert ev.model_name == "GleSAM" and list(ev.compare) == ["SAM"]
    assert ev.compare["SAM"].enhancer is None and ev.compare["SAM"].sam is model.sam  # the same SAM, no enhancement
    plain = PromptableMaskEvaluator("toy", distributed=False, num_vis=1).use_model(ev.compare["SAM"])
    assert plain.model_name == "SAM" and plain.compare == {}
    with pytest.raises(KeyError, match="'a' has no 'image' to draw"):
        ev.process([_inp("a", _square(8, 8, 2, 2, 3))], [{"masks": torch.zeros(8, 8, dtype=torch.bool)}])
