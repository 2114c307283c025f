#!/usr/bin/env python
"""Speed of the degradation engine vs one-image-at-a-time loops (issue 4's CPU target: >= 5x).

    python tools/benchmarks/bench_degradation.py                      # 16 x 512x512, 1 and 2 threads
    python tools/benchmarks/bench_degradation.py --threads 2 --repeats 5

Every method degrades the same images with the same per-image parameters (sampled once from the
same seeds), so only the way the operators are run differs:

- "engine": the batched engine as shipped; on CPU the images (one per task) are spread over
  `torch.get_num_threads()` worker threads that each run torch at one intra-op thread;
- "engine, whole batch per stage": the same engine with every stage on all images at once
  (grouped convolutions over the batch: the GPU configuration; on CPU one worker runs it);
- "own operators, 1 image at a time": the engine called on one image at a time in a Python loop
  (each call runs in one single-threaded worker, so it uses one core); must be byte-identical;
- "release-style loop": the original release's per-image procedure, re-implemented here for
  timing and distribution comparison (own code; same operator choices as the release): kernels
  zero-padded to 21x21 applied by a reflect pad + 3-group convolution per image (BasicSR
  filter2D), `F.interpolate` (scale_factor in the first stage), BasicSR's noise (colour noise
  always drawn, a gray plane added and blended when gray; Poisson levels counted with
  `torch.unique`, `torch.poisson`), DiffJPEG-style float JPEG (4-D cosine tensordot per 8x8
  block, transposed tables scaled by the quality factor, zero padding to 16, box chroma
  sub-sampling and pixel-repeat up-sampling), the final 8-bit rounding and bilinear resize back;
  it runs at the process's intra-op thread count (its convolutions use every thread).

Reported per thread count: images/s (wall clock, best of --repeats), CPU ms per image (process
time), how many times faster the engine is than each row, and the mean ± std over the images of
the PSNR of the degraded image vs the clean one (same distribution check; the engine and its
one-at-a-time loop must also be byte-identical). The CPU use of other processes during each table
is printed (from /proc/stat): other load slows down every row, the 2-thread rows most.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image side (square)")
    ap.add_argument("--batch", type=int, default=16, help="images per batch")
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    ap.add_argument("--threads", default="1,2", help="comma-separated torch intra-op thread counts")
    ap.add_argument("--preset", default="rass", help="degradation preset")
    ap.add_argument("--seed", type=int, default=0, help="seed of the test images and per-image seeds")
    return ap


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from rass.data.degradation import build_degradation  # noqa: E402
from rass.data.degradation.jpeg_islow import CHROMA_TABLE, LUMA_TABLE  # noqa: E402
from rass.data.degradation.kernels import kernel_from_params  # noqa: E402
from rass.utils.system import machine_cpu_seconds  # noqa: E402


# ----------------------------------------------------------------- release-style operators
def release_filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """filter2D as released for one 1×3×H×W image: reflect pad, one 3-group depthwise conv."""
    k = kernel.shape[-1]
    xp = F.pad(x, (k // 2,) * 4, mode="reflect")
    weight = kernel.view(1, 1, k, k).repeat(1, 3, 1, 1).view(3, 1, k, k)
    return F.conv2d(xp, weight, groups=3)


class ReleaseJPEG:
    """DiffJPEG (non-differentiable mode) re-implemented: float codec on one batch of images."""

    def __init__(self) -> None:
        pos = torch.arange(8, dtype=torch.float64)
        cos = torch.cos((2 * pos[:, None] + 1) * pos[None, :] * math.pi / 16)  # cos[x, u]
        alpha = torch.tensor([1 / math.sqrt(2)] + [1.0] * 7, dtype=torch.float64)
        self.forward_basis = torch.einsum("xu,yv->xyuv", cos, cos).float()  # pixels (x, y) → (u, v)
        self.inverse_basis = torch.einsum("xu,yv->uvxy", cos, cos).float()  # coefficients → pixels
        self.forward_scale = (torch.outer(alpha, alpha) * 0.25).float()
        self.inverse_alpha = torch.outer(alpha, alpha).float()
        self.tables = [torch.tensor(t, dtype=torch.float32).view(8, 8).t() for t in (LUMA_TABLE, CHROMA_TABLE)]
        self.rgb2ycc = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]).t()
        self.ycc2rgb = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]).t()
        self.offset = torch.tensor([0.0, 128.0, 128.0])

    def __call__(self, x: torch.Tensor, quality: float) -> torch.Tensor:
        q = torch.full((x.shape[0],), float(quality))
        factor = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0
        b, _, h, w = x.shape
        x = F.pad(x, (0, (16 - w % 16) % 16, 0, (16 - h % 16) % 16))
        ycc = (torch.tensordot((x * 255).permute(0, 2, 3, 1), self.rgb2ycc, dims=1) + self.offset).permute(0, 3, 1, 2)
        planes = [ycc[:, 0], F.avg_pool2d(ycc[:, 1:2], 2)[:, 0], F.avg_pool2d(ycc[:, 2:3], 2)[:, 0]]
        decoded = []
        for i, plane in enumerate(planes):
            ph, pw = plane.shape[-2:]
            blocks = plane.reshape(b, ph // 8, 8, pw // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)
            coef = self.forward_scale * torch.tensordot(blocks - 128, self.forward_basis, dims=2)
            table = self.tables[min(i, 1)].expand(b, 1, 8, 8) * factor.view(b, 1, 1, 1)
            coef = torch.round(coef / table) * table
            pix = 0.25 * torch.tensordot(coef * self.inverse_alpha, self.inverse_basis, dims=2) + 128
            pix = pix.view(b, ph // 8, pw // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, ph, pw)
            decoded.append(pix if i == 0 else pix[..., None].repeat(1, 1, 2, 2).view(b, 2 * ph, 2 * pw))
        rgb = torch.tensordot(torch.stack(decoded, -1) - self.offset, self.ycc2rgb, dims=1).permute(0, 3, 1, 2)
        rgb = torch.min(torch.full_like(rgb, 255.0), torch.max(torch.zeros_like(rgb), rgb))
        return (rgb / 255)[..., :h, :w]


def _release_poisson(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = torch.clamp((x * 255.0).round(), 0, 255) / 255.0
    vals = 2 ** math.ceil(math.log2(len(torch.unique(x))))
    return torch.poisson(x * vals, generator=g) / vals - x


def release_noise(x: torch.Tensor, p: Dict, g: torch.Generator) -> torch.Tensor:
    """BasicSR's batched noise on a batch of one: colour noise always, gray plane blended in."""
    gray = 1.0 if p["gray"] else 0.0
    if p["type"] == "gaussian":
        noise = torch.randn(x.shape, generator=g) * p["sigma"] / 255.0
        if gray:
            plane = (torch.randn(x.shape[-2:], generator=g) * p["sigma"] / 255.0).view(1, 1, *x.shape[-2:])
            noise = noise * (1 - gray) + plane * gray
    else:
        noise = _release_poisson(x, g)
        if gray:
            luma = 0.2989 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            noise = noise * (1 - gray) + _release_poisson(luma, g).expand_as(x) * gray
        noise = noise * p["scale"]
    return torch.clamp(x + noise, 0, 1)


_RELEASE_JPEG = ReleaseJPEG()


def release_style_one(x: torch.Tensor, p: Dict, pad_to: int) -> torch.Tensor:
    """One 1×3×H×W image through the release's chain of operators, with given parameters."""
    g = torch.Generator()
    g.manual_seed(p["noise_seed"])
    h, w = x.shape[-2:]
    k1 = kernel_from_params(p["blur1"], pad_to).float()
    k2 = kernel_from_params(p["blur2"], pad_to).float() if p["blur2"] is not None else None
    sinc = kernel_from_params(p["final"]["sinc"], pad_to).float()  # None → 21×21 pulse, as released
    out = release_filter(x, k1)
    out = F.interpolate(out, scale_factor=p["resize1"]["scale"], mode=p["resize1"]["mode"])
    out = release_noise(out, p["noise1"], g)
    out = _RELEASE_JPEG(torch.clamp(out, 0, 1), p["jpeg1"])
    if k2 is not None:
        out = release_filter(out, k2)
    out = F.interpolate(out, size=tuple(p["resize2"]["size"]), mode=p["resize2"]["mode"])
    out = release_noise(out, p["noise2"], g)
    fin = p["final"]
    if fin["order"] == "resize_sinc_jpeg":
        out = release_filter(F.interpolate(out, size=tuple(fin["size"]), mode=fin["mode"]), sinc)
        out = _RELEASE_JPEG(torch.clamp(out, 0, 1), fin["jpeg"])
    else:
        out = _RELEASE_JPEG(torch.clamp(out, 0, 1), fin["jpeg"])
        out = release_filter(F.interpolate(out, size=tuple(fin["size"]), mode=fin["mode"]), sinc)
    lq = torch.clamp((out * 255.0).round(), 0, 255) / 255.0
    return F.interpolate(lq, size=(h, w), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------- measurement
def _time(fn: Callable[[], torch.Tensor], repeats: int) -> Tuple[float, float, torch.Tensor]:
    out = fn()  # warm-up (pools, caches)
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def test_images(batch: int, size: int, seed: int) -> torch.Tensor:
    """Smooth colour patterns plus fine texture, B×3×size×size in [0, 1]."""
    g = torch.Generator()
    g.manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    phase = torch.rand(batch, 3, 1, 1, generator=g) * 6
    smooth = 0.5 + 0.35 * torch.sin(9 * xx[None, None] + 5 * yy[None, None] + phase)
    return (smooth + 0.08 * torch.rand(batch, 3, size, size, generator=g)).clamp(0, 1)


def run_table(images: torch.Tensor, seeds: Sequence[int], preset: str, threads: int, repeats: int) -> None:
    torch.set_num_threads(threads)
    b, s = images.shape[0], images.shape[-1]
    engine = build_degradation(preset)
    whole = build_degradation(preset, chunk_size=b)
    params = engine(images, seeds=seeds, return_params=True)[1]
    pad_to = engine.spec.kernel_pad_to
    methods = [
        ("engine (CPU default)", lambda: engine(images, seeds=seeds)),
        ("engine, whole batch per stage", lambda: whole(images, seeds=seeds)),
        ("own operators, 1 image at a time", lambda: torch.cat([engine(images[i : i + 1], seeds=[seeds[i]]) for i in range(b)])),
        ("release-style loop", lambda: torch.cat([release_style_one(images[i : i + 1], params[i], pad_to) for i in range(b)])),
    ]
    load_before = os.getloadavg()[0]
    busy0, own0, wall0 = machine_cpu_seconds(), time.process_time(), time.perf_counter()
    rows = [(name,) + _time(fn, repeats) for name, fn in methods]
    others = (machine_cpu_seconds() - busy0 - (time.process_time() - own0)) / (time.perf_counter() - wall0)
    load_after = os.getloadavg()[0]
    ref_wall, ref_cpu, ref_out = rows[0][1], rows[0][2], rows[0][3]
    print(f"\n### preset {preset!r}, {b} images {s}x{s}, torch threads {threads}")
    print(f"machine load: other processes used {max(others, 0.0):.2f} of the {os.cpu_count()} cores during the "
          f"timing (1-min load average, this run included: {load_before:.2f} before, {load_after:.2f} after)")
    same = all(torch.equal(ref_out, r[3]) for r in rows[:3])
    print(f"identical bytes, engine vs whole-batch vs one image at a time: {same}")
    print("| method | images/s | CPU ms/img | engine faster by (wall) | (CPU) | PSNR vs clean, dB (mean ± std) |")
    print("|---|---|---|---|---|---|")
    for name, wall, cpu, out in rows:
        p = psnr_per_image(out, images)
        print(f"| {name} | {b / wall:.2f} | {1000 * cpu / b:.0f} | {wall / ref_wall:.2f}x | {cpu / ref_cpu:.2f}x "
              f"| {p.mean():.2f} ± {p.std():.2f} |")
    diff = psnr_per_image(ref_out, images) - psnr_per_image(rows[3][3], images)
    print(f"paired PSNR difference engine − release-style over the {b} images: {diff.mean():+.2f} ± {diff.std():.2f} dB")


def main(argv: List[str] = None) -> None:
    ap = build_parser()
    a = ap.parse_args(argv)
    images = test_images(a.batch, a.size, a.seed)
    seeds = [a.seed * 1000 + i for i in range(a.batch)]
    for threads in (int(t) for t in a.threads.split(",")):
        run_table(images, seeds, a.preset, threads, a.repeats)


if __name__ == "__main__":
    main()
