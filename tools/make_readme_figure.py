#!/usr/bin/env python
"""Make the README's figure (docs/readme_figure.png): one generated scene, its three LQSeg degradation
levels and its labels, all from the project's own code (the synthetic scene generator of the quickstart
and the degradation engine; no downloads, no model). Same bytes for the same arguments.

Example:
    python tools/make_readme_figure.py                     # writes docs/readme_figure.png
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ("lqseg_1", "lqseg_2", "lqseg_3")  # lqseg_1 is the `rass` training preset itself


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (standard library only)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(REPO, "docs", "readme_figure.png"), help="PNG to write")
    p.add_argument("--scene-seed", type=int, default=4, help="seed of the generated scene")
    p.add_argument("--seed", type=int, default=0, help="degradation seed (the same for every level: they differ only in the "
                   "second resize)")
    p.add_argument("--panel", type=int, default=200, help="panel height in pixels")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def make_figure(scene_seed: int, seed: int, panel: int):
    """The figure as a uint8 H x W x 3 array.

    Args:
        scene_seed: seed of `rass.data.synthetic.render_scene`.
        seed: degradation seed of every level (same draws; the levels differ in the second resize only).
        panel: height of each panel in pixels (widths keep the scene's aspect ratio).
    """
    import numpy as np
    import torch
    from PIL import Image, ImageDraw

    from rass.data.datasets.sem_seg import palette
    from rass.data.degradation import build_degradation
    from rass.data.synthetic import render_scene
    from rass.evaluation.visualize import colorize

    image, label = render_scene(scene_seed, 320, 400)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    panels = [("clean", image)]
    for level in LEVELS:
        lq = build_degradation(level)(x, seeds=[seed])[0]
        arr = (lq.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        panels.append((level + (" (= rass)" if level == "lqseg_1" else ""), arr))
    panels.append(("labels (ADE20K classes)", colorize(label, palette(150))))
    h, w = image.shape[:2]
    pw, title_h, gap = round(w * panel / h), 20, 4
    canvas = Image.new("RGB", (len(panels) * (pw + gap) - gap, panel + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (title, arr) in enumerate(panels):
        x0 = k * (pw + gap)
        canvas.paste(Image.fromarray(arr).resize((pw, panel), Image.BICUBIC), (x0, title_h))
        draw.text((x0 + 4, 4), title, fill=(0, 0, 0))
    return np.asarray(canvas)


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    from rass.utils.io import save_image_atomic

    save_image_atomic(a.out, make_figure(a.scene_seed, a.seed, a.panel), optimize=True)
    print(f"wrote {a.out} ({os.path.getsize(a.out):,} bytes)")
    return 0


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer before torch is imported
    from rass.utils.cli import run_cli

    run_cli(main)
