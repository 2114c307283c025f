#!/usr/bin/env python
"""Per-iteration time and peak memory of GleSAM's two training stages (through the project's Trainer).

    python tools/benchmarks/bench_glesam_train.py                    # tiny configs, CPU (seconds)
    python tools/benchmarks/bench_glesam_train.py --iters 10 --threads 2
    python tools/benchmarks/bench_glesam_train.py --full --device cuda   # released configs (ViT-L + SD-2.1), a GPU

Each stage runs in its own process (so peak memory is that stage's): `Trainer` on the stage's config
(tiny: configs/lqseg/tiny_glesam_stage{1,2}.yaml; --full: glesam_stage{1,2}_vitl_sd21.yaml with random
weights — no file is read), trained on a generated LQSeg-layout set (tools/make_synthetic_lqseg.py,
written to a temporary folder) for --warmup + --iters iterations; the table gives the median time of
the timed iterations (detectron2's per-iteration "time"), the peak resident memory of the process
(CPU) and the peak allocated GPU memory (CUDA). Stage 1 is benchmarked with both recipes
(MODEL.GLESAM.STAGE1_LOSS paper / release).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNS = [("stage 1 (paper: MSE)", "1", "paper"), ("stage 1 (release: MSE + DMD2 + GAN)", "1", "release"),
        ("stage 2 (decoder: Dice + Focal)", "2", "")]


def config_of(stage: str, full: bool) -> str:
    name = f"glesam_stage{stage}_vitl_sd21.yaml" if full else f"tiny_glesam_stage{stage}.yaml"
    return os.path.join(REPO, "configs", "lqseg", name)


def run_stage(args) -> Dict[str, float]:
    """One stage in this process; returns its figures."""
    sys.path.insert(0, REPO)
    import torch

    from rass.config import setup_cfg
    from rass.data.synthetic_masks import make_synthetic_lqseg
    from rass.engine import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_lqseg(os.path.join(tmp, "data"), 0, num_images=1, levels=[1], num_train=8)
        os.environ["RASS_LQSEG_SYNTHETIC_ROOT"] = os.path.join(tmp, "data")
        opts = ["MODEL.DEVICE", args.device, "SOLVER.MAX_ITER", str(args.warmup + args.iters),
                "SOLVER.CHECKPOINT_PERIOD", str(10 ** 9), "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()",
                "DATASETS.TRAIN", '("lqseg_synthetic_train",)', "OUTPUT_DIR", os.path.join(tmp, "out"),
                "DATALOADER.NUM_WORKERS", "0"]
        if args.stage1_loss:
            opts += ["MODEL.GLESAM.STAGE1_LOSS", args.stage1_loss]
        if args.full:  # random weights: nothing is read
            opts += ["MODEL.SAM.CHECKPOINT", "", "MODEL.GLESAM.SD_PATH", "", "MODEL.GLESAM.LORA_PATH", "",
                     "MODEL.WEIGHTS", ""]
        cfg = setup_cfg(config_of(args.stage, args.full), opts)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        times = [v for v, _ in trainer.storage.history("time").values()][args.warmup:]
        out = {"time_s": statistics.median(times) if times else float("nan"), "iters": len(times),
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
               "batch": int(cfg.SOLVER.IMS_PER_BATCH)}
        if args.device.startswith("cuda"):
            out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
        return out


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="the released full-size configs (random weights)")
    p.add_argument("--device", default="cpu", help="MODEL.DEVICE (cpu or cuda)")
    p.add_argument("--warmup", type=int, default=2, help="iterations not timed")
    p.add_argument("--iters", type=int, default=5, help="timed iterations")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--stage", choices=["1", "2"], help=argparse.SUPPRESS)  # internal: one stage, JSON out
    p.add_argument("--stage1-loss", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage:
        print("RESULT " + json.dumps(run_stage(args)))
        return 0
    rows = []
    for name, stage, loss in RUNS:
        cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--device", args.device, "--warmup",
               str(args.warmup), "--iters", str(args.iters), "--threads", str(args.threads)]
        cmd += (["--stage1-loss", loss] if loss else []) + (["--full"] if args.full else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        if r.returncode or not line:
            print(f"{name}: failed (exit {r.returncode}):\n{r.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append((name, json.loads(line[-1][len("RESULT "):])))
    what = "full size (SAM ViT-L + SD-2.1 CRE UNet)" if args.full else "tiny configs"
    print(f"\nGleSAM training, {what}, {args.device}, median of {args.iters} iterations after {args.warmup}")
    cuda = args.device.startswith("cuda")
    print("| stage | images/it | s/it | peak RSS (MiB) |" + (" peak CUDA (MiB) |" if cuda else ""))
    print("|---|---|---|---|" + ("---|" if cuda else ""))
    for name, r in rows:
        cells = [name, str(r["batch"]), f"{r['time_s']:.3f}", f"{r['peak_rss_mib']:.0f}"]
        if cuda:
            cells.append(f"{r['peak_cuda_mib']:.0f}")
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
