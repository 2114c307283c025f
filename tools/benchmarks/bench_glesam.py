#!/usr/bin/env python
"""Per-part time and FLOPs of SAM and GleSAM on one 1024x1024 image.

    python tools/benchmarks/bench_glesam.py                         # SAM ViT-L + SD-2.1 CRE UNet (released setting)
    python tools/benchmarks/bench_glesam.py --variant vit_b --repeats 3 --threads 2
    python tools/benchmarks/bench_glesam.py --image-size 512 --threads 2   # mid-size: 512 px, 32x32 latent
    python tools/benchmarks/bench_glesam.py --tiny                  # the tiny test models (seconds)
    python tools/benchmarks/bench_glesam.py --flops-only            # FLOPs on the meta device, no timing

Random weights (no file is read), eval mode, no_grad. One image and 3 positive points go through
SAM's image encoder, GleSAM's latent enhancement (one pass of the CRE UNet: the GLE step) and SAM's
prompt encoder + mask decoder; each part is timed separately (median of --repeats after one warm-up;
wall time and the process's CPU time, which is steadier on a shared machine) and its FLOPs are counted
with `torch.utils.flop_counter.FlopCounterMode` on the meta device (one multiply-add = 2 FLOPs).
The GLE step is timed twice on the same model, runs alternated: with the LoRA merged into the UNet's
weights (the default for inference, MODEL.GLESAM.MERGE_LORA) and with base and LoRA apart (as the
release runs it). SAM = encoder + decoder; GleSAM = SAM + the GLE UNet. The release reports 0.32 s (SAM)
vs 0.38 s (GleSAM) per image on its GPU: the enhancement should add under a fifth of SAM.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="vit_l", choices=["vit_b", "vit_l", "vit_h"], help="SAM image encoder")
    p.add_argument("--sd", default="sd21_base", choices=["sd21_base", "sd15"], help="UNet architecture of the GLE step")
    p.add_argument("--tiny", action="store_true", help="the tiny test models (configs/lqseg/tiny_glesam.yaml)")
    p.add_argument("--image-size", type=int, default=0,
                   help="SAM input side (MODEL.SAM.IMAGE_SIZE; the latent side is 1/16 of it); 0: the config's")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per part (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep torch's default)")
    p.add_argument("--flops-only", action="store_true", help="count FLOPs only (meta device, no timing)")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rass.config import setup_cfg  # noqa: E402
from rass.modeling.diffusion.lora import lora_layers  # noqa: E402
from rass.modeling.sam import embedding_shape, sam_image_embeddings, sam_predict  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "lqseg", "glesam_vitl_sd21.yaml")
TINY = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
ENCODER, MERGED, APART, DECODER = ("SAM image encoder", "GLE UNet (CRE, 1 step), LoRA merged",
                                   "GLE UNet (CRE, 1 step), LoRA apart (release)", "SAM prompt encoder + decoder")
PARTS = (ENCODER, MERGED, APART, DECODER)


def build(args, device: str):
    """The GleSAM model (PromptableSAM with the enhancer) from the packaged config, random weights."""
    from detectron2.modeling import build_model

    from rass.engine.model_build import seeded_init

    opts = ["MODEL.DEVICE", device, "MODEL.SAM.CHECKPOINT", "", "MODEL.GLESAM.LORA_PATH", ""]
    if not args.tiny:
        opts += ["MODEL.SAM.VARIANT", args.variant, "MODEL.GLESAM.SD_PATH", "", "MODEL.GLESAM.ARCH", args.sd]
    if args.image_size:
        opts += ["MODEL.SAM.IMAGE_SIZE", str(args.image_size)]
    with seeded_init():
        return build_model(setup_cfg(TINY if args.tiny else CONFIG, opts)).eval()


def _enhance(model, z: torch.Tensor, merged: bool) -> torch.Tensor:
    """The GLE step with the LoRA merged or apart (on meta nothing can be merged: the adapters are
    switched off instead, which counts the FLOPs of the merged UNet)."""
    if z.device.type == "meta":
        for layer in lora_layers(model.enhancer.unet):
            layer.enable_adapters(not merged)
    else:
        model.enhancer.set_lora_merging(merged)  # a no-op when already so (the timed runs: see time_parts)
    return model.enhancer(z)


def part_calls(model, device: str) -> Dict[str, Callable[[], torch.Tensor]]:
    """One closure per part on fixed inputs: a seeded random image, an embedding-shaped input and 3 points."""
    side = model.transform.target
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, side, side, generator=g).to(dev)
    z = torch.randn((1,) + embedding_shape(model.sam), generator=g).to(dev)
    points = torch.tensor([[[[side * 0.3, side * 0.4], [side * 0.5, side * 0.5], [side * 0.6, side * 0.7]]]],
                          device=dev)
    labels = torch.ones(1, 1, 3, dtype=torch.long, device=dev)
    return {
        ENCODER: lambda: sam_image_embeddings(model.sam, pixels),
        MERGED: lambda: _enhance(model, z, True),
        APART: lambda: _enhance(model, z, False),
        DECODER: lambda: sam_predict(model.sam, z, points, labels)[0],
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


def _timed(call: Callable[[], torch.Tensor]) -> Tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def time_parts(args) -> Dict[str, Tuple[float, float]]:
    """Median (wall s, CPU s) per part; the two GLE variants alternate run by run (same model, same
    machine load), each (un)merged before its timer starts."""
    model = build(args, "cpu")
    calls = part_calls(model, "cpu")
    runs: Dict[str, List[Tuple[float, float]]] = {name: [] for name in PARTS}
    with torch.no_grad():
        for group in ((ENCODER,), (MERGED, APART), (DECODER,)):
            for name in group:
                calls[name]()  # warm-up
            for i in range(args.repeats):
                for name in group if i % 2 == 0 else group[::-1]:
                    if name in (MERGED, APART):
                        model.enhancer.set_lora_merging(name == MERGED)
                    runs[name].append(_timed(calls[name]))
    return {name: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for name, v in runs.items()}


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flops = count_flops(args)
    times = {} if args.flops_only else time_parts(args)
    what = "tiny" if args.tiny else f"SAM {args.variant} + {args.sd} CRE UNet"
    side = args.image_size or ("256" if args.tiny else "1024")
    how = "FLOPs only" if args.flops_only else f"CPU, {torch.get_num_threads()} threads, median of {args.repeats}"
    print(f"\nGleSAM per image ({what}, {side} px; {how})")
    print("| part | GFLOPs | time (s) | CPU time (s) |\n|---|---|---|---|")

    def cells(t) -> str:
        return f"{t[0]:.3f} | {t[1]:.3f}" if t else "- | -"

    def total(names):
        return sum(flops[n] for n in names), (tuple(sum(times[n][i] for n in names) for i in range(2)) if times else ())

    for name in PARTS:
        print(f"| {name} | {flops[name] / 1e9:.1f} | {cells(times.get(name))} |")
    for name, names in (("SAM (encoder + decoder)", (ENCODER, DECODER)),
                        ("GleSAM, LoRA merged (default)", (ENCODER, MERGED, DECODER)),
                        ("GleSAM, LoRA apart (release)", (ENCODER, APART, DECODER))):
        f, t = total(names)
        print(f"| **{name}** | {f / 1e9:.1f} | {cells(t)} |")
    sam_f, sam_t = total((ENCODER, DECODER))
    print(f"\nGLE step (LoRA merged) adds {100 * flops[MERGED] / sam_f:.1f}% of SAM's FLOPs"
          + (f" and {100 * times[MERGED][0] / sam_t[0]:.1f}% of its time" if times else ""))
    ratio = f"GLE step, LoRA apart / merged: {flops[APART] / flops[MERGED]:.3f}x FLOPs"
    if times:
        ratio += f", {times[APART][0] / times[MERGED][0]:.3f}x time, {times[APART][1] / times[MERGED][1]:.3f}x CPU time"
    print(ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
