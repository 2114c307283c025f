"""Degradation operators: filtering, resize, noise statistics, JPEG (tensor codec vs libjpeg)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import features
from scipy import ndimage

from rass.data.degradation import (
    filter2d,
    gaussian_kernel,
    gaussian_noise,
    jpeg_roundtrip,
    jpeg_roundtrip_libjpeg,
    poisson_noise,
    resize,
    sinc_kernel,
)
from rass.data.degradation.noise import count_levels
from rass.data.degradation.resize import resize_many

TURBO = bool(features.check_feature("libjpeg_turbo"))


def _natural(h, w, seed=0):
    """A smooth pattern plus texture, uint8 H×W×3 (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 90 * np.sin(xx / (5 + c) + c) * np.cos(yy / 9.0) for c in range(3)], -1)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ---------------------------------------------------------------- filtering
@pytest.mark.parametrize("hw", [(40, 56), (9, 13), (3, 2)])
def test_filter2d_matches_reflect_correlation_per_sample(hw):
    torch.manual_seed(0)
    x = torch.rand(3, 3, *hw, dtype=torch.float64)
    kernels = torch.stack([gaussian_kernel(21, 2.0, 0.7, 0.5), sinc_kernel(21, 1.0), gaussian_kernel(21, 0.9)])
    out = filter2d(x, kernels)
    for b in range(3):
        for c in range(3):
            ref = ndimage.correlate(x[b, c].numpy(), kernels[b].numpy(), mode="mirror")
            np.testing.assert_allclose(out[b, c].numpy(), ref, atol=1e-10)


def test_filter2d_sample_is_batch_independent_bitwise():
    torch.manual_seed(1)
    x = torch.rand(16, 3, 61, 47)
    k = torch.stack([gaussian_kernel(21, 0.5 + 0.1 * i).float() for i in range(16)])
    batched = filter2d(x, k)
    for i in (0, 7, 15):  # alone (3 channels: the strip path on CPU) vs inside 48 channels
        assert torch.equal(filter2d(x[i : i + 1], k[i : i + 1]), batched[i : i + 1])
    assert torch.equal(filter2d(x[[5, 2]], k[[5, 2]]), batched[[5, 2]])


def test_separable_gaussian_equals_the_2d_kernel():
    from rass.data.degradation.filtering import filter2d_separable
    from rass.data.degradation.kernels import gaussian_kernel_1d

    x = torch.rand(2, 3, 33, 40, dtype=torch.float64)
    g = torch.stack([gaussian_kernel_1d(13, 1.7), gaussian_kernel_1d(13, 0.4)])
    full = torch.stack([gaussian_kernel(13, 1.7), gaussian_kernel(13, 0.4)])
    assert torch.allclose(torch.outer(g[0], g[0]), full[0], atol=1e-15)
    assert torch.allclose(filter2d_separable(x, g, g), filter2d(x, full), atol=1e-12)


def test_filter2d_rejects_bad_shapes():
    with pytest.raises(ValueError, match="odd kh and kw"):
        filter2d(torch.rand(1, 3, 8, 8), torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="2 kernels for 3 samples"):
        filter2d(torch.rand(3, 3, 8, 8), torch.rand(2, 5, 5))


# ---------------------------------------------------------------- resize
@pytest.mark.parametrize("hw", [(37, 53), (5, 3), (64, 64)])
@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_resize_matches_f_interpolate_grids(hw, mode):
    """Same sampling grids as F.interpolate (align_corners=False); float32 coordinates there."""
    x = torch.rand(2, 3, *hw)
    kw = {} if mode == "area" else {"align_corners": False}
    for size in [(max(1, hw[0] // 3), max(1, hw[1] // 2)), (2 * hw[0] + 1, hw[1] + 5), (hw[0], hw[1] + 1)]:
        ref = F.interpolate(x, size=size, mode=mode, **kw)
        assert torch.allclose(resize(x, size, mode), ref, atol=1e-4)
    if mode != "area":  # the release's first stage: scale_factor semantics
        for s in (0.37, 1.0, 1.33):
            ref = F.interpolate(x, scale_factor=s, mode=mode, **kw)
            assert torch.allclose(resize(x, tuple(ref.shape[-2:]), mode, scale_factor=s), ref, atol=1e-4)


def test_resize_identity_constant_and_bad_mode():
    x = torch.rand(2, 3, 37, 53)
    assert resize(x, (37, 53), "bicubic") is x
    flat = torch.full((1, 3, 30, 40), 0.25)
    for mode in ("area", "bilinear", "bicubic"):  # a constant image stays constant
        assert torch.allclose(resize(flat, (17, 61), mode), torch.full((1, 3, 17, 61), 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="nearest"):
        resize(x, (5, 5), "nearest")


def test_resize_and_filter_do_not_depend_on_thread_count():
    x = torch.rand(4, 3, 300, 257)
    k = torch.stack([gaussian_kernel(21, 1.0 + i, 0.6, 0.2).float() for i in range(4)])
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append([resize(x, (411, 190), m) for m in ("area", "bilinear", "bicubic")] + [filter2d(x, k)])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_resize_many_keeps_order_and_per_sample_result():
    imgs = [torch.rand(3, 20, 30), torch.rand(3, 20, 30), torch.rand(3, 11, 7)]
    out = resize_many(imgs, [(10, 15), (40, 9), (10, 15)], ["area", "bicubic", "bilinear"])
    assert [tuple(o.shape) for o in out] == [(3, 10, 15), (3, 40, 9), (3, 10, 15)]
    assert torch.equal(out[1], resize(imgs[1][None], (40, 9), "bicubic")[0])


# ---------------------------------------------------------------- noise
def test_gaussian_noise_sigma_and_gray_channels():
    flat = torch.full((3, 256, 256), 0.5)
    color = gaussian_noise(flat, 20.0, gray=False, generator=_gen(0))
    assert color.std().item() == pytest.approx(20 / 255, rel=0.02)
    assert abs(color.mean().item()) < 1e-3
    assert not torch.equal(color[0], color[1])
    corr = torch.corrcoef(color.reshape(3, -1))
    assert corr[0, 1].abs() < 0.02
    gray = gaussian_noise(flat, 7.0, gray=True, generator=_gen(1))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert gray.std().item() == pytest.approx(7 / 255, rel=0.02)


def test_poisson_noise_statistics_follow_the_level_count():
    img = torch.full((3, 200, 256), 128 / 255)
    img[:, 0, :] = torch.arange(256) / 255  # 256 distinct levels → v = 256
    assert count_levels(torch.round(img * 255)) == 256
    noise = poisson_noise(img, scale=2.0, gray=False, generator=_gen(2))[:, 1:]
    expected = 2.0 * math.sqrt((128 / 255) / 256)  # scale · sqrt(x / v)
    assert noise.std().item() == pytest.approx(expected, rel=0.03)
    assert abs(noise.mean().item()) < 3 * expected / math.sqrt(noise.numel())
    gray = poisson_noise(img, scale=1.0, gray=True, generator=_gen(3))
    assert torch.equal(gray[0], gray[2])
    # a flat image has a single level → v = 1: noise = Poisson(x) - x, std sqrt(x)
    flat = poisson_noise(torch.full((3, 128, 128), 100 / 255), 1.0, gray=False, generator=_gen(4))
    assert flat.std().item() == pytest.approx(math.sqrt(100 / 255), rel=0.03)


# ---------------------------------------------------------------- JPEG
def test_jpeg_error_decreases_with_quality():
    img = torch.from_numpy(_natural(96, 128)).permute(2, 0, 1).float()
    errors = [((jpeg_roundtrip([img], [q])[0] - img) ** 2).mean().item() for q in (10, 30, 60, 95)]
    assert errors[0] > errors[1] > errors[2] > errors[3] > 0


@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (1, 1), (2, 3), (5, 4), (17, 33), (120, 81)])
@pytest.mark.parametrize("quality", [10, 30, 75, 95, 100])
def test_tensor_jpeg_matches_libjpeg(hw, quality):
    """Stated tolerance: identical bytes with libjpeg-turbo; a close match with other libjpegs."""
    arr = _natural(*hw, seed=hw[0] * 7 + quality)
    ref = jpeg_roundtrip_libjpeg(arr, quality, backend="pillow").astype(np.int16)
    out = jpeg_roundtrip([torch.from_numpy(arr).permute(2, 0, 1).float()], [quality])[0]
    diff = np.abs(out.permute(1, 2, 0).numpy().astype(np.int16) - ref)
    if TURBO:
        assert diff.max() == 0
    else:
        assert diff.mean() < 0.5 and diff.max() <= 8


def test_jpeg_extreme_images_and_opencv_backend_agree():
    rng = np.random.default_rng(5)
    cases = [np.zeros((16, 16, 3), np.uint8), np.full((9, 23, 3), 255, np.uint8), rng.integers(0, 256, (33, 40, 3)).astype(np.uint8)]
    for arr in cases:
        pil = jpeg_roundtrip_libjpeg(arr, 50, backend="pillow")
        cv = jpeg_roundtrip_libjpeg(arr, 50, backend="opencv")
        ours = jpeg_roundtrip([torch.from_numpy(arr).permute(2, 0, 1).float()], [50])[0].permute(1, 2, 0).numpy()
        assert np.array_equal(pil, cv)
        if TURBO:
            assert np.array_equal(ours.astype(np.uint8), pil)


def test_tensor_jpeg_is_batch_independent_and_checks_inputs():
    imgs = [torch.from_numpy(_natural(h, w, seed=h)).permute(2, 0, 1).float() for h, w in [(40, 40), (23, 57), (40, 40)]]
    batched = jpeg_roundtrip(imgs, [35, 80, 90])
    assert torch.equal(jpeg_roundtrip([imgs[1]], [80])[0], batched[1])
    assert torch.equal(jpeg_roundtrip([imgs[2], imgs[0]], [90, 35])[1], batched[0])
    with pytest.raises(ValueError, match="quality"):
        jpeg_roundtrip([imgs[0]], [0])
    with pytest.raises(ValueError, match="2 images but 1 qualities"):
        jpeg_roundtrip(imgs[:2], [50])
    with pytest.raises(ValueError, match="backend"):
        jpeg_roundtrip_libjpeg(_natural(8, 8), 50, backend="gif")
