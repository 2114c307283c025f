"""The prompt-quality protocol (`rass.data.prompt_quality`): noisy boxes have HQ-SAM's box-noise distribution
(moments over many draws), prompts depend only on (seed, image, object, protocol, draw) — the same in another
process —, the documented rules for degenerate boxes / points / scales, the stability score on hand-made masks,
and the IoU / boundary IoU as HQ-SAM computes them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from rass.config import setup_cfg
from rass.data.prompt_quality import (
    ProtocolSpec, noisy_box, normalize_box, object_prompts, parse_protocol, protocol_rng, sample_points,
)
from rass.evaluation.promptable import mask_metrics, mean_pairwise_iou
from rass.utils.errors import UserValueError
from tests.conftest import REPO


def _mask(h=300, w=400, box=(100, 80, 200, 140)):
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3] + 1, box[0]:box[2] + 1] = 255
    return m


def test_noisy_boxes_follow_hq_sams_box_noise_distribution():
    """cx += U(-1,1)·w/2·s, w += U(-1,1)·w·s (same for y, h), independent: mean, std, range, correlation."""
    s, n = 0.2, 4000
    box = np.array([300.0, 300.0, 400.0, 360.0])  # w 100, h 60, far from the image border (no clamping)
    draws = object_prompts(_mask(1000, 1000, (300, 300, 400, 360)), (1000, 1000), "box_noise_0.2", "img", draws=n)
    b = draws.boxes.astype(np.float64)
    assert b.shape == (n, 4)
    c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 100.0, 60.0])
    half_range = np.array([100 / 2 * s, 60 / 2 * s, 100 * s, 60 * s])  # U(-1, 1) times these
    std = half_range / np.sqrt(3.0)
    assert np.all(np.abs(c.mean(0) - centre) < 4 * std / np.sqrt(n))
    np.testing.assert_allclose(c.std(0), std, rtol=0.05)
    assert np.all(np.abs(c - centre) <= half_range + 1e-3)
    assert np.all(np.abs(np.corrcoef(c.T) - np.eye(4)) < 0.06)
    u = (c - centre) / half_range  # uniform on [-1, 1]: 4th moment 1/5
    np.testing.assert_allclose((u ** 4).mean(0), 0.2, atol=0.015)


def test_prompts_depend_only_on_seed_image_object_protocol_and_draw():
    m = _mask()
    a = object_prompts(m, (300, 400), "box_points_3", "img7", object_index=2, seed=5, draws=3)
    assert np.array_equal(a.boxes, object_prompts(m, (300, 400), "box_points_3", "img7", 2, 5, 3).boxes)
    object_prompts(m, (300, 400), "points_5", "img7", 2, 5, 3)  # other protocols drawn in between change nothing
    again = object_prompts(m, (300, 400), "box_points_3", "img7", 2, 5, 3)
    assert np.array_equal(a.point_coords, again.point_coords) and np.array_equal(a.boxes, again.boxes)
    for other in [("img8", 2, 5), ("img7", 1, 5), ("img7", 2, 6)]:
        b = object_prompts(m, (300, 400), "box_points_3", other[0], other[1], other[2], 3)
        assert not np.array_equal(a.point_coords, b.point_coords)
    # the GT box, three different draws of points
    assert len({tuple(x.ravel()) for x in a.point_coords}) == 3 and len({tuple(x) for x in a.boxes}) == 1
    # the exact box has one draw whatever K
    assert object_prompts(m, (300, 400), "gt_box", "img7", draws=5).boxes.tolist() == [[100, 80, 200, 140]]
    # another process (another Python hash seed) draws the same prompts
    code = ("import json, numpy as np; from rass.data.prompt_quality import object_prompts; m = np.zeros((300, 400), "
            "np.uint8); m[80:141, 100:201] = 255; p = object_prompts(m, (300, 400), 'box_points_3', 'img7', 2, 5, 3); "
            "print(json.dumps([p.boxes.tolist(), p.point_coords.tolist()]))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONHASHSEED="123"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == [a.boxes.tolist(), a.point_coords.tolist()]


def test_points_are_uniform_object_pixels_without_repeats():
    m = _mask()
    p = object_prompts(m, (300, 400), "points_5", "img", draws=200)
    assert p.point_coords.shape == (200, 5, 2) and p.point_labels.tolist() == [[1] * 5] * 200 and p.boxes is None
    xs, ys = p.point_coords[..., 0].astype(int), p.point_coords[..., 1].astype(int)
    assert np.all(m[ys, xs] == 255)
    assert all(len({(x, y) for x, y in draw}) == 5 for draw in p.point_coords.tolist())
    # uniform over the 101 x 61 object: the mean point is its centre
    np.testing.assert_allclose(p.point_coords.reshape(-1, 2).mean(0), [150, 110], atol=2.5)
    # prompts follow the image frame: a 150 x 200 image gets the mask resized (bilinear), points inside it
    small = object_prompts(m, (150, 200), "points_3", "img")
    assert np.all(small.point_coords[..., 0] <= 101) and np.all(small.point_coords[..., 1] >= 39)


def test_documented_rules_for_degenerate_input():
    hw = (100, 200)
    with pytest.raises(UserValueError, match=r"noise scale -0.1 .*expected numbers >= 0"):
        ProtocolSpec(box_noise_scales=(0.1, -0.1))
    with pytest.raises(UserValueError, match="Box noise scale -1"):
        noisy_box(np.array([0, 0, 10, 10]), -1, protocol_rng(0, "a", 0, "x"), hw)
    with pytest.raises(UserValueError, match=r"0 points requested; expected NUM_POINTS and BOX_POINTS >= 1"):
        ProtocolSpec(num_points=(0, 3))
    with pytest.raises(UserValueError, match="0 points requested"):
        sample_points(_mask(), 0, protocol_rng(0, "a", 0, "x"))
    with pytest.raises(UserValueError, match=r"unknown protocol\(s\) \['box_noise_0.3'\]"):
        ProtocolSpec(protocols=("gt_box", "box_noise_0.3"))
    assert parse_protocol("box_noise_0.25") == ("box", 0.25, 0) and parse_protocol("box_points_3")[2] == 3
    # crossed corners are sorted, outside parts clamped, a box left without area is 1 pixel at the clamped corner
    assert normalize_box(np.array([50, 60, 10, 20]), hw).tolist() == [10, 20, 50, 60]
    assert normalize_box(np.array([-20, -5, 250, 130]), hw).tolist() == [0, 0, 200, 100]
    assert normalize_box(np.array([230, 120, 260, 150]), hw).tolist() == [199, 99, 200, 100]
    # a large scale (s > 1) can cross the corners: every draw is still a valid box inside the image
    big = object_prompts(_mask(), (300, 400), "box_noise_3", "img", draws=300).boxes
    assert np.all(big[:, 2] - big[:, 0] >= 1) and np.all(big[:, 3] - big[:, 1] >= 1)
    assert np.all(big[:, [0, 1]] >= 0) and np.all(big[:, 2] <= 400) and np.all(big[:, 3] <= 300)
    # fewer object pixels than points: all of them, then the last repeated; an empty mask: image box and centre
    tiny = np.zeros((300, 400), np.uint8)
    tiny[5, 7] = tiny[5, 9] = 255
    few = object_prompts(tiny, (300, 400), "points_3", "img")
    assert few.point_coords[0].tolist() == [[7, 5], [9, 5], [9, 5]] and few.note == "few_pixels"
    empty = object_prompts(np.zeros((300, 400), np.uint8), (300, 400), "box_points_3", "img", draws=2)
    assert empty.note == "empty_mask" and empty.boxes[0].tolist() == [0, 0, 399, 299]
    assert empty.point_coords[0].tolist() == [[200, 150]] * 3


def test_stability_is_the_mean_pairwise_iou():
    a = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 px
    b = np.zeros((10, 10), bool)
    b[0:4, 0:10] = True  # 40 px, contains a: IoU(a, b) = 0.5
    c = np.zeros((10, 10), bool)
    c[6:10, :] = True  # disjoint from both
    assert mean_pairwise_iou([a, a, a]) == 1.0
    assert mean_pairwise_iou([a, c]) == 0.0
    assert mean_pairwise_iou([a, b]) == pytest.approx(0.5)
    assert mean_pairwise_iou([a, b, c]) == pytest.approx((0.5 + 0 + 0) / 3)
    assert mean_pairwise_iou(np.stack([a, b, b])) == pytest.approx((0.5 + 0.5 + 1) / 3)
    assert mean_pairwise_iou([a]) == 1.0 and mean_pairwise_iou([c & a, c & a]) == 1.0  # two empty masks agree


def _hq_sam_boundary_iou(gt, dt, ratio=0.02):
    """HQ-SAM's `misc.boundary_iou` restated (1-px zero border, 3x3 erosion iterated round(0.02·diag) times)."""
    def band(m):
        h, w = m.shape
        d = max(1, int(round(ratio * np.sqrt(h ** 2 + w ** 2))))
        padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:h + 1, 1:w + 1]
        return m - eroded
    g, p = band(gt.astype(np.uint8)), band(dt.astype(np.uint8))
    return ((g * p) > 0).sum() / ((g + p) > 0).sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iou_and_boundary_iou_are_hq_sams(seed):
    rng = np.random.default_rng(seed)
    gt = np.zeros((97, 131), np.uint8)
    gt[10:70, 20:110] = 200  # a GT > 128
    gt[rng.random(gt.shape) < 0.02] = 0
    logits = rng.normal(size=gt.shape) + (gt > 128) * 1.5
    pred, g = logits > 0, gt > 128  # HQ-SAM: logit > 0, GT > 128
    m = mask_metrics(pred, g)
    assert m["IoU"] == pytest.approx((pred & g).sum() / (pred | g).sum())
    assert m["BoundaryIoU"] == pytest.approx(_hq_sam_boundary_iou(g, pred))


def test_config_keys_give_the_protocol_list():
    spec = ProtocolSpec.from_config(setup_cfg(None))
    assert spec.names() == ["gt_box", "box_noise_0.1", "box_noise_0.2", "box_noise_0.4", "points_1", "points_3",
                            "points_5", "box_points_3"]
    cfg = setup_cfg(None, ["TEST.PROMPT_QUALITY.PROTOCOLS", "['points_1', 'gt_box']"])
    assert ProtocolSpec.from_config(cfg).names() == ["points_1", "gt_box"]
