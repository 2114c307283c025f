#!/usr/bin/env python
"""Per-image cost of the semantic evaluator next to the inference it evaluates (CPU).

    python tools/benchmarks/bench_sem_seg_eval.py                       # 224x224, 512x512, 2048x1024
    python tools/benchmarks/bench_sem_seg_eval.py --sizes 512x512 --images 5 --threads 1

For each image size (W x H) it generates --images smooth RGB images and ADE20K-like label maps (150
classes, about 12 present per image in Voronoi regions, 1% ignored pixels), registers them as a
temporary dataset and times, per image:

- inference: the model's forward pass (the tiny RASS model of configs/quickstart/tiny_rass.yaml with
  random weights unless --config-file / --opts say otherwise), from the test-time resized input
  (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) to the 150 x H x W scores at the image's size;
- evaluator: `CheckedSemSegEvaluator.process` on those scores (arg-max, label loading and checks,
  confusion matrix, per-class Boundary IoU counts, the RLE predictions written to
  sem_seg_predictions.json), and its share of the inference time.

Medians over the images after one warm-up image. The last column is the CPU time other processes
used per image during the row (from /proc/stat): a busy machine slows every number down.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import List, Tuple

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)


def parse_size(text: str) -> Tuple[int, int]:
    """"2048x1024" -> (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 512x512, got {text!r}") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(REPO, "configs/quickstart/tiny_rass.yaml"))
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(224, 224), (512, 512), (2048, 1024)],
                   help="image sizes WIDTHxHEIGHT")
    p.add_argument("--images", type=int, default=3, help="timed images per size (after one warm-up image)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES  # noqa: E402

from rass.config import setup_cfg  # noqa: E402
from rass.engine import SemanticPredictor  # noqa: E402
from rass.engine.model_build import seeded_init  # noqa: E402
from rass.evaluation import CheckedSemSegEvaluator  # noqa: E402
from rass.utils.system import machine_cpu_seconds  # noqa: E402

IGNORE = 255


def image_and_label(h: int, w: int, seed: int, num_classes: int, present: int = 12) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth H x W x 3 uint8 image and an H x W uint8 label map: 2 * `present` Voronoi cells
    coloured with `present` of the classes, 1% of the pixels ignored."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centres = g.uniform(0, 1, (2 * present, 2)) * (h, w)
    dist = np.stack([(yy - cy) ** 2 + (xx - cx) ** 2 for cy, cx in centres])
    classes = g.choice(num_classes, present, replace=False)
    label = classes[dist.argmin(0) % present].astype(np.uint8)
    label[g.random((h, w)) < 0.01] = IGNORE
    phase = g.uniform(0, 6, 3)
    smooth = 0.5 + 0.35 * np.sin(9 * xx[..., None] / w + 5 * yy[..., None] / h + phase)
    image = np.clip((smooth + 0.08 * g.random((h, w, 3))) * 255, 0, 255).astype(np.uint8)
    return image, label


def bench_size(predictor: SemanticPredictor, w: int, h: int, n: int, tmp: str) -> List[float]:
    """[model input H, W, inference ms, evaluator ms, other CPU s] (medians per image) at W x H."""
    k = len(predictor.class_names)
    name = f"bench_sem_seg_eval_{uuid.uuid4().hex[:8]}"
    records, images = [], []
    for i in range(n + 1):
        image, label = image_and_label(h, w, seed=i, num_classes=k)
        path = os.path.join(tmp, f"{name}_{i}.png")
        Image.fromarray(label).save(path)
        records.append({"file_name": f"{name}_{i}.jpg", "sem_seg_file_name": path, "height": h, "width": w})
        images.append(image)
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=list(predictor.class_names), ignore_label=IGNORE)
    try:
        ev = CheckedSemSegEvaluator(name, distributed=False, output_dir=os.path.join(tmp, name))
        ev.reset()
        infer, evaluate, other = [], [], []
        for i, (rec, image) in enumerate(zip(records, images)):
            inp = predictor.preprocess(image)
            cpu0, own0 = machine_cpu_seconds(), time.process_time()
            t0 = time.perf_counter()
            with torch.no_grad():
                out = predictor.model([inp])
            t1 = time.perf_counter()
            ev.process([{"file_name": rec["file_name"]}], out)
            t2 = time.perf_counter()
            if i:  # the first image warms up
                infer.append(t1 - t0)
                evaluate.append(t2 - t1)
                other.append(max(0.0, (machine_cpu_seconds() - cpu0) - (time.process_time() - own0)))
            del out
        ev.evaluate()
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    return [*inp["image"].shape[-2:], 1000 * statistics.median(infer), 1000 * statistics.median(evaluate),
            statistics.median(other)]


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"])
    with seeded_init():
        predictor = SemanticPredictor(cfg, allow_random_weights=True)
    if len(predictor.class_names) != len(ADE20K_SEM_SEG_CATEGORIES):
        print(f"note: the model has {len(predictor.class_names)} classes (ADE20K: {len(ADE20K_SEM_SEG_CATEGORIES)})")
    print(f"CheckedSemSegEvaluator.process vs inference, {os.path.relpath(args.config_file, REPO)} "
          f"{' '.join(args.opts)}".rstrip())
    print(f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}; medians of {args.images} image(s)")
    header = (f"{'image WxH':>10}  {'model input':>11}  {'inference ms/img':>16}  {'evaluator ms/img':>16}  "
              f"{'eval/inference':>14}  {'other CPU s/img':>15}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in args.sizes:
            mh, mw, infer, ev, other = bench_size(predictor, w, h, args.images, tmp)
            size, model_size = f"{w}x{h}", f"{mw}x{mh}"
            print(f"{size:>10}  {model_size:>11}  {infer:>16.1f}  {ev:>16.1f}  {ev / infer:>14.0%}  {other:>15.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
