#!/usr/bin/env python
"""Print the RAM / DAPE tags of images, to check local tagger weights and files.

Examples:
    python tools/tag_images.py --weights ram_swin_large_14m.pth --tag-list ram_tag_list.txt \\
        --thresholds ram_tag_list_threshold.txt photo1.jpg photos/
    python tools/tag_images.py --tagger dape --weights ram_swin_large_14m.pth --dape-weights DAPE.pth \\
        --tag-list ram_tag_list.txt --thresholds ram_tag_list_threshold.txt --scores lq.png

Each image prints one line `path: tag, tag, ...` (with `--scores`, each tag followed by its
probability). Folders are searched for image files (not recursively). Unreadable images are
reported on stderr and the exit status is then 1. Any config key can be set with
`--opts KEY VALUE ...` (last on the command line).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Sequence, Tuple

from rass.utils.cli import add_init_seed_argument, check_config_file
from rass.utils.errors import UserError
from rass.utils.inputs import collect_image_paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--config-file", default="", help="optional project YAML config")
    p.add_argument("--tagger", default="ram", choices=["ram", "dape"], help="which tagger (default ram)")
    p.add_argument("--weights", default=None, help="ram_swin_large_14m.pth (MODEL.TAGGER.RAM.WEIGHTS)")
    p.add_argument("--dape-weights", default=None, help="DAPE.pth (MODEL.TAGGER.DAPE.WEIGHTS)")
    p.add_argument("--tag-list", default=None, help="ram_tag_list.txt (MODEL.TAGGER.RAM.TAG_LIST)")
    p.add_argument("--thresholds", default=None, help="ram_tag_list_threshold.txt (MODEL.TAGGER.RAM.THRESHOLDS)")
    p.add_argument("--text-bert-config", default=None, help="BERT config of tag encoder/decoder (optional)")
    p.add_argument("--head-bert-config", default=None, help="BERT config of the tagging head (optional)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    p.add_argument("--scores", action="store_true", help="print each tag's probability")
    add_init_seed_argument(p)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p.parse_args(argv)


def read_rgb(path: str) -> "torch.Tensor":  # noqa: F821  (torch is imported after parsing)
    """Image file -> float [3, H, W] in [0, 1] (read as everywhere in the project: any bit depth, upright)."""
    import numpy as np
    import torch

    from rass.utils.image_io import read_image_checked

    arr = read_image_checked(path, "RGB").astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def build_opts(args: argparse.Namespace) -> List[str]:
    opts = ["MODEL.TAGGER.NAME", args.tagger]
    pairs: Tuple[Tuple[str, object], ...] = (
        ("MODEL.TAGGER.RAM.WEIGHTS", args.weights),
        ("MODEL.TAGGER.DAPE.WEIGHTS", args.dape_weights),
        ("MODEL.TAGGER.RAM.TAG_LIST", args.tag_list),
        ("MODEL.TAGGER.RAM.THRESHOLDS", args.thresholds),
        ("MODEL.TAGGER.RAM.TEXT_BERT_CONFIG", args.text_bert_config),
        ("MODEL.TAGGER.RAM.HEAD_BERT_CONFIG", args.head_bert_config),
        ("MODEL.TAGGER.RAM.BATCH_SIZE", args.batch_size),
    )
    for key, value in pairs:
        if value is not None:
            opts += [key, str(value)]
    return opts + list(args.opts)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
    # after parsing: --help and argument errors answer without importing torch & co.
    import torch

    from rass.config import setup_cfg
    from rass.engine.model_build import seeded_init
    from rass.modeling.tagging import build_tagger

    cfg = setup_cfg(args.config_file or None, build_opts(args))
    with seeded_init(args.init_seed):  # a tagger without weights files is random: the same one every run
        tagger = build_tagger(cfg)
    tagger = tagger.to(torch.device(args.device)).eval()
    files, problems = collect_image_paths(args.images)
    failed = [spec for spec, _ in problems]
    for spec, reason in problems:
        print(f"cannot read {spec}: {reason}", file=sys.stderr)
    for start in range(0, len(files), tagger.batch_size):
        batch, names = [], []
        for path in files[start:start + tagger.batch_size]:
            try:
                batch.append(tagger.resize(read_rgb(path)[None])[0])  # common size before stacking
                names.append(path)
            except UserError as e:  # a missing or damaged file: reported, the run goes on (a bug propagates)
                failed.append(path)
                print(f"cannot read {path}: {e.message}", file=sys.stderr)
        if not batch:
            continue
        images = torch.stack(batch)
        if args.scores:
            probs = tagger.tag_probabilities(images)
            for path, idx, prob in zip(names, tagger.kept_indices(probs), probs):
                print(f"{path}: " + ", ".join(f"{tagger.tags[j]} ({prob[j]:.3f})" for j in idx))
        else:
            for path, text in zip(names, tagger(images)):
                print(f"{path}: {text}")
    if not files:
        print("no images found", file=sys.stderr)
        return 1
    if failed:
        print(f"{len(failed)} image(s) could not be read: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
