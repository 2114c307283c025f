"""Prompts drawn from a GT mask (rass.data.prompts): release rules, seeding, fallbacks, box noise."""
import numpy as np
import pytest

from rass.data.prompts import box_noise, mask_to_box, prompt_rng, resize_mask, sample_prompts


def _square_mask(h=40, w=50, y0=10, y1=30, x0=5, x1=25):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


def test_points_are_distinct_interior_pixels_and_seeded_per_image():
    m = _square_mask()
    p = sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(0, "img_a"))
    assert p.point_coords.shape == (3, 2) and p.point_coords.dtype == np.float32
    assert p.point_labels.tolist() == [1, 1, 1] and p.box is None and p.note == ""
    xs, ys = p.point_coords[:, 0].astype(int), p.point_coords[:, 1].astype(int)
    assert (m[ys, xs] == 255).all() and len({(x, y) for x, y in zip(xs, ys)}) == 3
    # same (seed, image id) → same points, whatever was drawn before; other id or seed → others
    sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(0, "img_b"))
    again = sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(0, "img_a"))
    assert np.array_equal(again.point_coords, p.point_coords)
    assert not np.array_equal(sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(0, "img_b")).point_coords, p.point_coords)
    assert not np.array_equal(sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(1, "img_a")).point_coords, p.point_coords)


def test_prompt_seed_is_stable_across_processes():
    """The seed is SHA-256 of (tag, seed, image id), not Python's per-process salted hash()."""
    import hashlib

    expected = int.from_bytes(hashlib.sha256(repr(("prompts", 0, "img_a")).encode()).digest()[:8], "little") >> 2
    assert prompt_rng(0, "img_a").integers(0, 1 << 30) == np.random.default_rng(expected).integers(0, 1 << 30)


def test_points_in_the_image_frame_use_the_bilinear_resized_mask():
    m = _square_mask(100, 80, 20, 60, 10, 50)
    p = sample_prompts(m, (512, 512), "points", 3, rng=prompt_rng(0, "x"))
    r = resize_mask(m, (512, 512))
    assert r.shape == (512, 512)
    xs, ys = p.point_coords[:, 0].astype(int), p.point_coords[:, 1].astype(int)
    assert (r[ys, xs] == 255).all()
    # the object's box in the 512 frame: x in [10*6.4, 50*6.4), y in [20*5.12, 60*5.12)
    assert (xs >= 60).all() and (xs < 322).all() and (ys >= 100).all() and (ys < 310).all()


def test_fewer_candidates_repeat_the_last_and_none_gives_the_centre():
    m = np.zeros((10, 12), np.uint8)
    m[2, 3] = m[5, 7] = 255
    p = sample_prompts(m, m.shape, "points", 3, rng=prompt_rng(0, "x"))
    assert p.point_coords.tolist() == [[3, 2], [7, 5], [7, 5]]  # raster order, last repeated (release)
    # a non-empty mask without any fully-inside pixel after resizing (one pixel, bilinear ×2 → 191):
    # the release's centre point
    dot = np.zeros((10, 10), np.uint8)
    dot[5, 5] = 255
    q = sample_prompts(dot, (20, 20), "points", 3, rng=prompt_rng(0, "x"))
    assert q.note == "no_interior_pixel" and q.point_coords.tolist() == [[10, 10]] * 3


def test_empty_mask_rule():
    m = np.zeros((30, 40), np.uint8)
    p = sample_prompts(m, (30, 40), "point_box", 3, rng=prompt_rng(0, "x"))
    assert p.note == "empty_mask"
    assert p.point_coords.tolist() == [[20, 15]] * 3 and p.point_labels.tolist() == [1, 1, 1]
    assert p.box.tolist() == [0, 0, 39, 29]
    b = sample_prompts(m, (30, 40), "box", rng=prompt_rng(0, "x"))
    assert b.point_coords is None and b.box.tolist() == [0, 0, 39, 29]


def test_box_is_the_xyxy_of_the_mask_pixels_above_threshold():
    m = _square_mask()
    assert mask_to_box(m).tolist() == [5, 10, 24, 29]  # max inclusive, as misc.masks_to_boxes
    soft = np.zeros((5, 5), np.uint8)
    soft[1, 1], soft[3, 3] = 128, 129
    assert mask_to_box(soft).tolist() == [3, 3, 3, 3]  # > 128 only
    p = sample_prompts(m, m.shape, "box", rng=prompt_rng(0, "x"))
    assert p.box.tolist() == [5, 10, 24, 29] and p.point_coords is None
    pb = sample_prompts(m, (80, 100), "point_box", rng=prompt_rng(0, "x"))  # image frame twice the mask
    assert pb.box.tolist() == [10, 20, 49, 59] and pb.point_coords.shape == (3, 2)


class _FixedRng:
    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float64)

    def random(self, n):
        assert n == 4
        return self.values


def test_box_noise_closed_form():
    # box (10, 20, 50, 40): cx 30, cy 30, w 40, h 20; U = (1, 0, 0.5, 1) → 2U-1 = (1, -1, 0, 1)
    # cx' = 30 + 1·20·0.05 = 31, cy' = 30 − 10·0.05 = 29.5, w' = 40, h' = 20 + 20·0.05 = 21
    out = box_noise(np.array([10, 20, 50, 40], np.float32), 0.05, _FixedRng([1.0, 0.0, 0.5, 1.0]), (100, 100))
    assert np.allclose(out, [11, 19, 51, 40], atol=1e-5)
    # clamped to the image
    out = box_noise(np.array([0, 0, 99, 99], np.float32), 0.05, _FixedRng([0.0, 0.0, 1.0, 1.0]), (100, 100))
    assert out.min() >= 0 and out[2] <= 100 and out[3] <= 100
    # scale 0: unchanged; random noise stays within the release's bounds
    assert box_noise(np.array([1, 2, 3, 4]), 0.0, None, (10, 10)).tolist() == [1, 2, 3, 4]
    rng = prompt_rng(0, "b")
    for _ in range(50):
        b = box_noise(np.array([10, 20, 50, 40], np.float32), 0.05, rng, (100, 100))
        cx, w = (b[0] + b[2]) / 2, b[2] - b[0]
        assert abs(cx - 30) <= 1.0 + 1e-5 and abs(w - 40) <= 2.0 + 1e-5


def test_bad_arguments():
    m = _square_mask()
    with pytest.raises(ValueError, match="protocol"):
        sample_prompts(m, m.shape, "scribble")
    with pytest.raises(ValueError, match="uint8"):
        sample_prompts(m.astype(bool), m.shape)
    with pytest.raises(ValueError, match="num_points"):
        sample_prompts(m, m.shape, num_points=0)


def test_user_prompts_outside_the_image_are_refused_by_name():
    from rass.data.prompts import check_prompts

    check_prompts((40, 60), np.array([[0, 0], [60, 40]]), np.array([1, 0]), np.array([[0, 0, 60, 40]]))
    with pytest.raises(ValueError, match=r"points.json: point 1 \(61, 5\) is outside the image of 40x60 \(HxW\)"):
        check_prompts((40, 60), np.array([[1, 1], [61, 5]]), source="points.json")
    with pytest.raises(ValueError, match=r"box 0 \(10, 10, 5, 20\) is inverted \(x1 > x2\)"):
        check_prompts((40, 60), boxes=np.array([[10, 10, 5, 20]]))
    with pytest.raises(ValueError, match="labels must be 1"):
        check_prompts((40, 60), np.array([[1, 1]]), np.array([2]))
    with pytest.raises(ValueError, match="1 points but 2 labels"):
        check_prompts((40, 60), np.array([[1, 1]]), np.array([1, 1]))


@pytest.mark.parametrize("kwargs,message", [
    ({"point_coords": [[float("nan"), 5]]}, r"clicks.json: point 0 \(nan, 5\) is not a pair of finite numbers"),
    ({"point_coords": [[1, 1], [2, float("-inf")]]}, r"point 1 \(2, -inf\) is not a pair of finite numbers"),
    ({"point_coords": [[1, 2, 3]]}, r"points must be rows of 2 numbers, got shape \(1, 3\)"),
    ({"point_coords": [["a", 2]]}, r"points must be numbers"),
    ({"boxes": [[10, 30, 50, 20]]}, r"box 0 \(10, 30, 50, 20\) is inverted \(y1 > y2\); expected x1, y1 \(top left\), "
                                    r"x2, y2 \(bottom right\) with x1 < x2 and y1 < y2"),
    ({"boxes": [[0, 0, 60, 40], [10, 20, 50, 20]]}, r"box 1 \(10, 20, 50, 20\) has zero area \(y1 = y2\)"),
    ({"boxes": [[10, float("nan"), 50, 20]]}, r"box 0 \(10, nan, 50, 20\) is not 4 finite numbers"),
    ({"boxes": [[10, 10, 61, 20]]}, r"box 0 \(10, 10, 61, 20\) is not inside the image of 40x60 \(HxW\); "
                                    r"expected 0 <= x1 < x2 <= 60, 0 <= y1 < y2 <= 40"),
])
def test_user_prompts_that_are_not_numbers_inverted_or_empty_are_refused(kwargs, message):
    from rass.data.prompts import check_prompts
    from rass.utils.errors import UserValueError

    with pytest.raises(UserValueError, match=message):
        check_prompts((40, 60), source="clicks.json", **kwargs)
