#!/usr/bin/env python
"""Latency of `SemanticPredictor` per 512x512 RGB image on the CPU (what demo/demo.py runs).

    python tools/benchmarks/bench_predictor.py                                # tiny RASS, 1 and 2 threads
    python tools/benchmarks/bench_predictor.py --config-file configs/quickstart/tiny_maskformer_r18.yaml
    python tools/benchmarks/bench_predictor.py --opts INPUT.MIN_SIZE_TEST 512  # no down-scaling

The model is built from the config and its (random) weights are saved to a temporary checkpoint
that the predictor loads (or `--weights FILE`). Each row times the whole predictor call on
512x512 images (format conversion, test-time resize to INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, model,
scores back at 512x512, arg-max): one image per call, and `predict_batch` of --batch images
(time per image). Median and best of --repeats runs after one warm-up. The CPU time other
processes used during each row is printed (from /proc/stat): other load slows every row down,
2-thread rows most.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs/quickstart/tiny_rass.yaml"))
    p.add_argument("--weights", default="", help="checkpoint (default: the built model's random weights)")
    p.add_argument("--size", type=int, default=512, help="square image side")
    p.add_argument("--batch", type=int, default=4, help="images per predict_batch call")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per row")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402
from rass.config import setup_cfg  # noqa: E402
from rass.engine import SemanticPredictor  # noqa: E402
from rass.utils.system import machine_cpu_seconds  # noqa: E402


def images(n: int, size: int, seed: int) -> List[np.ndarray]:
    """Smooth colour patterns with fine noise, n x size x size x 3 uint8."""
    g = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = []
    for _ in range(n):
        phase = g.uniform(0, 6, 3)
        smooth = 0.5 + 0.35 * np.sin(9 * xx[..., None] + 5 * yy[..., None] + phase)
        out.append(np.clip((smooth + 0.08 * g.random((size, size, 3))) * 255, 0, 255).astype(np.uint8))
    return out


def timed(fn: Callable[[], object], repeats: int, per: int):
    """(median s, best s, other processes' CPU s per image) of `fn`, per image."""
    fn()  # warm-up
    times, others = [], []
    for _ in range(repeats):
        cpu0, own0, t0 = machine_cpu_seconds(), time.process_time(), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        others.append(max(0.0, (machine_cpu_seconds() - cpu0) - (time.process_time() - own0)) / per)
        times.append(wall / per)
    return statistics.median(times), min(times), statistics.median(others)


def main() -> None:
    p = build_parser()
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if not weights:
            from detectron2.modeling import build_model

            from rass.checkpoint import RASSCheckpointer
            from rass.engine.model_build import seeded_init

            with seeded_init():
                model = build_model(setup_cfg(args.config_file, args.opts))
            RASSCheckpointer(model, tmp).save("random")
            weights = os.path.join(tmp, "random.pth")
        cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
        predictor = SemanticPredictor(cfg)
    ims = images(args.batch, args.size, seed=0)
    model_hw = predictor.preprocess(ims[0])["image"].shape[-2:]
    print(f"SemanticPredictor, {os.path.relpath(args.config_file, REPO)} {' '.join(args.opts)}".rstrip())
    print(f"input {args.size}x{args.size} RGB uint8 -> model input {model_hw[0]}x{model_hw[1]} "
          f"(INPUT.MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST}, MAX_SIZE_TEST {cfg.INPUT.MAX_SIZE_TEST}) -> "
          f"{len(predictor.class_names)} x {args.size} x {args.size} scores; CPU, float32, torch {torch.__version__}")
    header = f"{'threads':>7}  {'call':<22}{'median ms/img':>14}{'best ms/img':>12}{'img/s':>8}{'other CPU s/img':>17}"
    print(header)
    print("-" * len(header))
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = [("predictor(image)", lambda: [predictor(im) for im in ims], len(ims)),
                (f"predict_batch({args.batch})", lambda: predictor.predict_batch(ims), len(ims))]
        for name, fn, per in rows:
            med, best, other = timed(fn, args.repeats, per)
            print(f"{threads:>7}  {name:<22}{1000 * med:>14.1f}{1000 * best:>12.1f}{1 / med:>8.2f}{other:>17.2f}")


if __name__ == "__main__":
    main()
