"""The engine's fast paths: exact Poisson sampling by inversion, strip filtering, planar libjpeg
round trips, image-level worker threads."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from rass.data.degradation import build_degradation, filter2d, gaussian_kernel, jpeg_roundtrip_libjpeg, resize, sinc_kernel
from rass.data.degradation.filtering_fft import fft_size, filter2d_fft
from rass.data.degradation.kernels import pad_kernel
from rass.data.degradation.parallel import in_single_threaded_worker, map_single_threaded
from rass.data.degradation.poisson import poisson_cdf_table, poisson_from_levels


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# ---------------------------------------------------------------- Poisson by inversion
@pytest.mark.parametrize("rate_scale", [1.0, 8.0, 256.0])
def test_poisson_tables_are_the_poisson_distribution_functions(rate_scale):
    cdf = poisson_cdf_table(rate_scale)
    assert cdf.shape[0] == 256 and bool((cdf[:, -1] == 1.0).all())
    assert bool((cdf[:, 1:] >= cdf[:, :-1]).all())
    for level in (0, 1, 77, 255):
        lam = rate_scale * level / 255
        ref = stats.poisson.cdf(np.arange(cdf.shape[1]), lam) if lam > 0 else np.ones(cdf.shape[1])
        np.testing.assert_allclose(cdf[level].numpy(), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rate_scale,level", [(256.0, 255), (256.0, 100), (256.0, 3), (64.0, 77), (8.0, 200), (2.0, 128), (1.0, 0)])
def test_poisson_counts_follow_the_poisson_law(rate_scale, level):
    """Chi-square goodness of fit of 400k draws (fixed seeds: the test is deterministic)."""
    n = 400_000
    counts = poisson_from_levels(torch.full((n,), level, dtype=torch.uint8), rate_scale, _gen(level + 7))
    assert counts.dtype == torch.int32
    lam = rate_scale * level / 255
    if lam == 0:
        assert int(counts.abs().max()) == 0
        return
    obs = np.bincount(counts.numpy())
    expected = stats.poisson.pmf(np.arange(obs.size), lam) * n
    keep = expected > 5
    chi2 = (((obs[keep] - expected[keep]) ** 2) / expected[keep]).sum()
    assert stats.chi2.sf(chi2, keep.sum() - 1) > 1e-3
    assert abs(counts.double().mean().item() - lam) < 5 * math.sqrt(lam / n)
    assert counts.double().var().item() == pytest.approx(lam, rel=0.02)


def test_poisson_every_level_has_poisson_moments_and_depends_only_on_the_generator():
    n = 4000
    levels = torch.arange(256, dtype=torch.uint8).repeat(n)  # every level, n times
    counts = poisson_from_levels(levels, 256.0, _gen(1)).view(n, 256).double()
    lam = torch.arange(256, dtype=torch.float64) * 256 / 255
    assert bool((counts[:, 0] == 0).all())
    mean_z = (counts.mean(0) - lam)[1:] / (lam[1:] / n).sqrt()
    var_z = (counts.var(0) - lam)[1:] / ((2 * lam[1:] ** 2 + lam[1:]) / n).sqrt()
    assert mean_z.abs().max() < 5 and var_z.abs().max() < 5
    again = poisson_from_levels(levels.view(40, -1), 256.0, _gen(1))  # same draws, other shape
    assert torch.equal(again.view(-1), counts.view(-1).to(torch.int32))
    with pytest.raises(ValueError, match="positive"):
        poisson_cdf_table(0.0)


# ---------------------------------------------------------------- filtering in strips
@pytest.mark.parametrize("hw", [(130, 70), (97, 64), (65, 33)])
def test_filter2d_strips_with_uneven_heights_match_reflect_correlation(hw):
    """One 3-channel image is cut into horizontal strips on CPU (height not a multiple of the
    strip count here); the result must still be the plain reflect-padded correlation."""
    x = torch.rand(1, 3, *hw, dtype=torch.float64, generator=_gen(3))
    k = sinc_kernel(21, 1.3)[None]
    out = filter2d(x, k)
    for c in range(3):
        ref = ndimage.correlate(x[0, c].numpy(), k[0].numpy(), mode="mirror")
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-10)


# ---------------------------------------------------------------- FFT filtering
@pytest.mark.parametrize("hw", [(64, 48), (37, 91), (9, 13)])
def test_fft_filtering_equals_direct_filtering(hw):
    x = torch.rand(3, 3, *hw, generator=_gen(8))
    kernels = [sinc_kernel(21, 1.1), gaussian_kernel(17, 2.5, 0.8, 0.3), gaussian_kernel(19, 1.2)]
    k = torch.stack([pad_kernel(kk, 21) for kk in kernels]).float()
    direct = filter2d(x, k)
    fft = filter2d_fft(x, k)
    assert fft.shape == x.shape and (fft - direct).abs().max() < 1e-5
    alone = map_single_threaded(lambda i: filter2d_fft(x[i : i + 1].clone(), k[i : i + 1]), [0, 1, 2], workers=2)
    batched = map_single_threaded(lambda _: filter2d_fft(x, k), [0], workers=1)[0]
    assert all(torch.equal(a, batched[i : i + 1]) for i, a in enumerate(alone))  # bits do not depend on the batch
    with pytest.raises(ValueError, match="odd kh and kw"):
        filter2d_fft(x, torch.rand(3, 4, 4))


def test_fft_sizes_are_5_smooth_and_minimal():
    assert [fft_size(n) for n in (1, 7, 11, 13, 532, 533, 541)] == [1, 8, 12, 15, 540, 540, 576]


# ---------------------------------------------------------------- GEMM resize
@pytest.mark.parametrize("mode", ["area", "bilinear", "bicubic"])
def test_matmul_resize_equals_the_gather_resize(mode):
    x = torch.rand(2, 3, 150, 97, generator=_gen(6))
    for size, scale in [((77, 200), None), ((331, 41), None), ((150, 98), None), ((183, 118), 1.22), ((150, 97), None)]:
        ref = resize(x, size, mode, scale_factor=None if mode == "area" else scale)
        out = resize(x, size, mode, scale_factor=None if mode == "area" else scale, method="matmul")
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="resize method 'fft'"):
        resize(x, (5, 5), mode, method="fft")


def test_matmul_resize_of_an_image_does_not_depend_on_its_batch():
    x = torch.rand(4, 3, 123, 140, generator=_gen(7))
    batched = resize(x, (250, 90), "bicubic", method="matmul")
    for i in range(4):
        assert torch.equal(resize(x[i : i + 1].clone(), (250, 90), "bicubic", method="matmul"), batched[i : i + 1])


# ---------------------------------------------------------------- planar libjpeg
@pytest.mark.parametrize("backend", ["pillow", "opencv"])
def test_planar_libjpeg_round_trip_equals_the_interleaved_one(backend):
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:45, 0:62]
    img = np.stack([128 + 90 * np.sin(xx / (4 + c)) * np.cos(yy / 7.0) for c in range(3)], -1) + rng.normal(0, 9, (45, 62, 3))
    img = np.clip(img, 0, 255).round().astype(np.uint8)
    hwc = jpeg_roundtrip_libjpeg(img, 40, backend=backend)
    planar = jpeg_roundtrip_libjpeg(np.ascontiguousarray(img.transpose(2, 0, 1)), 40, backend=backend, channels_first=True)
    assert planar.shape == (3, 45, 62) and np.array_equal(planar.transpose(1, 2, 0), hwc)
    with pytest.raises(ValueError, match="3×H×W uint8"):
        jpeg_roundtrip_libjpeg(img, 40, backend=backend, channels_first=True)


# ---------------------------------------------------------------- worker threads
def test_workers_run_at_one_torch_thread_and_leave_the_caller_alone():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert not in_single_threaded_worker()
        assert map_single_threaded(lambda _: torch.get_num_threads(), list(range(6)), workers=2) == [1] * 6
        assert map_single_threaded(lambda _: in_single_threaded_worker(), [0], workers=1) == [True]
        assert torch.get_num_threads() == 2
        assert map_single_threaded(lambda v: v * v, [1, 2, 3, 4, 5], workers=3) == [1, 4, 9, 16, 25]
        # nested calls from a worker run inline instead of waiting for the (busy) pool
        nested = map_single_threaded(lambda v: map_single_threaded(lambda w: w + v, [1, 2], workers=2), [10, 20], workers=2)
        assert nested == [[11, 12], [21, 22]]
    finally:
        torch.set_num_threads(before)


def test_engine_output_does_not_depend_on_worker_threads_or_chunks():
    g = _gen(5)
    x = (0.5 + 0.3 * torch.rand(5, 3, 1, 1, generator=g) + 0.1 * torch.rand(5, 3, 70, 90, generator=g)).clamp(0, 1)
    seeds = [3, 1, 4, 1, 5]
    ref = build_degradation("rass", num_threads=1)(x, seeds=seeds)
    assert torch.equal(build_degradation("rass", num_threads=3)(x, seeds=seeds), ref)
    assert torch.equal(build_degradation("rass", num_threads=2, chunk_size=2)(x, seeds=seeds), ref)
    with pytest.raises(ValueError, match="num_threads"):
        build_degradation("rass", num_threads=0)
