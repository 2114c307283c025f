#!/usr/bin/env python
"""Speed of the degradation engine: batched vs one image at a time vs the release's way.

    python tools/benchmarks/bench_degradation.py --size 512 --batch 16 --threads 2

Rows (same per-image parameters for all rows, drawn from the same seeds):
- batched engine: one call on the B×3×H×W batch, every stage on the whole batch (grouped conv,
  batched JPEG, ...) — the GPU configuration;
- batched engine, CPU default: the same call, stages run on chunks of 2 images (cache-friendly);
- engine, one image at a time: the same operators called with B = 1 in a Python loop
  (outputs are byte-identical to the batched row);
- release-style loop: one image at a time with the operator choices of the original release
  (3-group depthwise conv per image, float DiffJPEG-style JPEG with transposed tables and
  pixel-repeat chroma, level counting with `torch.unique` on floats) — own re-implementation,
  for timing and distribution comparison only.
Reported: images/s (wall clock, best of --repeats), CPU ms per image (process time, less
sensitive to other load on the machine), how much faster the default engine is than each row,
and mean PSNR of the degraded images vs the clean ones (same distribution check).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rass.data.degradation import build_degradation  # noqa: E402
from rass.data.degradation.jpeg_islow import quant_table  # noqa: E402
from rass.data.degradation.kernels import kernel_from_params  # noqa: E402
from rass.data.degradation.pipeline import quantize_8bit  # noqa: E402


# ----------------------------------------------------------------- release-style operators
def _filter_release(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """BasicSR filter2D for one image: reflect pad + a 3-group depthwise conv."""
    p = k.shape[-1] // 2
    xp = F.pad(x, (p, p, p, p), mode="reflect")
    return F.conv2d(xp.view(1, 3, *xp.shape[-2:]), k.expand(3, 1, *k.shape), groups=3)


def _dct_basis() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float32)
    c = torch.cos((2 * n[:, None] + 1) * n[None, :] * math.pi / 16)  # [x, u]
    alpha = torch.ones(8)
    alpha[0] = 1 / math.sqrt(2)
    return c * alpha[None, :] * 0.5


_C = _dct_basis()


def _jpeg_release(x: torch.Tensor, quality: float) -> torch.Tensor:
    """DiffJPEG-style float JPEG (zero padding, transposed tables, float quality, box chroma)."""
    factor = (5000.0 / quality if quality < 50 else 200.0 - 2 * quality) / 100.0
    h, w = x.shape[-2:]
    x = F.pad(x, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16)) * 255
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc = torch.einsum("ij,bjhw->bihw", m, x) + torch.tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1)
    planes = [ycc[:, :1], F.avg_pool2d(ycc[:, 1:2], 2), F.avg_pool2d(ycc[:, 2:3], 2)]
    tables = [torch.tensor(quant_table(50, False), dtype=torch.float32).view(8, 8).t(), torch.tensor(quant_table(50, True), dtype=torch.float32).view(8, 8).t()]
    out = []
    for i, pl in enumerate(planes):
        hh, ww = pl.shape[-2:]
        blk = pl.reshape(hh // 8, 8, ww // 8, 8).permute(0, 2, 1, 3) - 128
        coef = _C.t() @ blk @ _C
        q = tables[min(i, 1)] * factor
        coef = torch.round(coef / q) * q
        rec = (_C @ coef @ _C.t() + 128).permute(0, 2, 1, 3).reshape(1, 1, hh, ww)
        out.append(rec if i == 0 else rec.repeat_interleave(2, -2).repeat_interleave(2, -1))
    ycc = torch.cat(out, 1)
    mi = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
    rgb = torch.einsum("ij,bjhw->bihw", mi, ycc - torch.tensor([0.0, 128.0, 128.0]).view(1, 3, 1, 1))
    return (rgb.clamp(0, 255) / 255)[..., :h, :w]


def _noise_release(x: torch.Tensor, p: Dict, g: torch.Generator) -> torch.Tensor:
    if p["type"] == "gaussian":
        shape = (1, 1 if p["gray"] else 3, *x.shape[-2:])
        return (x + torch.randn(shape, generator=g) * p["sigma"] / 255).clamp(0, 1)
    src = (0.2989 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]) if p["gray"] else x
    src = torch.clamp((src * 255).round(), 0, 255) / 255
    vals = 2 ** math.ceil(math.log2(len(torch.unique(src))))
    noise = (torch.poisson(src * vals, generator=g) / vals - src) * p["scale"]
    return (x + noise).clamp(0, 1)


def release_style_one(x: torch.Tensor, p: Dict, pad_to: int) -> torch.Tensor:
    """One image (1×3×H×W) the way the release chains the operators, with given parameters."""
    g = torch.Generator()
    g.manual_seed(p["noise_seed"])
    out = _filter_release(x, kernel_from_params(p["blur1"], pad_to).float())
    r1 = p["resize1"]
    out = F.interpolate(out, scale_factor=r1["scale"], mode=r1["mode"]) if r1["mode"] != "area" else F.interpolate(out, size=tuple(r1["size"]), mode="area")
    out = _noise_release(out, p["noise1"], g)
    out = _jpeg_release(out.clamp(0, 1), p["jpeg1"])
    if p["blur2"] is not None:
        out = _filter_release(out, kernel_from_params(p["blur2"], pad_to).float())
    out = F.interpolate(out, size=tuple(p["resize2"]["size"]), mode=p["resize2"]["mode"])
    out = _noise_release(out, p["noise2"], g)
    fin = p["final"]
    sinc = kernel_from_params(fin["sinc"], pad_to).float()
    if fin["order"] == "resize_sinc_jpeg":
        out = _filter_release(F.interpolate(out, size=tuple(fin["size"]), mode=fin["mode"]), sinc)
        out = _jpeg_release(out.clamp(0, 1), fin["jpeg"])
    else:
        out = _jpeg_release(out.clamp(0, 1), fin["jpeg"])
        out = _filter_release(F.interpolate(out, size=tuple(fin["size"]), mode=fin["mode"]), sinc)
    return quantize_8bit(out)


# ----------------------------------------------------------------- timing
def _time(fn: Callable[[], torch.Tensor], repeats: int) -> Tuple[float, float, torch.Tensor]:
    fn()  # warm-up
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image side (square)")
    ap.add_argument("--batch", type=int, default=16, help="images per batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--preset", default="rass", help="degradation preset")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test images and per-image seeds")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    g = torch.Generator()
    g.manual_seed(a.seed)
    b, s = a.batch, a.size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, s), torch.linspace(0, 1, s), indexing="ij")
    smooth = 0.5 + 0.35 * torch.sin(9 * xx[None, None] + 5 * yy[None, None] + torch.rand(b, 3, 1, 1, generator=g) * 6)
    images = (smooth + 0.08 * torch.rand(b, 3, s, s, generator=g)).clamp(0, 1)
    seeds = [a.seed * 1000 + i for i in range(b)]
    deg = build_degradation(a.preset, chunk_size=b)  # every stage runs on the whole batch
    deg_cpu = build_degradation(a.preset)  # default: chunks of 2 images on CPU

    rows = []
    wall, cpu, batched = _time(lambda: deg(images, seeds=seeds), a.repeats)
    rows.append(("batched engine (whole batch per stage)", wall, cpu, batched))
    wall, cpu, chunked = _time(lambda: deg_cpu(images, seeds=seeds), a.repeats)
    rows.append(("batched engine (CPU default: chunks of 2)", wall, cpu, chunked))
    wall, cpu, looped = _time(lambda: torch.cat([deg(images[i : i + 1], seeds=[seeds[i]]) for i in range(b)]), a.repeats)
    rows.append(("engine, one image at a time", wall, cpu, looped))
    params = [p for p in deg(images, seeds=seeds, return_params=True)[1]]
    wall, cpu, rel = _time(lambda: torch.cat([release_style_one(images[i : i + 1], params[i], deg.spec.kernel_pad_to) for i in range(b)]), a.repeats)
    rows.append(("release-style loop", wall, cpu, rel))

    print(f"\nDegradation preset {a.preset!r}, {b} images of {s}x{s}, torch threads {a.threads}, device cpu")
    print(f"identical bytes, batched vs chunked vs one-at-a-time: {torch.equal(batched, looped) and torch.equal(chunked, looped)}")
    print("| method | images/s | CPU ms/img | default engine faster by (wall) | (CPU) | mean PSNR vs clean (dB) |")
    print("|---|---|---|---|---|---|")
    _, ref_wall, ref_cpu, _ = rows[1]
    for name, wall, cpu, out in rows:
        print(f"| {name} | {b / wall:.2f} | {1000 * cpu / b:.0f} | {wall / ref_wall:.2f}x | {cpu / ref_cpu:.2f}x | {_psnr(out, images):.2f} |")

if __name__ == "__main__":
    main()
