#!/usr/bin/env python
"""Promptable segmentation with SAM / GleSAM / RobustSAM / Stable-SAM / HQ-SAM on your images: masks for points
and boxes.

    python demo/demo_sam.py --config-file configs/lqseg/glesam_vitl_sd21.yaml --input photo.jpg \\
        --points 120,80 300,200,0 --output out/
    python demo/demo_sam.py --config-file configs/lqseg/glesam_vitl_sd21.yaml --input photos/ --box 10,20,300,240 \\
        --compare --output out/
    python demo/demo_sam.py --config-file configs/lqseg/tiny_glesam.yaml --input "imgs/*.png" --prompts prompts.json

Prompts are pixel coordinates of each input image: `--points x,y[,label] ...` (label 1 positive,
the default, or 0 negative) and/or `--box x1,y1,x2,y2`, the same for every image, or `--prompts
FILE.json` — either one object {"points": [[x, y], ...], "labels": [1, ...], "box": [x1, y1, x2, y2]}
for every image or {"<file name or stem>": {...}, ...} per image (command-line prompts are used for
images the file does not name). A point or box outside an image is an error naming it.

With `--output` each image gives `<name>.png` (the mask over the image, prompts drawn: positive
points green, negative red, the box blue) and `<name>_mask.png` (0/255). `--compare` runs plain SAM
(MODEL.GLESAM.ENHANCE off, the same SAM weights) and GleSAM on the same prompts: `<name>.png` shows
SAM | GleSAM side by side, masks go to `<name>_sam_mask.png` and `<name>_glesam_mask.png`, and the IoU
between the two masks is printed. With a RobustSAM config (configs/lqseg/robustsam_vit_*.yaml) the
mask is RobustSAM's, and `--compare` puts plain SAM with the same weights (SAM's own decoder) next to it:
`<name>_sam_mask.png` and `<name>_robustsam_mask.png`. A Stable-SAM config (configs/lqseg/stable_sam_vit_*.yaml)
gives Stable-SAM's mask (`--compare`: plain SAM with the same SAM weights next to it, `<name>_stable_sam_mask.png`);
an HQ-SAM config (configs/lqseg/sam_hq_vit_*.yaml) HQ-SAM's (no `--compare`: run a SAM config of the same size).
Without `--output` the mask area and the model's predicted IoU are printed.
`--box-noise SCALE [--box-noise-seed N]` replaces each image's box by one seeded noisy draw before predicting:
HQ-SAM's box-noise form with the prompt-quality protocol's box rules (`rass.data.prompt_quality.noisy_box`,
generator `numpy.random.default_rng(N)`, the same draw for every image; clamped to each image), the same draw as
the browser demo's "Perturb my box" with that seed; the perturbed box is printed. SCALE >= 0 (0: the box itself).
Weights: MODEL.SAM.CHECKPOINT, MODEL.GLESAM.LORA_PATH, MODEL.ROBUSTSAM.CHECKPOINT, MODEL.STABLE_SAM.PLUGIN_WEIGHTS,
MODEL.SAM_HQ.CHECKPOINT (and MODEL.WEIGHTS for a project checkpoint), as `KEY VALUE` pairs after `--opts`.
`--config-file configs/quickstart/tiny_promptable.yaml` without MODEL.WEIGHTS runs the quickstart's trained tiny model
(output/quickstart/promptable/model_final.pth, written by scripts/quickstart.sh); a model with random
parts is announced: its masks mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only what parsing the arguments, the prompts and the outputs needs is imported here: `--help` and
# argument errors answer at once; torch, detectron2 and the model come in `main` after them.
from rass.utils.cli import (DEBUG_FLAG, DEBUG_HELP, add_init_seed_argument, check_config_file,  # noqa: E402
                            enable_debug, run_cli)
from rass.utils.errors import UserError, UserValueError  # noqa: E402
from rass.utils.inputs import collect_image_paths  # noqa: E402
from rass.utils.io import save_image_atomic  # noqa: E402
from rass.utils.outputs import check_writable, image_outputs  # noqa: E402

if TYPE_CHECKING:
    from rass.engine import PromptablePredictor

Prompt = Dict[str, object]


class PromptError(UserError, ValueError):
    """A prompt given on the command line or in the prompts file is malformed."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="a configs/lqseg/*.yaml config")
    p.add_argument("--input", nargs="+", required=True, help="images, folders or glob patterns")
    p.add_argument("--points", nargs="*", default=[], metavar="X,Y[,LABEL]", help="point prompts (label 1 or 0)")
    p.add_argument("--box", default=None, metavar="X1,Y1,X2,Y2", help="box prompt")
    p.add_argument("--prompts", default=None, metavar="FILE.json", help="prompts for all or for each image")
    p.add_argument("--compare", action="store_true",
                   help="plain SAM and GleSAM (or RobustSAM, with a RobustSAM config) side by side on the same prompts")
    p.add_argument("--box-noise", type=float, default=None, metavar="SCALE",
                   help="replace each box by one seeded noisy draw of this scale (>= 0; HQ-SAM's box noise)")
    p.add_argument("--box-noise-seed", type=int, default=0, metavar="N", help="seed of --box-noise's draw (>= 0)")
    p.add_argument("--output", default=None, help="folder (or a .png/.jpg file for one input)")
    p.add_argument("--opacity", type=float, default=0.5, help="mask opacity in the overlay")
    add_init_seed_argument(p)
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p.parse_args(argv)


# ----------------------------------------------------------------- prompts
def _numbers(text: str, n: Tuple[int, ...], what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in n:
        raise PromptError(f"{what} {text!r}: expected {' or '.join(str(k) for k in n)} comma-separated numbers")
    return values


def command_line_prompt(points: Sequence[str], box: Optional[str]) -> Optional[Prompt]:
    """The --points / --box prompt (None when neither is given)."""
    if not points and box is None:
        return None
    coords, labels = [], []
    for text in points:
        v = _numbers(text, (2, 3), "--points")
        if len(v) == 3 and v[2] not in (0.0, 1.0):
            raise PromptError(f"--points {text!r}: the label must be 1 (positive) or 0 (negative)")
        coords.append(v[:2])
        labels.append(int(v[2]) if len(v) == 3 else 1)
    return {"points": coords, "labels": labels, "box": _numbers(box, (4,), "--box") if box is not None else None}


def _check_prompt(p: object, where: str) -> Prompt:
    if not isinstance(p, dict) or not set(p) <= {"points", "labels", "box"} or not p:
        raise PromptError(f"{where}: expected an object with 'points' ([[x, y], ...]), optional 'labels' and/or "
                          f"'box' ([x1, y1, x2, y2]), got {json.dumps(p)[:120]}")
    points = p.get("points") or []
    if not all(isinstance(q, list) and len(q) == 2 and all(isinstance(c, (int, float)) for c in q) for q in points):
        raise PromptError(f"{where}: 'points' must be a list of [x, y] pairs")
    labels = p.get("labels")
    if labels is not None and (len(labels) != len(points) or any(v not in (0, 1) for v in labels)):
        raise PromptError(f"{where}: 'labels' must give 0 or 1 for each of the {len(points)} points")
    box = p.get("box")
    if box is not None and (len(box) != 4 or not all(isinstance(c, (int, float)) for c in box)):
        raise PromptError(f"{where}: 'box' must be [x1, y1, x2, y2]")
    if not points and box is None:
        raise PromptError(f"{where}: neither points nor a box")
    return {"points": points, "labels": labels if labels is not None else [1] * len(points), "box": box}


def read_prompt_file(path: str) -> Tuple[Optional[Prompt], Dict[str, Prompt]]:
    """(prompt for every image or None, {file name or stem: prompt})."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise PromptError(f"--prompts {path}: cannot be read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise PromptError(f"--prompts {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and set(data) <= {"points", "labels", "box"}:
        return _check_prompt(data, f"--prompts {path}"), {}
    if not isinstance(data, dict):
        raise PromptError(f"--prompts {path}: expected a JSON object (one prompt, or file name -> prompt)")
    return None, {str(k): _check_prompt(v, f"--prompts {path}, entry {k!r}") for k, v in data.items()}


def prompts_for(paths: Sequence[str], cli: Optional[Prompt], shared: Optional[Prompt],
                per_image: Dict[str, Prompt]) -> Dict[str, Prompt]:
    """The prompt of each input image; an image with none is an error naming it."""
    out, missing = {}, []
    for path in paths:
        name = os.path.basename(path)
        p = per_image.get(name) or per_image.get(os.path.splitext(name)[0]) or shared or cli
        if p is None:
            missing.append(path)
        else:
            out[path] = p
    unused = sorted(k for k in per_image if all(k not in (os.path.basename(q), os.path.splitext(os.path.basename(q))[0])
                                                 for q in paths))
    if missing:
        raise PromptError(f"no prompt for {len(missing)} image(s), e.g. {missing[0]}",
                          hint="give --points / --box, or name the image in the --prompts file")
    if unused:
        print(f"note: --prompts entries for no input image: {', '.join(unused[:5])}", file=sys.stderr)
    return out


def noisy_prompt(prompt: Prompt, path: str, scale: float, seed: int, hw: Tuple[int, int], perturb) -> Prompt:
    """`prompt` with its box replaced by one seeded noisy draw (`rass.app.sam_tab.perturb_box`), printed.

    Args:
        prompt: the image's prompt (it needs a box).
        path: the image (for the messages).
        scale, seed: --box-noise, --box-noise-seed.
        hw: (h, w) of the image.
        perturb: `rass.app.sam_tab.perturb_box` (imported with the models).
    """
    if prompt["box"] is None:
        raise PromptError(f"--box-noise perturbs a box, but the prompt of {path} has none",
                          hint="give --box or a 'box' in the --prompts file")
    from rass.data.prompts import check_prompts

    check_prompts(hw, None, None, [prompt["box"]], source=f"{path}: --box-noise of the box")  # the box as given
    box = perturb(prompt["box"], scale, seed, hw)
    print(f"{path}: box {_box_text(prompt['box'])} perturbed (noise scale {scale:g}, seed {seed}) to "
          f"{_box_text(box)}")
    return {**prompt, "box": box}


def _box_text(box: Sequence[float]) -> str:
    return ",".join(f"{float(v):.2f}" for v in box)


# ----------------------------------------------------------------- rendering
def predict(predictor: PromptablePredictor, image: np.ndarray, prompt: Prompt) -> Tuple[np.ndarray, float]:
    out = predictor(image, points=prompt["points"] or None, labels=prompt["labels"] or None, box=prompt["box"])
    return out["masks"].cpu().numpy(), float(out["iou_pred"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.debug:
        enable_debug()
    check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
    if args.box_noise is not None and not args.box_noise >= 0:  # NaN too
        raise UserValueError(f"--box-noise {args.box_noise}: expected a noise scale >= 0 (0 = the box itself; "
                             f"HQ-SAM's box noise)")
    if args.box_noise_seed < 0:
        raise UserValueError(f"--box-noise-seed {args.box_noise_seed}: expected a whole number >= 0")
    if len(args.opts) % 2:
        raise UserError(f"--opts must be KEY VALUE pairs, got {args.opts}")
    cli = command_line_prompt(args.points, args.box)
    shared, per_image = read_prompt_file(args.prompts) if args.prompts else (None, {})
    paths, problems = collect_image_paths(args.input)
    for spec, reason in problems:
        print(f"error: {spec}: {reason}", file=sys.stderr)
    if not paths:
        raise UserError("no input image could be found", hint="give image files, folders or glob patterns")
    prompts = prompts_for(paths, cli, shared, per_image)
    outs = image_outputs(paths, args.output, extra="_mask") if args.output else {}
    for folder in sorted({os.path.dirname(o) for pair in outs.values() for o in pair if o}):
        check_writable(args.output, folder)  # before any model is built
    from rass.app.models import with_quickstart_weights
    from rass.app.sam_tab import mask_file_key, perturb_box
    from rass.config import setup_cfg
    from rass.engine import PromptablePredictor
    from rass.engine.model_build import seeded_init
    from rass.evaluation.visualize import draw, format_score, mask_iou
    from rass.utils.image_io import read_image_checked

    opts, quickstart = with_quickstart_weights(args.config_file, args.opts)
    if quickstart:
        print(f"note: the quickstart's trained tiny promptable model ({quickstart})", file=sys.stderr)
    cfg = setup_cfg(args.config_file, opts)
    if args.compare and cfg.MODEL.META_ARCHITECTURE == "PromptableSAMHQ":
        raise UserError("--compare: HQ-SAM has no plain-SAM twin with its weights here",
                        hint="run demo_sam.py again with a SAM config of the same size for SAM's masks")
    if args.compare and cfg.MODEL.META_ARCHITECTURE == "PromptableSAM":  # GleSAM next to SAM
        cfg = setup_cfg(args.config_file, opts + ["MODEL.GLESAM.ENHANCE", "True"])
    with seeded_init(args.init_seed):  # parts without weights (e.g. the tiny SAM) are seeded
        gle = PromptablePredictor(cfg)
    if gle.weight_notes:
        print(f"note: {len(gle.weight_notes)} part(s) of the model have demo weights (random): the masks are not "
              "meaningful (the warnings above say which; scripts/quickstart.sh trains a tiny model for "
              "configs/quickstart/tiny_promptable.yaml)", file=sys.stderr)
    sam = None
    if args.compare:
        sam = gle.plain_sam()
    failed = len(problems)
    for path in paths:
        try:
            image = read_image_checked(path, "RGB")
            if args.box_noise is not None:
                prompts[path] = noisy_prompt(prompts[path], path, args.box_noise, args.box_noise_seed,
                                             image.shape[:2], perturb_box)
            mask, iou = predict(gle, image, prompts[path])
            area = 100.0 * mask.mean()
            name = gle.method
            line = f"{path}: {name} mask {area:.1f}% of the image, confidence (predicted IoU) {format_score(iou)}"
            views = [draw(image, mask, prompts[path], args.opacity, f"{name} (confidence {format_score(iou)})")]
            masks = {"mask": mask}
            if sam is not None:
                smask, siou = predict(sam, image, prompts[path])
                line += f"; SAM {100.0 * smask.mean():.1f}%, confidence {format_score(siou)}; IoU SAM vs {name} " \
                        f"{format_score(mask_iou(smask, mask))}"
                views.insert(0, draw(image, smask, prompts[path], args.opacity,
                                     f"SAM (confidence {format_score(siou)})"))
                masks = {"sam_mask": smask, f"{mask_file_key(name)}_mask": mask}
            print(line)
            if outs:
                overlay_path, _ = outs[path]
                save_image_atomic(overlay_path, np.concatenate(views, axis=1))
                stem = os.path.splitext(overlay_path)[0]
                for suffix, m in masks.items():
                    save_image_atomic(f"{stem}_{suffix}.png", m.astype(np.uint8) * 255)
        except UserError as e:  # this input's problem (file, prompt); a bug propagates with its traceback
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(main)
