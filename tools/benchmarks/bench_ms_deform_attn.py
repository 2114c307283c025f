#!/usr/bin/env python
"""CPU timing of multi-scale deformable attention: compiled kernel vs pure-PyTorch grid_sample.

    python tools/benchmarks/bench_ms_deform_attn.py                 # Mask2Former-sized input
    python tools/benchmarks/bench_ms_deform_attn.py --repeats 20 --threads 2

Default input (as in Mask2Former's pixel decoder at a 512x512 image): 3 levels 64x64, 32x32,
16x16; 8 heads x 32 channels; 4 points per head and level; one query per token (Lq = S = 5376);
batch 1. Prints a table of median times (forward, forward+backward) and the speed-up.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Sequence


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--levels", type=int, nargs="+", default=[64, 32, 16], help="square level sides")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--points", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402

from rass.ops import kernel_available, ms_deform_attn  # noqa: E402


def make_inputs(batch: int, levels: Sequence[int], heads: int, head_dim: int, points: int, seed: int = 0,
                device: str = "cpu"):
    """Random inputs (drawn on the CPU, then moved to `device`); `levels` are square side lengths; one query
    per value token."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[s, s] for s in levels], dtype=torch.long)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    value = torch.randn(batch, s, heads, head_dim, generator=g)
    loc = torch.rand(batch, s, heads, len(levels), points, 2, generator=g)
    w = torch.rand(batch, s, heads, len(levels), points, generator=g)
    w = w / w.sum((-1, -2), keepdim=True)
    return tuple(t.to(device) for t in (value, shapes, starts, loc, w))


def time_it(fn: Callable[[], None], warmup: int, repeats: int, sync: Callable[[], None] = lambda: None) -> List[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` calls; `sync` waits for queued device work."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def bench(backend: str, inputs, warmup: int, repeats: int) -> Dict[str, float]:
    """Median seconds of a forward (no_grad) and a forward+backward on `inputs` (any one device)."""
    value, shapes, starts, loc, w = inputs
    sync = torch.cuda.synchronize if value.device.type == "cuda" else (lambda: None)

    def forward():
        with torch.no_grad():
            ms_deform_attn(value, shapes, starts, loc, w, backend=backend)

    leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
    grad = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                       generator=torch.Generator().manual_seed(1)).to(value.device)

    def forward_backward():
        for t in leaves:
            t.grad = None
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        out.backward(grad)

    return {
        "forward": statistics.median(time_it(forward, warmup, repeats, sync)),
        "forward+backward": statistics.median(time_it(forward_backward, warmup, repeats, sync)),
    }


def main(argv: Sequence[str] = None) -> Dict[str, Dict[str, float]]:
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    inputs = make_inputs(args.batch, args.levels, args.heads, args.head_dim, args.points)
    backends = ["torch"] + (["kernel"] if kernel_available("cpu") else [])
    results = {b: bench(b, inputs, args.warmup, args.repeats) for b in backends}

    s = inputs[0].shape[1]
    print(f"ms_deform_attn on CPU ({torch.get_num_threads()} threads): batch {args.batch}, levels "
          f"{'/'.join(f'{x}x{x}' for x in args.levels)}, {args.heads} heads x {args.head_dim}, {args.points} points, "
          f"Lq = S = {s}; median of {args.repeats}")
    if "kernel" in results:
        with torch.no_grad():
            a = ms_deform_attn(*inputs, backend="kernel")
            b = ms_deform_attn(*inputs, backend="torch")
        print(f"max relative difference kernel vs torch (forward): {((a - b).abs().max() / b.abs().max()).item():.2e}")
    else:
        print("kernel not available: torch-ms-deform-attn is not installed / built for the CPU")
    print(f"| {'pass':<18} | {'torch (ms)':>11} | {'kernel (ms)':>11} | {'speed-up':>8} |")
    print(f"|{'-' * 20}|{'-' * 13}|{'-' * 13}|{'-' * 10}|")
    for pass_name in ("forward", "forward+backward"):
        t = results["torch"][pass_name] * 1e3
        if "kernel" in results:
            k = results["kernel"][pass_name] * 1e3
            print(f"| {pass_name:<18} | {t:>11.1f} | {k:>11.1f} | {t / k:>7.2f}x |")
        else:
            print(f"| {pass_name:<18} | {t:>11.1f} | {'-':>11} | {'-':>8} |")
    return results


if __name__ == "__main__":
    main()
