#!/usr/bin/env python
"""Time, FLOPs and peak memory per image of plain SAM2 and MGD-SAM2 (with and without the release's TTA).

    python tools/benchmarks/bench_mgd_sam2.py                       # SAM 2.1-B+ / MGD-SAM2 B+ at 1024 px, CPU
    python tools/benchmarks/bench_mgd_sam2.py --skip mgd_sam2_tta   # leave out the slow 6-pass TTA row
    python tools/benchmarks/bench_mgd_sam2.py --device cuda --repeats 10
    python tools/benchmarks/bench_mgd_sam2.py --size tiny           # the tiny test models at 128 px (seconds)

Random weights (no file is read), eval mode, no_grad, one image. Rows:
- sam2: SAM 2.1 image encoder + one box prompt through the prompt encoder and mask decoder (`Sam2ImageModel`);
- mgd_sam2: MGD-SAM2's five views (encoder on 5 x 512 px, MCEM / HMIM decoder, DRM to 1024 px), one pass;
- mgd_sam2_tta: the release's test protocol, flip x scales 0.75 / 1 / 1.25 (6 passes, mean of logits).
FLOPs: `torch.utils.flop_counter.FlopCounterMode` on the meta device (one multiply-add = 2 FLOPs; attention and
convolutions counted, element-wise ops not). Time: median of --repeats after one warm-up (wall and process CPU
time). Peak memory: each row runs in its own child process: the process's peak RSS on CPU (model weights
included), `torch.cuda.max_memory_allocated` on CUDA.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List

ROWS = ("sam2", "mgd_sam2", "mgd_sam2_tta")


def build_parser() -> argparse.ArgumentParser:
    """The command line (parsed before the heavy imports)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="base_plus", choices=["base_plus", "tiny"],
                   help="base_plus: SAM 2.1-B+ at 1024 px (the release); tiny: the test size at 128 px")
    p.add_argument("--device", default="cpu", help="torch device of the timed runs (cpu, cuda, cuda:1, ...)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per row (median), after one warm-up")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--skip", nargs="*", default=[], choices=ROWS, help="rows to leave out")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs only (meta device, no timing)")
    p.add_argument("--only", default="", choices=("",) + ROWS, help=argparse.SUPPRESS)  # child process: one row
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rass.modeling.mgd_sam2.model import build_mgd_sam2  # noqa: E402
from rass.modeling.mgd_sam2.tta import mgd_sam2_tta_logits  # noqa: E402
from rass.modeling.sam2 import box_points, build_sam2  # noqa: E402

SETTINGS = {  # size -> (SAM2 variant, MGD-SAM2 input side, global blocks, adapter reduction, TTA scales)
    "base_plus": ("base_plus", 1024, (12, 16, 10), 32, (0.75, 1.0, 1.25)),
    "tiny": ("test", 128, None, 4, (0.5, 1.0, 1.5)),
}


def row_call(name: str, size: str, device: str) -> Callable[[], torch.Tensor]:
    """A no-argument call that runs one row once (models built on `device`, "meta" for FLOPs)."""
    variant, side, blocks, reduction, scales = SETTINGS[size]
    g = None if device == "meta" else torch.Generator().manual_seed(0)
    if name == "sam2":
        model = build_sam2(variant, side, device=device, generator=g).requires_grad_(False)
        pixels = torch.randn(1, 3, model.image_size, model.image_size, device=device)
        coords, labels = box_points(torch.tensor([[[0.25, 0.25, 0.75, 0.75]]], device=device) * model.image_size)

        def call() -> torch.Tensor:
            return model.predict(model.image_features(pixels), coords.float(), labels, False)[0]
        return call
    model = build_mgd_sam2(variant, side, blocks, adapter_reduction=reduction, device=device, generator=g)
    model.requires_grad_(False)  # inference only (FlopCounterMode's module tracker trips on leaf parameters)
    pixels = torch.randn(1, 3, side, side, device=device)
    if name == "mgd_sam2":
        return lambda: model.logits(pixels)[0]
    return lambda: mgd_sam2_tta_logits(model, pixels, scales, True, pe_cache=True)


def count_flops(name: str, size: str) -> int:
    """FLOPs of one run of a row (meta device)."""
    call = row_call(name, size, "meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        call()
    return int(counter.get_total_flops())


def measure(name: str, size: str, device: str, repeats: int) -> Dict[str, float]:
    """Median wall / CPU seconds of a row and the peak memory of this process (run it alone in a process)."""
    import resource
    import statistics

    dev = torch.device(device)
    call = row_call(name, size, device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    walls, cpus = [], []
    with torch.no_grad():
        call()  # warm-up
        sync()
        for _ in range(max(1, repeats)):
            w, c = time.perf_counter(), time.process_time()
            call()
            sync()
            walls.append(time.perf_counter() - w)
            cpus.append(time.process_time() - c)
    out = {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    return out


def _child(args, name: str) -> Dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--size", args.size, "--device", args.device,
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: the {name} run failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: List[str] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps(measure(args.only, args.size, args.device, args.repeats)))
        return 0
    rows = [r for r in ROWS if r not in args.skip]
    flops = {r: count_flops(r, args.size) for r in rows}
    stats = {} if args.flops_only else {r: _child(args, r) for r in rows}
    variant, side = SETTINGS[args.size][:2]
    how = "FLOPs only" if args.flops_only else (f"{args.device}, {args.threads or torch.get_num_threads()} threads, "
                                                f"median of {args.repeats}")
    print(f"\nSAM2 {variant} vs MGD-SAM2 on one {side} x {side} image, random weights ({how})\n")
    mem = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| model | GFLOPs | wall s | CPU s | {mem} |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        s = stats.get(r)
        cells = ("-", "-", "-") if s is None else (
            f"{s['wall_s']:.3f}", f"{s['cpu_s']:.3f}", f"{s.get('peak_cuda_mib', s['peak_rss_mib']):.0f}")
        g = flops[r] / 1e9
        print(f"| {r} | {g:.1f} | " if g >= 10 else f"| {r} | {g:.3f} | ", end="")
        print(" | ".join(cells) + " |")
    if "sam2" in flops and "mgd_sam2" in flops:
        print(f"\nMGD-SAM2 (one pass) / SAM2: {flops['mgd_sam2'] / flops['sam2']:.2f}x FLOPs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
