"""SOD metrics (rass.evaluation.sod): hand-computed values, pysodmetrics called directly, the release's aggregation."""
import json
import math

import numpy as np
import py_sod_metrics as psm
import pytest
import torch

from rass.evaluation.sod import SODEvaluator, format_sod_table, sod_image_metrics, summarize_sod


def _f(p, r=1.0, b2=0.3):
    return (1 + b2) * p * r / (b2 * p + r)


def _logits_from_pred255(pred255):
    """Logits whose sigmoid × 255 is `pred255` (up to float32 rounding)."""
    p = np.clip(np.asarray(pred255, np.float64) / 255, 1e-6, 1 - 1e-6)
    return torch.from_numpy(np.log(p / (1 - p)).astype(np.float32))


def _gt(h=12, w=16):
    gt = np.zeros((h, w), np.float32)
    gt[3:8, 4:12] = 255
    return gt


def test_perfect_prediction_closed_form():
    gt = _gt()
    pred = np.where(gt > 0, 255 * 0.99995, 255 * 0.00005).astype(np.float32)  # min-max normalised to exactly 0 / 1
    m = sod_image_metrics(pred, gt)
    p_all = 40 / 192  # threshold 0 takes every pixel
    assert m["maxF"] == 1.0 and m["MAE"] == 0.0 and m["HCE"] == 0.0
    assert m["meanF"] == pytest.approx((255 + _f(p_all)) / 256, abs=1e-12)
    assert m["S"] == pytest.approx(1.0, abs=1e-6) and m["wF"] == pytest.approx(1.0, abs=1e-6)
    # pysodmetrics (and the release) divide the E-measure's sum by N - 1: a perfect map scores N / (N - 1)
    assert m["E_curve"][0] == pytest.approx(192 / 191, abs=1e-12) and m["E_curve"][-1] < 0.5
    assert m["meanE"] == pytest.approx((255 * 192 / 191 + m["E_curve"][-1]) / 256, abs=1e-12)


def test_all_zero_prediction_closed_form():
    gt = _gt()
    p = 1.0 / (1.0 + math.exp(10.0))  # sigmoid(-10): a constant map is not min-max normalised
    pred = np.full(gt.shape, np.float32(p) * np.float32(255), np.float32)
    m = sod_image_metrics(pred, gt)
    n, fg = gt.size, 40
    assert m["MAE"] == pytest.approx((fg * (1 - p) + (n - fg) * p) / n, rel=1e-6)
    # every threshold > 0 selects nothing (F = 0); threshold 0 selects every pixel
    assert m["maxF"] == pytest.approx(_f(fg / n)) and m["meanF"] == pytest.approx(_f(fg / n) / 256)
    assert m["HCE"] > 0  # the whole object is to be drawn


def test_mae_by_hand_and_min_max_normalisation():
    gt = np.array([[255, 0], [0, 0]], np.float32)
    pred = np.array([[102, 51], [51, 0]], np.float32)  # min-max: [[1, .5], [.5, 0]]
    assert sod_image_metrics(pred, gt, compute_hce=False)["MAE"] == pytest.approx(0.25)
    pred = np.array([[204, 51], [0, 0]], np.float32)  # /255 = .8,.2 -> normalised 1, .25
    assert sod_image_metrics(pred, gt, compute_hce=False)["MAE"] == pytest.approx(0.25 / 4)


def test_gt_threshold_is_above_128():
    pred = np.array([[255, 0, 0, 0]] * 2, np.float32)
    one = sod_image_metrics(pred, np.array([[129, 128, 0, 0]] * 2, np.float32), compute_hce=False)
    assert one["MAE"] == 0.0 and one["maxF"] == 1.0  # 128 is background


def test_two_maxf_definitions_on_crafted_pair():
    gt_a, pred_a = np.array([[255, 0, 0, 0]] * 2, np.float32), np.array([[255, 100, 100, 0]] * 2, np.float32)
    gt_b, pred_b = np.array([[255, 255, 0, 0]] * 2, np.float32), np.array([[100, 100, 255, 0]] * 2, np.float32)
    recs = [sod_image_metrics(pred_a, gt_a, False), sod_image_metrics(pred_b, gt_b, False)]
    assert recs[0]["maxF"] == 1.0 and recs[1]["maxF"] == pytest.approx(_f(2 / 3))
    res = summarize_sod(recs)
    # per-image best thresholds differ (A: > 100, B: <= 100), so the two definitions differ
    assert res["maxF_mean_of_max"] == pytest.approx((1 + _f(2 / 3)) / 2)  # 0.86111
    assert res["maxF"] == pytest.approx((_f(1 / 3) + _f(2 / 3)) / 2)  # 0.55808
    assert res["maxF_mean_of_max"] - res["maxF"] > 0.3


def _random_case(rng, h, w):
    gt = np.zeros((h, w), np.float32)
    y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
    gt[y: y + h // 2, x: x + w // 3] = 255
    logits = torch.from_numpy((rng.normal(0, 2, (h, w)) + (gt / 255 * 4 - 2)).astype(np.float32))
    return logits, gt


@pytest.mark.filterwarnings("ignore:This class will be removed")
def test_aggregation_reproduces_release_and_pysodmetrics():
    rng = np.random.default_rng(0)
    cases = [_random_case(rng, *rng.integers(10, 40, 2)) for _ in range(4)]
    ev = SODEvaluator("rnd", distributed=False)
    ev.reset()
    for i, (logits, gt) in enumerate(cases):
        ev.process([{"image_id": f"im{i}", "gt_mask": torch.from_numpy(gt / 255)}], [{"mask_logits": logits[None]}])
    res = ev.evaluate()["sod"]
    # the release: fresh objects per image (batch 1), Averager over images; the curve averaged (Averager2)
    per = {k: [] for k in ("maxf", "wfm", "em", "sm", "mae")}
    curves = []
    accum = [psm.Fmeasure(beta=0.3), psm.WeightedFmeasure(beta=0.3), psm.Smeasure(), psm.Emeasure(), psm.MAE()]
    for logits, gt in cases:
        pred = torch.sigmoid(logits).numpy() * 255
        fm, wfm, sm, em, mae = psm.Fmeasure(beta=0.3), psm.WeightedFmeasure(beta=0.3), psm.Smeasure(), psm.Emeasure(), psm.MAE()
        for m in (fm, wfm, sm, em, mae, *accum):
            m.step(pred=pred, gt=gt)
        per["maxf"].append(fm.get_results()["fm"]["curve"].max())
        curves.append(fm.get_results()["fm"]["curve"])
        per["wfm"].append(wfm.get_results()["wfm"])
        per["em"].append(em.get_results()["em"]["curve"].mean())
        per["sm"].append(sm.get_results()["sm"])
        per["mae"].append(mae.get_results()["mae"])
    assert res["maxF_mean_of_max"] == pytest.approx(np.mean(per["maxf"]), abs=1e-12)
    assert res["maxF"] == pytest.approx(np.mean(curves, axis=0).max(), abs=1e-12)
    for ours, key in (("wF", "wfm"), ("meanE", "em"), ("S", "sm"), ("MAE", "mae")):
        assert res[ours] == pytest.approx(np.mean(per[key]), abs=1e-12), ours
    # one pysodmetrics object over the whole set (the standard tools) gives the same numbers
    fm = accum[0].get_results()["fm"]
    assert res["maxF"] == pytest.approx(fm["curve"].max(), abs=1e-12)
    assert res["meanF"] == pytest.approx(fm["curve"].mean(), abs=1e-12)
    assert res["adpF"] == pytest.approx(fm["adp"], abs=1e-12)
    assert res["wF"] == pytest.approx(accum[1].get_results()["wfm"], abs=1e-12)
    assert res["S"] == pytest.approx(accum[2].get_results()["sm"], abs=1e-12)
    assert res["meanE"] == pytest.approx(accum[3].get_results()["em"]["curve"].mean(), abs=1e-12)
    assert res["maxE"] == pytest.approx(accum[3].get_results()["em"]["curve"].max(), abs=1e-12)
    assert res["MAE"] == pytest.approx(accum[4].get_results()["mae"], abs=1e-12)
    assert 0.3 < res["S"] < 0.95 and res["num_images"] == 4


def test_hce_uses_dis_binarisation():
    gt = np.zeros((40, 40), np.float32)
    gt[10:30, 8:32] = 255
    gt[5:35, 19:21] = 255  # a thin bar
    low = gt * 0.4  # object at 102: below DIS's 128 threshold, but min-max normalisation lifts it to 1
    ours = sod_image_metrics(low, gt)["HCE"]
    default = psm.HumanCorrectionEffortMeasure()
    default.step(low, gt)  # pysodmetrics' default: normalised map > 0.5
    assert default.get_results()["hce"] == 0.0 and ours > 0
    dis = psm.HumanCorrectionEffortMeasure()
    dis.step(np.zeros_like(gt, dtype=np.float64), gt > 128, normalize=False)  # nothing predicted
    assert ours == dis.get_results()["hce"]
    half = gt.copy()
    half[:, 20:] = 0
    assert 0 < sod_image_metrics(half, gt)["HCE"] < ours  # half the object: less to correct


def test_evaluator_json_table_and_errors(tmp_path):
    gt = _gt()
    ev = SODEvaluator("toy", distributed=False, output_dir=str(tmp_path), compute_hce=False)
    ev.reset()
    ev.process([{"image_id": "b", "gt_mask": torch.from_numpy(gt / 255), "mask_note": "not_binary"}],
               [{"mask_logits": _logits_from_pred255(np.where(gt > 0, 200.0, 30.0))}])  # [H, W] accepted
    ev.process([{"image_id": "a", "gt_mask": torch.from_numpy(gt > 0)}], [{"mask_logits": torch.zeros(1, 12, 16)}])
    res = ev.evaluate()["sod"]
    data = json.load(open(tmp_path / "sod_toy.json"))
    assert [r["image_id"] for r in data["images"]] == ["a", "b"] and data["images"][0]["HCE"] is None
    assert data["images"][1]["maxF"] == 1.0 and data["summary"]["num_not_binary_gt"] == 1 and len(data["curves"]["F"]) == 256
    assert data["summary"]["maxF_mean_of_max"] == pytest.approx(res["maxF_mean_of_max"])
    assert math.isnan(res["HCE"])
    table = format_sod_table({"toy": {"sod": res}})
    assert "maxF_mean_of_max" in table and "| toy" in table and f"{res['S']:.4f}" in table
    with pytest.raises(ValueError, match=r"'c'.*mask_logits \(1, 5, 5\) and GT mask \(12, 16\) differ"):
        ev.process([{"image_id": "c", "gt_mask": torch.from_numpy(gt / 255)}], [{"mask_logits": torch.zeros(1, 5, 5)}])
    with pytest.raises(KeyError, match="no 'mask_logits'"):
        ev.process([{"image_id": "c", "gt_mask": torch.from_numpy(gt / 255)}], [{"masks": torch.zeros(12, 16)}])
    ev.process([{"image_id": "a", "gt_mask": torch.from_numpy(gt / 255)}], [{"mask_logits": torch.zeros(12, 16)}])
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        ev.evaluate()
