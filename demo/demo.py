#!/usr/bin/env python
"""Semantic segmentation of images, folders and videos with a trained model; writes overlays.

    python demo/demo.py --config-file configs/quickstart/tiny_rass.yaml --input photos/ extra/*.jpg \\
        --output out/ --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python demo/demo.py --config-file configs/quickstart/tiny_rass.yaml --video-input clip.mp4 \\
        --output clip_seg.mp4 --opts MODEL.WEIGHTS output/quickstart/model_final.pth

`--input` takes image files, folders (every image inside, sorted by name) and glob patterns.
`--output` is a folder (one `<input name>.png` overlay per image, plus `<input name>_labels.png`
with the class ids as uint8 with `--save-labels`), or a file name for a single image / a video
(`.mp4`, written with OpenCV's mp4v codec). Without `--output`, a summary (the largest classes
by area) is printed per image. Inputs that cannot be read are reported by name; the others are
still processed and the exit code is 1. Files are written atomically. Problems with the
arguments, the config or the output path are found before the model is built and reported as one
`error:` line (exit code 2); `--debug` (or RASS_DEBUG=1) adds the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

# Only what parsing the arguments and checking the outputs needs is imported here: `--help` and
# argument errors answer at once; torch, detectron2, OpenCV and the model come in `main` after them.
from rass.utils.cli import (DEBUG_FLAG, DEBUG_HELP, add_init_seed_argument, check_config_file, enable_debug,
                            report_user_error, run_cli)
from rass.utils.errors import UserError
from rass.utils.inputs import collect_image_paths
from rass.utils.io import default_mode, save_image_atomic
from rass.utils.outputs import OutputError, check_writable, image_outputs

if TYPE_CHECKING:
    from rass.engine import SemanticPredictor

DemoError = OutputError  # (the demo's argument/output errors; exit code 2)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="image files, folders or glob patterns")
    src.add_argument("--video-input", metavar="FILE", help="a video file (anything OpenCV can read)")
    p.add_argument("--output", metavar="DIR_OR_FILE", help="output folder, or file for one image / the video")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the class colours in the overlay (0..1)")
    p.add_argument("--legend", action="store_true", help="draw the names of the classes present on the overlay")
    p.add_argument("--save-labels", action="store_true", help="also write the class ids as a uint8 PNG per image")
    p.add_argument("--top", type=int, default=5, help="classes per line of the printed summary")
    p.add_argument("--batch-size", type=int, default=4, help="video frames per forward pass")
    add_init_seed_argument(p)
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides (KEY VALUE pairs), last on the command line")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must be in [0, 1], got {args.opacity}")
    if args.batch_size < 1 or args.top < 1:
        p.error("--batch-size and --top must be >= 1")
    if args.debug:
        enable_debug()
    return args


def report(message: str) -> None:
    """An error line on stderr that does not break the progress bar."""
    tqdm.write(f"error: {message}", file=sys.stderr)


# ----------------------------------------------------------------- inputs and outputs
def plan_outputs(args: argparse.Namespace) -> Tuple[list, list, Dict[str, Tuple[str, Optional[str]]], Optional[str]]:
    """Everything about the inputs and outputs that can be checked before the model is built.

    Returns:
        (image paths, (spec, reason) problems, image outputs, video output file or None).
    """
    paths, problems, outs, video_out = [], [], {}, None
    if args.input:
        paths, problems = collect_image_paths(args.input)
        if args.output:
            outs = image_outputs(paths, args.output, "_labels" if args.save_labels else None)
            for folder in sorted({os.path.dirname(o) for pair in outs.values() for o in pair if o} or {args.output}):
                check_writable(args.output, folder)
            for line in renamed_outputs(outs):
                print(line, file=sys.stderr)
    elif args.output:
        video_out = video_output(args.video_input, args.output)
        check_writable(args.output, os.path.dirname(video_out))
    return paths, problems, outs, video_out


# ----------------------------------------------------------------- rendering
def summary(name: str, areas: np.ndarray, class_names: Sequence[str], top: int) -> str:
    """One line: `name: class share%, ...` for the `top` largest classes (share of the pixels)."""
    from rass.evaluation.visualize import short_name

    total = max(int(areas.sum()), 1)
    order = [int(c) for c in np.argsort(-areas, kind="stable")[:top] if areas[c] > 0]
    return f"{name}: " + ", ".join(f"{short_name(class_names[c])} {100.0 * areas[c] / total:.1f}%" for c in order)


def render(image: np.ndarray, labels: np.ndarray, predictor: SemanticPredictor, args: argparse.Namespace) -> np.ndarray:
    """The overlay of one prediction (with the legend when asked)."""
    from rass.evaluation.visualize import class_areas, draw_legend, overlay

    vis = overlay(image, labels, predictor.colors, alpha=args.opacity)
    if args.legend:
        vis = draw_legend(vis, class_areas(labels, len(predictor.class_names)), predictor.class_names, predictor.colors)
    return vis


# ----------------------------------------------------------------- runs
def run_images(predictor: SemanticPredictor, args: argparse.Namespace, plan) -> int:
    """Predict every input image (`plan` from `plan_outputs`); returns the number of failures."""
    from rass.evaluation.visualize import class_areas
    from rass.utils.image_io import read_image_checked

    paths, problems, outs, _ = plan
    for spec, reason in problems:
        report(f"{spec}: {reason}")
    failed = len(problems)
    inputs = {os.path.abspath(p) for p in paths}
    written = 0
    for path in tqdm(paths, desc="images", unit="img", file=sys.stderr):
        clash = [o for o in outs.get(path, ()) if o and os.path.abspath(o) in inputs]
        if clash:
            report(f"{path}: not processed, its output would overwrite the input {clash[0]}")
            failed += 1
            continue
        try:
            image = read_image_checked(path, "RGB")
        except UserError as e:  # a missing, damaged or unknown file (DataFileError)
            report(f"{path}: cannot read the image ({e.message})")
            failed += 1
            continue
        labels = predictor(image)["labels"].cpu().numpy()
        if not args.output:
            areas = class_areas(labels, len(predictor.class_names))
            tqdm.write(summary(f"{path} ({image.shape[1]}x{image.shape[0]})", areas, predictor.class_names, args.top))
            continue
        vis_path, label_path = outs[path]
        save_image_atomic(vis_path, render(image, labels, predictor, args))
        if label_path:
            save_image_atomic(label_path, labels.astype(np.uint8))
        written += 1
    if args.output:
        print(f"wrote {written} overlay(s) to {args.output}")
    return failed


def renamed_outputs(outs: Dict[str, Tuple[str, Optional[str]]]) -> List[str]:
    """One ``note:`` line per input whose output is not named after it (two inputs with the same
    name, e.g. ``a.jpg`` and ``a.png``: the second is written as ``a-2.png``).

    Args:
        outs: input path -> (main output, extra output or None), from `image_outputs`.
    """
    notes: List[str] = []
    if len(outs) < 2:  # one input: a file --output is the name the user chose
        return notes
    for path, (main_out, _) in outs.items():
        stem = os.path.splitext(os.path.basename(path))[0]
        if os.path.splitext(os.path.basename(main_out))[0] != stem:
            notes.append(f"note: {path} is written as {main_out} (another input is also named {stem})")
    return notes


def video_output(path: str, output: str) -> str:
    """The .mp4 file to write for a video: `output` itself, or `<output>/<video name>.mp4`."""
    ext = os.path.splitext(output)[1].lower()
    if ext == ".mp4" and not os.path.isdir(output):
        return output
    if ext and not os.path.isdir(output):
        raise DemoError(f"--output {output}: a video is written as .mp4; give a .mp4 file name or a folder")
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")


def run_video(predictor: SemanticPredictor, args: argparse.Namespace, plan) -> int:
    """Predict every frame of the video (batches of --batch-size; `plan` from `plan_outputs`);
    returns 1 on failure, else 0."""
    import cv2

    from rass.evaluation.visualize import class_areas

    path = args.video_input
    out_path = plan[3]
    cap = cv2.VideoCapture(path) if os.path.isfile(path) else None
    if cap is None or not cap.isOpened():
        report(f"{path}: cannot open the video" + ("" if cap is not None else " (no such file)"))
        return 1
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps > 0 else 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if args.save_labels:
        tqdm.write("note: --save-labels applies to images only", file=sys.stderr)
    writer, tmp = None, None
    areas = np.zeros(len(predictor.class_names), np.int64)
    frames = 0
    bar = tqdm(total=total if total > 0 else None, desc="frames", unit="frame", file=sys.stderr)
    try:
        done = False
        while not done:
            batch = []
            while len(batch) < args.batch_size:
                ok, frame = cap.read()
                if not ok:
                    done = True
                    break
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if not batch:
                break
            for image, pred in zip(batch, predictor.predict_batch(batch)):
                labels = pred["labels"].cpu().numpy()
                areas += class_areas(labels, len(areas))
                if out_path:
                    if writer is None:
                        writer, tmp = _open_writer(out_path, fps, image.shape[1], image.shape[0])
                    writer.write(cv2.cvtColor(render(image, labels, predictor, args), cv2.COLOR_RGB2BGR))
            frames += len(batch)
            bar.update(len(batch))
        bar.close()  # before the summary lines
        if frames == 0:
            report(f"{path}: no frame could be read")
            return 1
        if writer is not None:
            writer.release()
            writer = None
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, default_mode())  # mkstemp makes 0600; the video gets the mode the images get
            os.replace(tmp, out_path)
            tmp = None
            print(f"wrote {frames} frame(s) to {out_path}")
        else:
            tqdm.write(summary(f"{path} ({frames} frames)", areas, predictor.class_names, args.top))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return 0


def _open_writer(out_path: str, fps: float, width: int, height: int):
    """An mp4v VideoWriter on a temporary file next to `out_path` (renamed when complete)."""
    import cv2

    folder = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out_path) + ".", suffix=".mp4", dir=folder)
    os.close(fd)
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height), True)
    if not writer.isOpened():
        os.remove(tmp)
        raise DemoError(f"OpenCV cannot write an mp4v video to {out_path} (no mp4v encoder in this OpenCV build)")
    return writer, tmp


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 ok, 1 some input failed, 2 bad arguments/config)."""
    args = parse_args(argv)
    try:
        check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
        from rass.config import setup_cfg
        from rass.engine import SemanticPredictor
        from rass.engine.model_build import seeded_init

        cfg = setup_cfg(args.config_file, args.opts)
        plan = plan_outputs(args)  # output problems are found before the model is built
        with seeded_init(args.init_seed):  # parts without weights (e.g. MODEL.RASS.SD_PATH "") are seeded
            predictor = SemanticPredictor(cfg)
        if args.save_labels and len(predictor.class_names) > 255:
            raise DemoError(f"--save-labels writes uint8 PNGs: {len(predictor.class_names)} classes do not fit")
        failed = run_images(predictor, args, plan) if args.input else run_video(predictor, args, plan)
    except Exception as e:  # noqa: BLE001 - user errors (config, weights, output) become one message
        code = report_user_error(e)
        if code is None:
            raise
        return code
    if failed:
        print(f"error: {failed} input(s) failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
