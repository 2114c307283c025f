#!/usr/bin/env python
"""Per-part time and FLOPs of SAM and GleSAM on one 1024x1024 image.

    python tools/benchmarks/bench_glesam.py                         # SAM ViT-L + SD-2.1 CRE UNet (released setting)
    python tools/benchmarks/bench_glesam.py --variant vit_b --repeats 3 --threads 2
    python tools/benchmarks/bench_glesam.py --tiny                  # the tiny test models (seconds)
    python tools/benchmarks/bench_glesam.py --flops-only            # FLOPs on the meta device, no timing

Random weights (no file is read), eval mode, no_grad. One image and 3 positive points go through
SAM's image encoder, GleSAM's latent enhancement (one pass of the CRE UNet: the GLE step) and SAM's
prompt encoder + mask decoder; each part is timed separately (median of --repeats after one warm-up)
and its FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device (one
multiply-add = 2 FLOPs). SAM = encoder + decoder; GleSAM = SAM + the GLE UNet. The release reports
0.32 s (SAM) vs 0.38 s (GleSAM) per image on its GPU: the enhancement should add under a fifth of SAM.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rass.config import setup_cfg  # noqa: E402
from rass.modeling.sam import embedding_shape, sam_image_embeddings, sam_predict  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "lqseg", "glesam_vitl_sd21.yaml")
TINY = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
PARTS = ("SAM image encoder", "GLE UNet (CRE, 1 step)", "SAM prompt encoder + decoder")


def build(args, device: str):
    """The GleSAM model (PromptableSAM with the enhancer) from the packaged config, random weights."""
    from detectron2.modeling import build_model

    opts = ["MODEL.DEVICE", device, "MODEL.SAM.CHECKPOINT", "", "MODEL.GLESAM.LORA_PATH", ""]
    if not args.tiny:
        opts += ["MODEL.SAM.VARIANT", args.variant, "MODEL.GLESAM.SD_PATH", "", "MODEL.GLESAM.ARCH", args.sd]
    return build_model(setup_cfg(TINY if args.tiny else CONFIG, opts)).eval()


def part_calls(model, device: str) -> Dict[str, Callable[[], torch.Tensor]]:
    """One closure per part on fixed inputs (the encoder output feeds the next parts)."""
    side = model.transform.target
    dev = torch.device(device)
    pixels = torch.zeros(1, 3, side, side, device=dev)
    z = torch.zeros((1,) + embedding_shape(model.sam), device=dev)
    points = torch.tensor([[[[side * 0.3, side * 0.4], [side * 0.5, side * 0.5], [side * 0.6, side * 0.7]]]],
                          device=dev)
    labels = torch.ones(1, 1, 3, dtype=torch.long, device=dev)
    return {
        PARTS[0]: lambda: sam_image_embeddings(model.sam, pixels),
        PARTS[1]: lambda: model.enhancer(z),
        PARTS[2]: lambda: sam_predict(model.sam, z, points, labels)[0],
    }


def count_flops(args) -> Dict[str, int]:
    model = build(args, "meta")
    flops = {}
    with torch.no_grad():
        for name, call in part_calls(model, "meta").items():
            counter = FlopCounterMode(display=False)
            with counter:
                call()
            flops[name] = counter.get_total_flops()
    return flops


def time_parts(args) -> Dict[str, float]:
    model = build(args, "cpu")
    times = {}
    with torch.no_grad():
        for name, call in part_calls(model, "cpu").items():
            call()  # warm-up
            runs: List[float] = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                call()
                runs.append(time.perf_counter() - t)
            times[name] = statistics.median(runs)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="vit_l", choices=["vit_b", "vit_l", "vit_h"], help="SAM image encoder")
    p.add_argument("--sd", default="sd21_base", choices=["sd21_base", "sd15"], help="UNet architecture of the GLE step")
    p.add_argument("--tiny", action="store_true", help="the tiny test models (configs/lqseg/tiny_glesam.yaml)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per part (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep torch's default)")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs only (meta device, no timing)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flops = count_flops(args)
    times = {} if args.flops_only else time_parts(args)
    what = "tiny" if args.tiny else f"SAM {args.variant} + {args.sd} CRE UNet"
    print(f"\nGleSAM per image ({what}; {'FLOPs only' if args.flops_only else f'CPU, {torch.get_num_threads()} threads, median of {args.repeats}'})")
    print("| part | GFLOPs | time (s) |\n|---|---|---|")
    for name in PARTS:
        t = f"{times[name]:.3f}" if times else "-"
        print(f"| {name} | {flops[name] / 1e9:.1f} | {t} |")
    sam_f = flops[PARTS[0]] + flops[PARTS[2]]
    gle_f = sam_f + flops[PARTS[1]]
    rows = [("SAM (encoder + decoder)", sam_f, times and times[PARTS[0]] + times[PARTS[2]]),
            ("GleSAM (SAM + GLE UNet)", gle_f, times and times[PARTS[0]] + times[PARTS[1]] + times[PARTS[2]])]
    for name, f, t in rows:
        print(f"| **{name}** | {f / 1e9:.1f} | {f'{t:.3f}' if times else '-'} |")
    extra = flops[PARTS[1]] / sam_f
    print(f"\nGLE step adds {100 * extra:.1f}% of SAM's FLOPs"
          + (f" and {100 * times[PARTS[1]] / (times[PARTS[0]] + times[PARTS[2]]):.1f}% of its time" if times else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
