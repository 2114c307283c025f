"""The degradation engine: shapes/range, presets, determinism with seeds, recorded parameters."""
import json

import pytest
import torch

from rass.data.degradation import PRESETS, build_degradation, get_spec, sample_params

SEEDS = [11, 22, 33, 44, 55, 66, 77, 88]


def _images(n, h, w, seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g)
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) * torch.linspace(0.2, 1, h).view(1, 1, h, 1)
    return (0.6 * base + 0.4 * ramp + 0.05 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)


def _on_levels(x):
    return torch.equal(torch.round(x * 255) / 255, x)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (48, 80)])
def test_shape_range_and_8bit_levels(preset, hw):
    deg = build_degradation(preset)
    x = _images(3, *hw)
    y = deg(x, seeds=SEEDS[:3])
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert y.min() >= 0 and y.max() <= 1
    assert _on_levels(y)
    assert not torch.equal(y, x)


def test_same_bytes_whatever_batch_order_or_composition():
    deg = build_degradation("rass", chunk_size=8)  # the whole batch goes through each stage together
    x = _images(8, 40, 56, seed=1)
    full = deg(x, seeds=SEEDS)
    assert torch.equal(build_degradation("rass")(x, seeds=SEEDS), full)  # default CPU chunks of 2
    perm = [5, 2, 7, 0, 3, 6, 1, 4]
    shuffled = deg(x[perm], seeds=[SEEDS[i] for i in perm])
    assert torch.equal(shuffled, full[perm])
    alone = torch.cat([deg(x[i : i + 1], seeds=[SEEDS[i]]) for i in range(8)])
    assert torch.equal(alone, full)
    # mixed sizes in one call (list API) and other images around: still the same bytes
    other = _images(2, 29, 71, seed=9)
    outs, _ = deg.degrade_list([other[0], x[3], other[1], x[6]], [1, SEEDS[3], 2, SEEDS[6]])
    assert torch.equal(outs[1], full[3]) and torch.equal(outs[3], full[6])


def test_tensor_and_libjpeg_backends_give_identical_outputs():
    from PIL import features

    if not features.check_feature("libjpeg_turbo"):
        pytest.skip("Pillow is not built with libjpeg-turbo")
    x = _images(4, 45, 38, seed=2)
    a = build_degradation("rass", jpeg_backend="tensor")(x, seeds=SEEDS[:4])
    b = build_degradation("rass", jpeg_backend="pillow")(x, seeds=SEEDS[:4])
    assert torch.equal(a, b)


def test_seeds_change_outputs_and_engine_seed_reproduces_calls():
    x = _images(2, 32, 40, seed=3)
    deg = build_degradation("rass")
    assert not torch.equal(deg(x, seeds=[1, 2]), deg(x, seeds=[3, 4]))
    a, b = build_degradation("rass", seed=5), build_degradation("rass", seed=5)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), build_degradation("rass", seed=6)(x))
    with pytest.raises(ValueError, match="3 seeds for 2 images"):
        deg(x, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="B×3×H×W"):
        deg(x[:, :1])


def test_params_are_json_and_replay_the_output():
    deg = build_degradation("lqseg_2")
    x = _images(3, 48, 64, seed=4)
    y, params = deg(x, seeds=SEEDS[:3], return_params=True)
    params = json.loads(json.dumps(params))
    assert [p["seed"] for p in params] == SEEDS[:3] and deg.last_params[0]["seed"] == SEEDS[0]
    replay = deg.apply(list(x.unbind(0)), params)
    assert torch.equal(torch.stack(replay), y)
    assert params == [sample_params(deg.spec, s, 48, 64) for s in SEEDS[:3]]


def test_release_size_rules_for_scale_and_lqseg_divisor():
    h, w = 64, 96
    for preset, div in [("lqseg_1", 1), ("lqseg_2", 2), ("lqseg_3", 4)]:
        spec = get_spec(preset)
        for s in range(50):
            p = sample_params(spec, s, h, w)
            sc = p["resize2"]["scale"]
            assert p["resize2"]["size"] == [max(1, int(h / div * sc)), max(1, int(w / div * sc))]
            assert p["final"]["size"] == [h, w]
            s1 = p["resize1"]["scale"]
            assert p["resize1"]["size"] == [int(h * s1), int(w * s1)]
            assert 0.15 <= s1 <= 1.5 and 0.3 <= sc <= 1.2
            assert 30 <= p["jpeg1"] <= 95 and isinstance(p["jpeg1"], int)
    p = sample_params(get_spec("realesrgan_x4"), 0, h, w)
    assert p["final"]["size"] == [16, 24]
    assert p["resize2"]["size"] == [int(h / 4 * p["resize2"]["scale"]), int(w / 4 * p["resize2"]["scale"])]


def test_overrides_change_sampling_and_are_validated():
    spec = get_spec("rass", resize_prob=[0, 0, 1], resize_prob2=(0, 0, 1), jpeg_range=[90, 90], second_blur_prob=0)
    for s in range(20):
        p = sample_params(spec, s, 30, 40)
        assert p["resize1"]["size"] == [30, 40] and p["resize2"]["size"] == [30, 40]
        assert p["jpeg1"] == 90 and p["blur2"] is None
    with pytest.raises(ValueError, match="Unknown degradation preset 'x'"):
        build_degradation("x")
    with pytest.raises(ValueError, match=r"Unknown degradation value\(s\) \['jpeg'\]"):
        build_degradation("rass", jpeg=[1, 2])
    with pytest.raises(ValueError, match="jpeg_range"):
        build_degradation("rass", jpeg_range=[0, 50])
    with pytest.raises(ValueError, match="resize_range"):
        build_degradation("rass", resize_range=[1.2, 1.5])


def test_float64_input_and_gray_and_extreme_images():
    deg = build_degradation("rass")
    x = torch.zeros(2, 3, 33, 31, dtype=torch.float64)
    x[1] = 1.0
    y = deg(x, seeds=[1, 2])
    assert y.dtype == torch.float64 and y.min() >= 0 and y.max() <= 1 and _on_levels(y.float())


def test_same_bytes_with_one_or_two_threads():
    deg = build_degradation("rass")
    x = _images(3, 150, 130, seed=6)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = deg(x, seeds=SEEDS[:3])
        torch.set_num_threads(2)
        two = deg(x, seeds=SEEDS[:3])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_lqseg_1_is_the_rass_preset():
    """The README says so: the same parameters and, for the same seed, the same bytes (and not the input)."""
    assert get_spec("lqseg_1") == get_spec("rass")
    x = _images(2, 40, 56)
    a = build_degradation("lqseg_1")(x, seeds=SEEDS[:2])
    b = build_degradation("rass")(x, seeds=SEEDS[:2])
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert not torch.equal(build_degradation("lqseg_2")(x, seeds=SEEDS[:2]), a)
