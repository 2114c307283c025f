"""Offline degradation of an ADE20K-format tree (fixed degraded evaluation sets).

Layout read:    ROOT/images/<split>/*.jpg|png   ROOT/annotations_detectron2/<split>/*.png
Layout written: OUT/images/<split>/<stem>.png   OUT/annotations_detectron2/<split>/<stem>.png
                OUT/manifest.jsonl              OUT/degradation.json

Degraded images are written as lossless PNG with the input's file stem: the file holds exactly
the engine's 8-bit output (a JPEG re-encode would add one more, unrecorded, degradation).
Annotations are copied byte for byte. Each image's seed is derived from (base seed, split, stem),
so an image's output never depends on the order, batching or an interrupted earlier run: a second
run skips finished images and re-creates missing ones with identical bytes. Every file is written
atomically (temporary file in the same directory, then `os.replace`). `manifest.jsonl` has one
JSON object per image (split, stem, seed, sampled parameters, SHA-256 of the PNG);
`degradation.json` records the preset, overrides, full spec and seed; a resumed run must have
the same seed and spec.
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

from rass.utils.io import sha256_file, write_bytes_atomic

from .online import derive_seed
from .pipeline import Degradation
from .presets import get_spec

__all__ = ["degrade_tree", "DegradeReport"]

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
# Version of the engine's output bytes for a given seed and spec; bump it whenever they change, so
# that an interrupted run is never resumed with a different engine (mixing old and new images).
ENGINE_VERSION = 2
MANIFEST = "manifest.jsonl"
RUN_INFO = "degradation.json"


@dataclass
class DegradeReport:
    """Outcome of `degrade_tree`."""

    written: int = 0
    skipped: int = 0
    annotations: int = 0
    failures: List[Tuple[str, str]] = field(default_factory=list)  # (input path, reason)


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of an H×W×3 uint8 RGB array (deterministic for given pixels)."""
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def _read_rgb(path: str) -> np.ndarray:
    from detectron2.data import detection_utils as utils

    img = utils.read_image(path, format="RGB")
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"expected an H×W×3 image, got shape {img.shape}")
    return np.array(img, dtype=np.uint8, copy=True)


def _list_images(root: str, split: str) -> List[str]:
    d = os.path.join(root, "images", split)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"Input split folder not found: {d} (expected ROOT/images/{split}/)")
    names = sorted(n for n in os.listdir(d) if n.lower().endswith(IMAGE_EXTS) and not n.startswith("."))
    stems: Dict[str, str] = {}
    for n in names:
        stem = os.path.splitext(n)[0]
        if stem in stems:
            raise ValueError(f"Two input images share the stem {stem!r} in {d}: {stems[stem]} and {n}")
        stems[stem] = n
    return [os.path.join(d, n) for n in names]


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


def _check_run_info(out: str, info: Dict[str, Any]) -> None:
    path = os.path.join(out, RUN_INFO)
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            old = json.load(f)
        for key in ("engine", "seed", "spec"):  # what determines the bytes (preset/overrides are informative)
            if old.get(key) != info[key]:
                raise ValueError(
                    f"{path} was written with {key}={old.get(key)!r}, this run has {info[key]!r}; "
                    "use another --output folder or the same settings"
                )
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
) -> DegradeReport:
    """Write a degraded copy of an ADE20K-format tree.

    Args:
        input_root: folder with images/<split>/ and annotations_detectron2/<split>/.
        output_root: destination folder (created; may hold an earlier partial run).
        preset: degradation preset name.
        seed: base seed; image seed = derive_seed(seed, split, stem).
        splits: split folder names to process.
        overrides: preset values to replace.
        batch_size: images degraded per engine call.
        device: torch device for the engine.
        jpeg_backend: see `Degradation`.
        progress: optional factory `progress(total)` of an object with `update(n)` (e.g. tqdm).

    Returns:
        A `DegradeReport`; failures list unreadable inputs by path and reason.
    """
    if os.path.realpath(input_root) == os.path.realpath(output_root):
        raise ValueError(f"The output folder must differ from the input folder ({input_root})")
    overrides = dict(overrides or {})
    spec = get_spec(preset, **overrides)
    engine = Degradation(spec, seed=0, jpeg_backend=jpeg_backend)
    info = {"engine": ENGINE_VERSION, "preset": preset, "seed": int(seed), "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(overrides.items())}, "spec": spec.to_dict(), "format": "png"}
    os.makedirs(output_root, exist_ok=True)
    _check_run_info(output_root, info)
    manifest_path = os.path.join(output_root, MANIFEST)
    done = _load_manifest(manifest_path)
    report = DegradeReport()

    todo: List[Tuple[str, str, str]] = []  # (split, stem, input path)
    for split in splits:
        ann_in = os.path.join(input_root, "annotations_detectron2", split)
        ann_out = os.path.join(output_root, "annotations_detectron2", split)
        for path in _list_images(input_root, split):
            stem = os.path.splitext(os.path.basename(path))[0]
            out_png = os.path.join(output_root, "images", split, stem + ".png")
            entry = done.get((split, stem))
            if entry is not None and os.path.exists(out_png) and sha256_file(out_png) == entry.get("sha256"):
                report.skipped += 1
            else:
                todo.append((split, stem, path))
            src_ann = os.path.join(ann_in, stem + ".png")
            dst_ann = os.path.join(ann_out, stem + ".png")
            if os.path.exists(src_ann) and not (os.path.exists(dst_ann) and _same_file_bytes(src_ann, dst_ann)):
                with open(src_ann, "rb") as f:
                    write_bytes_atomic(dst_ann, f.read())
                report.annotations += 1

    batches = [todo[i : i + max(1, batch_size)] for i in range(0, len(todo), max(1, batch_size))]
    bar = progress(len(todo)) if progress is not None else None
    with open(manifest_path, "a", encoding="utf-8") as manifest:
        for batch in batches:
            for entry in _process_batch(batch, engine, input_root, output_root, int(seed), device, report):
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
    return report


def _process_batch(
    batch: Sequence[Tuple[str, str, str]],
    engine: Degradation,
    input_root: str,
    output_root: str,
    seed: int,
    device: str,
    report: DegradeReport,
) -> List[Dict[str, Any]]:
    """Read, degrade and write one batch; unreadable inputs go to `report.failures`."""
    images, metas = [], []
    for split, stem, path in batch:
        try:
            arr = _read_rgb(path)
        except Exception as e:  # noqa: BLE001 - any decoding problem is reported by name
            report.failures.append((path, f"{type(e).__name__}: {e}"))
            continue
        images.append(torch.from_numpy(arr).permute(2, 0, 1).to(device=device, dtype=torch.float32) / 255.0)
        metas.append((split, stem, path, derive_seed(seed, split, stem)))
    if not images:
        return []
    outs, params = engine.degrade_list(images, [m[3] for m in metas])
    entries = []
    for (split, stem, path, s), out, p in zip(metas, outs, params):
        pixels = torch.round(out * 255.0).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        data = encode_png(np.ascontiguousarray(pixels))
        write_bytes_atomic(os.path.join(output_root, "images", split, stem + ".png"), data)
        entries.append({"split": split, "stem": stem, "input": os.path.relpath(path, input_root), "seed": s,
                        "sha256": hashlib.sha256(data).hexdigest(), "params": p})
        report.written += 1
    return entries


def _same_file_bytes(a: str, b: str) -> bool:
    return os.path.getsize(a) == os.path.getsize(b) and sha256_file(a) == sha256_file(b)
