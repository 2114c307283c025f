"""rass.ops.ms_deform_attn: kernel vs grid_sample path, closed-form sampling, gradcheck, dispatch, AMP."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from rass.ops import deformable_attention as ops_module
from rass.ops import kernel_available, ms_deform_attn, ms_deform_attn_pytorch, resolve_backend

needs_kernel = pytest.mark.skipif(not kernel_available("cpu"), reason="torch-ms-deform-attn CPU kernel not installed")


def _inputs(n, m, d, shapes, lq, p, dtype=torch.float32, seed=0, loc_range=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    spatial = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    num_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=dtype)
    lo, hi = loc_range
    loc = torch.rand(n, lq, m, num_levels, p, 2, generator=g, dtype=dtype) * (hi - lo) + lo
    w = torch.rand(n, lq, m, num_levels, p, generator=g, dtype=dtype)
    w = w / w.sum((-1, -2), keepdim=True)
    return value, spatial, starts, loc, w


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


SHAPES = [
    # (N, M, D, level shapes, Lq, P, location range)
    (1, 1, 4, [(5, 7)], 3, 1, (0.0, 1.0)),
    (2, 2, 8, [(6, 7), (3, 4)], 9, 4, (0.0, 1.0)),
    (2, 3, 5, [(4, 9), (7, 3), (1, 1)], 11, 2, (-0.2, 1.2)),  # samples outside the map (zero padding)
    (1, 8, 32, [(16, 16), (8, 8), (4, 4)], 336, 4, (0.0, 1.0)),
]


def test_pytorch_path_samples_bilinearly_with_pixel_centres():
    """A linear map v(i, j) = 2 j + 3 i is reproduced exactly at interior points; the centre of
    pixel (i, j) is at x = (j + 0.5) / W, y = (i + 0.5) / H."""
    h, w = 6, 9
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    value = (2 * jj + 3 * ii).reshape(1, h * w, 1, 1)
    g = torch.Generator().manual_seed(1)
    px = torch.rand(20, generator=g, dtype=torch.float64) * (w - 1)  # pixel coordinates inside the centres' hull
    py = torch.rand(20, generator=g, dtype=torch.float64) * (h - 1)
    loc = torch.stack([(px + 0.5) / w, (py + 0.5) / h], -1).view(1, 20, 1, 1, 1, 2)
    weights = torch.ones(1, 20, 1, 1, 1, dtype=torch.float64)
    out = ms_deform_attn(value, torch.tensor([[h, w]]), torch.tensor([0]), loc, weights, backend="torch")
    torch.testing.assert_close(out[0, :, 0], 2 * px + 3 * py, rtol=0, atol=1e-10)
    # On the left border (x = 0, half a pixel left of column 0's centre) the sample is half of
    # column 0's value: the other half comes from the zero padding.
    edge = torch.tensor([0.0, 2.5 / h], dtype=torch.float64).view(1, 1, 1, 1, 1, 2)
    out = ms_deform_attn(value, torch.tensor([[h, w]]), torch.tensor([0]), edge, weights[:, :1], backend="torch")
    assert out.item() == pytest.approx(0.5 * (3 * 2))


@needs_kernel
@pytest.mark.parametrize("n,m,d,shapes,lq,p,loc_range", SHAPES)
def test_kernel_matches_pytorch_forward_and_grads(n, m, d, shapes, lq, p, loc_range):
    value, spatial, starts, loc, w = _inputs(n, m, d, shapes, lq, p, loc_range=loc_range)
    grad_out = torch.randn(n, lq, m * d, generator=torch.Generator().manual_seed(5))
    results = {}
    for backend in ("kernel", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
        out = ms_deform_attn(leaves[0], spatial, starts, leaves[1], leaves[2], backend=backend)
        (out * grad_out).sum().backward()
        results[backend] = (out.detach(), *[t.grad for t in leaves])
    assert results["torch"][0].shape == (n, lq, m * d)
    for name, a, b in zip(("output", "d_value", "d_locations", "d_weights"), results["kernel"], results["torch"]):
        assert _rel_err(a, b) <= 1e-5, f"{name}: relative error {_rel_err(a, b):.2e}"


@pytest.mark.parametrize("backend", ["torch", pytest.param("kernel", marks=needs_kernel)])
def test_gradcheck_float64(backend):
    value, spatial, starts, loc, w = _inputs(1, 2, 3, [(4, 5), (2, 3)], 3, 2, dtype=torch.float64, seed=3)
    # Keep samples away from pixel-centre lines, where bilinear sampling has kinks.
    loc = (loc * 0.8 + 0.1).requires_grad_(True)
    value.requires_grad_(True)
    w.requires_grad_(True)

    def fn(v, sl, aw):
        return ms_deform_attn(v, spatial, starts, sl, aw, backend=backend)

    assert torch.autograd.gradcheck(fn, (value, loc, w), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_resolve_backend_and_errors():
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("auto", "cpu") == ("kernel" if kernel_available("cpu") else "torch")
    assert resolve_backend("auto", "meta") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", "cpu")
    value, spatial, starts, loc, w = _inputs(1, 2, 4, [(3, 3)], 2, 2)
    with pytest.raises(ValueError, match="attention_weights must have shape"):
        ms_deform_attn(value, spatial, starts, loc, w[..., :1])
    with pytest.raises(ValueError, match="value must be N x S x M x D"):
        ms_deform_attn(value[0], spatial, starts, loc, w)


@pytest.fixture
def no_kernel(monkeypatch):
    """Make `import torch_ms_deform_attn` fail, as on a machine without the package."""
    monkeypatch.setitem(sys.modules, "torch_ms_deform_attn", None)
    ops_module._reset_kernel_cache()
    yield
    monkeypatch.undo()
    ops_module._reset_kernel_cache()


def test_auto_falls_back_to_pytorch_without_kernel(no_kernel):
    assert not kernel_available("cpu")
    assert "torch_ms_deform_attn" in (ops_module.kernel_import_error() or "")
    value, spatial, starts, loc, w = _inputs(2, 2, 4, [(5, 6), (3, 3)], 7, 3)
    out = ms_deform_attn(value, spatial, starts, loc, w, backend="auto")
    torch.testing.assert_close(out, ms_deform_attn_pytorch(value, spatial, loc, w), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="torch-ms-deform-attn kernel is unavailable"):
        ms_deform_attn(value, spatial, starts, loc, w, backend="kernel")


@needs_kernel
def test_auto_uses_kernel_when_available(monkeypatch):
    ops_module._reset_kernel_cache()
    kernel = ops_module._load_kernel()
    calls = []
    real = kernel.ms_deform_attn

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(kernel, "ms_deform_attn", spy)
    value, spatial, starts, loc, w = _inputs(1, 2, 4, [(3, 3)], 2, 2)
    ms_deform_attn(value, spatial, starts, loc, w, backend="auto")
    ms_deform_attn(value, spatial, starts, loc, w, backend="torch")
    assert calls == [value.shape]


def test_project_imports_and_runs_without_kernel():
    code = (
        "import sys; sys.modules['torch_ms_deform_attn'] = None\n"
        "import torch, rass\n"
        "from rass.ops import ms_deform_attn, kernel_available\n"
        "assert not kernel_available('cpu')\n"
        "v = torch.randn(1, 9, 1, 2); loc = torch.rand(1, 4, 1, 1, 2, 2); w = torch.rand(1, 4, 1, 1, 2)\n"
        "print(tuple(ms_deform_attn(v, torch.tensor([[3, 3]]), torch.tensor([0]), loc, w).shape))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "(1, 4, 2)"


@pytest.mark.parametrize("backend", ["torch", pytest.param("kernel", marks=needs_kernel)])
def test_autocast_runs_in_float32(backend):
    value, spatial, starts, loc, w = _inputs(2, 2, 8, [(6, 5), (3, 3)], 5, 4)
    value_bf16 = value.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ms_deform_attn(value_bf16, spatial, starts, loc.bfloat16(), w, backend=backend)
    assert out.dtype == torch.float32
    ref = ms_deform_attn_pytorch(value_bf16.float(), spatial, loc.bfloat16().float(), w)
    assert _rel_err(out, ref) <= 1e-5
    # Outside autocast, low-precision inputs are computed in float32 and returned in their dtype.
    out_half = ms_deform_attn(value.half(), spatial, starts, loc.half(), w.half(), backend=backend)
    assert out_half.dtype == torch.float16
    ref_half = ms_deform_attn_pytorch(value.half().float(), spatial, loc.half().float(), w.half().float())
    assert _rel_err(out_half.float(), ref_half) <= 1e-3
