"""Offline degradation of a dataset (fixed degraded evaluation sets: RASS's ADE20K copies, LQSeg).

Two input layouts (`layout`):
- "ade20k":     ROOT/images/<split>/*.jpg|png + ROOT/annotations_detectron2/<split>/*.png
                → OUT/images/<split>/<stem>.png + OUT/annotations_detectron2/<split>/<stem>.png
- "image_mask": IMAGE_DIR/*.jpg|png + MASK_DIR/<stem>.png (one mask per image, same stem; the
                LQSeg / salient-object layout; IMAGE_DIR, MASK_DIR default ROOT/images, ROOT/masks;
                when they are one folder, its .png files are the masks)
                → OUT/images/<stem>.png + OUT/masks/<stem>.png
Both also write OUT/manifest.jsonl and OUT/degradation.json.

The output is always a loadable dataset: an image is degraded only when its annotation exists and
decodes with the image's size, the annotation is copied (byte for byte) only after the image was
written, and every input left out is reported by reason ("no annotation", "no image",
"unreadable image", "unreadable annotation", "size mismatch"); an output file without its
partner left by an earlier run is reported as "incomplete output pair". Degraded images are lossless PNG
with the input's stem (a JPEG re-encode would add one more, unrecorded, degradation).

Each image's seed is derived from (base seed, split, stem), so an image's output never depends on
the order, batching or an interrupted earlier run: a second run skips finished images and
re-creates missing ones with identical bytes. Every file is written atomically. `manifest.jsonl`
has one JSON object per image (split, stem, seed, sampled parameters, SHA-256 of the PNG);
`degradation.json` records preset, overrides, spec, options and seed; a resumed run must match.

GleSAM options (the released LQSeg test sets were made with both on, `glesam_method.md` §7):
- `usm`: unsharp-mask the input first (basicsr `USMSharp`: Gaussian 51×51 from radius 50 with
  σ = 0 → OpenCV's rule σ = 0.3·((k−1)/2 − 1) + 0.8 = 8.0, weight 0.5, threshold 10/255).
- `final_size`: the final "resize back" goes to a fixed `final_size`×`final_size` square
  (512 as released; masks stay at their original size) instead of the input size.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from rass.utils.choices import DEGRADE_LAYOUTS
from rass.utils.errors import UserFileNotFoundError, UserValueError
from rass.utils.image_io import read_image_checked
from rass.utils.inputs import files_by_stem
from rass.utils.io import sha256_file, write_bytes_atomic

from .filtering import filter2d_separable
from .kernels import gaussian_kernel_1d
from .online import derive_seed
from .parallel import map_single_threaded
from .pipeline import Degradation
from .presets import get_spec
from .sampling import sample_params

__all__ = ["degrade_tree", "DegradeReport", "usm_sharpen", "LAYOUTS", "SKIP_REASONS"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = DEGRADE_LAYOUTS  # (from the light `rass.utils.choices`: the tool's parser offers them)
SKIP_REASONS = ("no annotation", "no image", "unreadable image", "unreadable annotation", "size mismatch",
                "incomplete output pair")
# Version of the engine's output bytes for a given seed and spec; bump it whenever they change, so
# that an interrupted run is never resumed with a different engine (mixing old and new images).
ENGINE_VERSION = 2
MANIFEST = "manifest.jsonl"
RUN_INFO = "degradation.json"
_DEFAULT_OPTIONS = {"usm": False, "final_size": None}


@dataclass
class DegradeReport:
    """Outcome of `degrade_tree`.

    `skipped_inputs` maps a reason (one of `SKIP_REASONS`) to the input paths left out for it;
    `failures` lists the same as (path, "reason: detail") pairs.
    """

    written: int = 0
    skipped: int = 0
    annotations: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)
    skipped_inputs: Dict[str, List[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str, detail: str = "") -> None:
        self.skipped_inputs.setdefault(reason, []).append(path)
        self.failures.append((path, f"{reason}: {detail}" if detail else reason))

    def summary(self, examples: int = 3) -> List[str]:
        """One line per skip reason: count and a few file names."""
        lines = []
        for reason in SKIP_REASONS:
            paths = self.skipped_inputs.get(reason, [])
            if paths:
                names = ", ".join(os.path.basename(p) for p in paths[:examples]) + (", ..." if len(paths) > examples else "")
                lines.append(f"{reason}: {len(paths)} ({names})")
        return lines


@dataclass(frozen=True)
class _Pair:
    split: str
    stem: str
    image: str
    annotation: str
    out_image: str
    out_annotation: str


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an H×W×3 uint8 RGB array (deterministic for given pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def usm_sharpen(image: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10.0) -> torch.Tensor:
    """Unsharp masking as basicsr's `USMSharp` (GleSAM's LQSeg generator sharpens its input with it).

    Args:
        image: 3×H×W (or B×3×H×W) float tensor in [0, 1].
        radius: kernel size (made odd: 50 → 51); σ follows OpenCV's rule for σ = 0.
        weight: sharpening weight.
        threshold: residuals below threshold/255 are not sharpened (soft mask).

    Returns:
        The sharpened image, same shape, in [0, 1].
    """
    k = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    g = gaussian_kernel_1d(k, sigma).to(device=image.device, dtype=torch.float32)[None]
    x = image[None] if image.dim() == 3 else image
    blur = filter2d_separable(x, g.expand(x.shape[0], -1), g.expand(x.shape[0], -1))
    residual = x - blur
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = filter2d_separable(mask, g.expand(x.shape[0], -1), g.expand(x.shape[0], -1))
    sharp = (x + weight * residual).clamp(0, 1)
    out = soft * sharp + (1 - soft) * x
    return out[0] if image.dim() == 3 else out


def _read_rgb(path: str) -> np.ndarray:
    img = read_image_checked(path, "RGB")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"expected an H×W×3 image, got shape {img.shape}")
    return np.array(img, dtype=np.uint8, copy=True)


def _annotation_hw(path: str) -> Tuple[int, int]:
    """(H, W) of an annotation PNG after decoding it completely (a truncated file fails here)."""
    with Image.open(path) as im:
        im.load()
        return im.size[1], im.size[0]


def _pairs(images_dir: str, ann_dir: str, out_images: str, out_ann: str, split: str, report: DegradeReport) -> List[_Pair]:
    """Match images and annotations by stem; one-sided files go to the report."""
    for d, what in ((images_dir, "image"), (ann_dir, "annotation")):
        if not os.path.isdir(d):
            raise UserFileNotFoundError(f"Input {what} folder not found: {d}")
    same = os.path.realpath(images_dir) == os.path.realpath(ann_dir)  # one folder: .png = masks, others = images
    images = files_by_stem(images_dir, tuple(e for e in IMAGE_EXTS if not (same and e == ".png")))
    anns = files_by_stem(ann_dir, (".png",))
    for stem in sorted(set(images) - set(anns)):
        report.skip("no annotation", images[stem], f"no {stem}.png in {ann_dir}")
    for stem in sorted(set(anns) - set(images)):
        report.skip("no image", anns[stem], f"no image {stem}.* in {images_dir}")
    return [_Pair(split, s, images[s], anns[s], os.path.join(out_images, s + ".png"), os.path.join(out_ann, s + ".png"))
            for s in sorted(set(images) & set(anns))]


def _load_manifest(path: str) -> Dict[Tuple[str, str], Dict[str, Any]]:
    entries: Dict[Tuple[str, str], Dict[str, Any]] = {}
    if not os.path.exists(path):
        return entries
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            try:
                e = json.loads(line)
                entries[(e["split"], e["stem"])] = e
            except (ValueError, KeyError):
                continue  # a line cut by an interruption: that image is simply redone
    return entries


MAX_LISTED = 6  # differing settings named when a folder written with other settings is refused
_MISSING = object()  # a setting one side does not have


def _differences(old: Any, new: Any, prefix: str = "") -> List[Tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf that differs between two JSON values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k, _MISSING), new.get(k, _MISSING), f"{prefix}{k}.")
        return out
    return [] if old == new else [(prefix[:-1], old, new)]


def _short(value: Any, limit: int = 40) -> str:
    text = "(absent)" if value is _MISSING else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_run_info(out: str, info: Dict[str, Any]) -> None:
    path = os.path.join(out, RUN_INFO)
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            old = json.load(f)
        old.setdefault("options", dict(_DEFAULT_OPTIONS))  # folders written before the options existed
        old.setdefault("layout", "ade20k")
        keys = ("engine", "seed", "spec", "options", "layout")  # what determines the bytes and files
        differ = _differences({k: old.get(k) for k in keys}, {k: info[k] for k in keys})
        if differ:
            shown = ", ".join(f"{k}={_short(a)} (folder) vs {_short(b)} (this run)" for k, a, b in differ[:MAX_LISTED])
            more = f" and {len(differ) - MAX_LISTED} more" if len(differ) > MAX_LISTED else ""
            presets = (f"preset {old.get('preset')!r} in both" if old.get("preset") == info["preset"]
                       else f"preset {old.get('preset')!r}, this run {info['preset']!r}")
            raise UserValueError(f"{path} was written with other settings ({presets}): {shown}{more}",
                                 hint="use another --output folder or the same settings")
    else:
        write_bytes_atomic(path, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def degrade_tree(
    input_root: str,
    output_root: str,
    preset: str,
    seed: int,
    splits: Sequence[str] = ("validation",),
    overrides: Optional[Dict[str, Any]] = None,
    batch_size: int = 4,
    device: str = "cpu",
    jpeg_backend: str = "auto",
    progress: Optional[Callable[[int], Any]] = None,
    layout: str = "ade20k",
    image_dir: str = "images",
    mask_dir: str = "masks",
    usm: bool = False,
    final_size: Optional[int] = None,
) -> DegradeReport:
    """Write a degraded copy of a dataset (see the module docstring for layouts and options).

    Args:
        input_root: "ade20k": folder with images/<split>/ and annotations_detectron2/<split>/;
            "image_mask": the folder `image_dir` and `mask_dir` are relative to.
        output_root: destination folder (created; may hold an earlier partial run).
        preset: degradation preset name.
        seed: base seed; image seed = derive_seed(seed, split, stem) (split "" for "image_mask").
        splits: split folder names to process ("ade20k" only).
        overrides: preset values to replace.
        batch_size: images degraded per engine call.
        device: torch device for the engine.
        jpeg_backend: see `Degradation`.
        progress: optional factory `progress(total)` of an object with `update(n)` (e.g. tqdm).
        layout: "ade20k" or "image_mask".
        image_dir, mask_dir: "image_mask" input folders (relative to `input_root` or absolute).
        usm: USM-sharpen each input before degrading it (as GleSAM's generator).
        final_size: side of the fixed square output (GleSAM: 512); None keeps the input size.
            Only with "image_mask" (ADE20K annotations must keep the image size).

    Returns:
        A `DegradeReport`; `failures` / `skipped_inputs` name every input left out and why.
    """
    if layout not in LAYOUTS:
        raise UserValueError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}")
    if final_size is not None and (layout != "image_mask" or int(final_size) < 1):
        raise UserValueError(f"final_size={final_size!r} needs layout 'image_mask' and a positive size "
                             "(ADE20K-format annotations must keep the image size)")
    if os.path.realpath(input_root) == os.path.realpath(output_root):
        raise UserValueError(f"The output folder must differ from the input folder ({input_root})")
    overrides = dict(overrides or {})
    spec = get_spec(preset, **overrides)
    engine = Degradation(spec, seed=0, jpeg_backend=jpeg_backend)
    options = {"usm": bool(usm), "final_size": None if final_size is None else int(final_size)}
    info = {"engine": ENGINE_VERSION, "preset": preset, "seed": int(seed), "layout": layout, "options": options,
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(overrides.items())},
            "spec": spec.to_dict(), "format": "png"}
    report = DegradeReport()
    pairs: List[_Pair] = []
    if layout == "ade20k":
        for split in splits:
            pairs += _pairs(os.path.join(input_root, "images", split), os.path.join(input_root, "annotations_detectron2", split),
                            os.path.join(output_root, "images", split), os.path.join(output_root, "annotations_detectron2", split),
                            split, report)
    else:
        pairs = _pairs(os.path.join(input_root, image_dir), os.path.join(input_root, mask_dir),
                       os.path.join(output_root, "images"), os.path.join(output_root, "masks"), "", report)
    os.makedirs(output_root, exist_ok=True)
    _check_run_info(output_root, info)
    manifest_path = os.path.join(output_root, MANIFEST)
    done = _load_manifest(manifest_path)

    todo: List[_Pair] = []
    for pair in pairs:
        entry = done.get((pair.split, pair.stem))
        if entry is not None and os.path.exists(pair.out_image) and sha256_file(pair.out_image) == entry.get("sha256"):
            report.skipped += 1
            _copy_annotation(pair, report)
        else:
            done.pop((pair.split, pair.stem), None)
            todo.append(pair)

    step = max(1, batch_size)
    bar = progress(len(todo)) if progress is not None else None
    with open(manifest_path, "a", encoding="utf-8") as manifest:
        for start in range(0, len(todo), step):
            batch = todo[start : start + step]
            for entry in _process_batch(batch, engine, input_root, int(seed), device, usm, options["final_size"], report):
                manifest.write(json.dumps(entry, sort_keys=True) + "\n")
                manifest.flush()
                done[(entry["split"], entry["stem"])] = entry
            if bar is not None:
                bar.update(len(batch))
    # rewrite the manifest compactly (one line per image, sorted), atomically
    lines = [json.dumps(done[k], sort_keys=True) for k in sorted(done)]
    write_bytes_atomic(manifest_path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))
    if bar is not None and hasattr(bar, "close"):
        bar.close()
    if layout == "ade20k":
        out_dirs = [(os.path.join(output_root, "images", sp), os.path.join(output_root, "annotations_detectron2", sp)) for sp in splits]
    else:
        out_dirs = [(os.path.join(output_root, "images"), os.path.join(output_root, "masks"))]
    for img_dir, ann_dir in out_dirs:
        _check_output_pairs(img_dir, ann_dir, report)
    return report


def _check_output_pairs(img_dir: str, ann_dir: str, report: DegradeReport) -> None:
    """Report output files without their partner (left by an earlier run of an older tool or by hand)."""
    imgs = files_by_stem(img_dir, (".png",)) if os.path.isdir(img_dir) else {}
    anns = files_by_stem(ann_dir, (".png",)) if os.path.isdir(ann_dir) else {}
    for stem in sorted(set(imgs) ^ set(anns)):
        path = imgs.get(stem) or anns[stem]
        report.skip("incomplete output pair", path, "in the output without its image/annotation partner (delete it)")


def _process_batch(
    batch: Sequence[_Pair],
    engine: Degradation,
    input_root: str,
    seed: int,
    device: str,
    usm: bool,
    final_size: Optional[int],
    report: DegradeReport,
) -> List[Dict[str, Any]]:
    """Check, read, degrade and write one batch; inputs left out go to the report."""
    images, metas = [], []
    for pair in batch:
        try:
            arr = _read_rgb(pair.image)
        except Exception as e:  # noqa: BLE001 - any decoding problem is reported by name
            report.skip("unreadable image", pair.image, f"{type(e).__name__}: {e}")
            continue
        try:
            ann_hw = _annotation_hw(pair.annotation)
        except Exception as e:  # noqa: BLE001
            report.skip("unreadable annotation", pair.annotation, f"{type(e).__name__}: {e}")
            continue
        if ann_hw != arr.shape[:2]:
            report.skip("size mismatch", pair.image, f"image {arr.shape[1]}x{arr.shape[0]}, annotation "
                        f"{os.path.basename(pair.annotation)} {ann_hw[1]}x{ann_hw[0]} (WxH)")
            continue
        img = torch.from_numpy(arr).permute(2, 0, 1).to(device=device, dtype=torch.float32) / 255.0
        if usm:
            img = usm_sharpen(img)
        images.append(img)
        metas.append((pair, derive_seed(seed, pair.split, pair.stem)))
    if not images:
        return []
    params = [sample_params(engine.spec, s, int(img.shape[1]), int(img.shape[2])) for img, (_, s) in zip(images, metas)]
    if final_size is not None:
        for p in params:  # the final resize-back goes to the fixed square; the engine then keeps it
            p["input_size"] = list(p["size"])
            p["final"]["size"] = [final_size, final_size]
            p["size"] = [final_size, final_size]
    # one image per one-thread worker, as `Degradation.degrade_list` runs them on CPU
    outs = map_single_threaded(lambda i: engine.apply([images[i]], [params[i]])[0], list(range(len(images))),
                               torch.get_num_threads())
    entries = []
    for (pair, s), out, p in zip(metas, outs, params):
        pixels = torch.round(out * 255.0).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        data = encode_png(np.ascontiguousarray(pixels))
        write_bytes_atomic(pair.out_image, data)
        report.written += 1
        _copy_annotation(pair, report)
        entries.append({"split": pair.split, "stem": pair.stem, "input": os.path.relpath(pair.image, input_root), "seed": s,
                        "sha256": hashlib.sha256(data).hexdigest(), "params": p})
    return entries


def _copy_annotation(pair: _Pair, report: DegradeReport) -> None:
    """Copy the annotation of a written image unless an identical copy is already there."""
    src, dst = pair.annotation, pair.out_annotation
    if not (os.path.exists(dst) and os.path.getsize(src) == os.path.getsize(dst) and sha256_file(src) == sha256_file(dst)):
        with open(src, "rb") as f:
            write_bytes_atomic(dst, f.read())
        report.annotations += 1
