"""Blur kernels: normalisation, second moments, sinc frequency response, the mixed sampler."""
import math
from collections import Counter

import pytest
import torch

from rass.data.degradation import (
    gaussian_kernel,
    generalized_gaussian_kernel,
    get_spec,
    kernel_from_params,
    plateau_kernel,
    pulse_kernel,
    sample_params,
    sinc_kernel,
)


def _moments(k):
    n = k.shape[-1]
    ax = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    mx, my = (k * xx).sum(), (k * yy).sum()
    cxx = (k * (xx - mx) ** 2).sum()
    cyy = (k * (yy - my) ** 2).sum()
    cxy = (k * (xx - mx) * (yy - my)).sum()
    return mx, my, torch.stack([torch.stack([cxx, cxy]), torch.stack([cxy, cyy])])


@pytest.mark.parametrize(
    "kernel",
    [
        gaussian_kernel(21, 2.0),
        gaussian_kernel(15, 2.5, 0.7, 1.0),
        generalized_gaussian_kernel(21, 1.5, 0.9, -0.4, beta=0.6),
        plateau_kernel(13, 1.2, 2.2, 0.3, beta=1.7),
        sinc_kernel(11, math.pi / 3),
        pulse_kernel(21),
    ],
)
def test_kernels_sum_to_one_and_are_centred(kernel):
    assert kernel.dtype == torch.float64
    assert abs(kernel.sum().item() - 1.0) < 1e-12
    mx, my, _ = _moments(kernel)
    assert abs(mx.item()) < 1e-9 and abs(my.item()) < 1e-9


@pytest.mark.parametrize("sigma", [0.8, 1.5, 2.5])
def test_isotropic_gaussian_variance_is_sigma_squared(sigma):
    _, _, cov = _moments(gaussian_kernel(21, sigma))
    # sampling on the integer grid and truncation at ±10 px change it by < 0.1 % for these σ
    assert cov[0, 0].item() == pytest.approx(sigma**2, rel=1e-3)
    assert cov[1, 1].item() == pytest.approx(sigma**2, rel=1e-3)
    assert abs(cov[0, 1].item()) < 1e-12


def test_anisotropic_gaussian_covariance_is_rotated_diagonal():
    sx, sy, theta = 2.0, 0.9, 0.6
    _, _, cov = _moments(gaussian_kernel(21, sx, sy, theta))
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    expected = rot @ torch.diag(torch.tensor([sx**2, sy**2], dtype=torch.float64)) @ rot.t()
    assert torch.allclose(cov, expected, atol=2e-3)


def test_generalized_gaussian_with_beta_one_is_gaussian_and_plateau_follows_formula():
    assert torch.allclose(generalized_gaussian_kernel(21, 1.3, 2.0, 0.4, beta=1.0), gaussian_kernel(21, 1.3, 2.0, 0.4))
    k = plateau_kernel(9, 1.5, beta=2.0)  # isotropic: value ∝ 1 / (1 + (r²/σ²)^β)
    ratio = k[4, 7] / k[4, 4]  # r = 3
    assert ratio.item() == pytest.approx(1.0 / (1.0 + (9 / 1.5**2) ** 2.0), rel=1e-12)


@pytest.mark.parametrize("omega", [math.pi / 4, math.pi / 2, 2 * math.pi / 3])
def test_sinc_frequency_response_cuts_near_omega(omega):
    k = sinc_kernel(21, omega)
    n = 512
    resp = torch.fft.rfft(torch.nn.functional.pad(k.sum(0), (0, n - 21))).abs()  # response along one axis
    freqs = torch.arange(resp.numel(), dtype=torch.float64) * 2 * math.pi / n
    assert resp[freqs < 0.6 * omega].min() > 0.8  # pass band (21 taps: Gibbs ripple)
    stop = (freqs > 1.4 * omega) & (freqs <= math.pi)
    assert not stop.any() or resp[stop].max() < 0.15  # stop band
    half = freqs[(resp < 0.5).nonzero()[0, 0]].item()  # first half-amplitude crossing
    assert abs(half - omega) / omega < 0.12


def test_pulse_kernel_is_identity_and_padding_keeps_sum():
    k = kernel_from_params(None, 21)
    assert k[10, 10] == 1 and k.sum() == 1
    small = kernel_from_params({"type": "iso", "size": 7, "sigma_x": 1.0}, 21)
    assert small.shape == (21, 21) and abs(small.sum().item() - 1) < 1e-12
    assert small[:7].abs().sum() == 0  # zero padding around the 7×7 core


def test_bad_kernel_arguments_are_named():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(8, 1.0)
    with pytest.raises(ValueError, match="omega"):
        sinc_kernel(11, 4.0)
    with pytest.raises(ValueError, match="Unknown kernel type 'box'"):
        kernel_from_params({"type": "box", "size": 7}, 21)


def test_mixed_sampler_follows_the_published_probabilities():
    spec = get_spec("rass")
    draws = [sample_params(spec, s, 64, 64) for s in range(3000)]
    kinds = Counter(p["blur1"]["type"] for p in draws)
    n = len(draws)
    assert kinds["sinc"] / n == pytest.approx(0.1, abs=0.02)
    mixed = n - kinds["sinc"]
    for name, prob in zip(spec.kernel_list, spec.kernel_prob):
        assert kinds[name] / mixed == pytest.approx(prob, abs=0.03), name
    sizes = Counter(p["blur1"]["size"] for p in draws)
    assert set(sizes) == set(range(7, 22, 2))
    for p in draws:
        b = p["blur1"]
        if b["type"] == "sinc":
            lo = math.pi / 3 if b["size"] < 13 else math.pi / 5
            assert lo <= b["omega"] <= math.pi
        else:
            assert 0.2 <= b["sigma_x"] <= 3.0
        if b["type"].startswith("plateau"):
            assert 1.0 <= b["beta"] <= 2.0
    assert sum(p["blur2"] is not None for p in draws) / n == pytest.approx(0.8, abs=0.03)
    assert sum(p["final"]["sinc"] is not None for p in draws) / n == pytest.approx(0.8, abs=0.03)
