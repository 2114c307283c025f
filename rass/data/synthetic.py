"""Procedural ADE20K-format scenes for CPU training, tests and the quickstart.

Every image is an outdoor-like scene: sky above a horizon, a ground class below (grass, road
or water), a mountain range, then buildings, trees, cars and people. Each class has its own
shape, colour range and texture, so a small model can learn them; labels use ADE20K's 0-based
class ids (150 classes, 255 = ignore, used for thin boundary strips between objects).
Image `i` of a split depends only on (seed, split, i), so a dataset is reproducible and can be
extended or resumed. The settings that determine the files (seed, size range, generator version)
are recorded in the dataset root; a folder made with other settings is refused unless overwritten.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image

from rass.utils.errors import UserError, UserValueError
from rass.utils.io import save_image_atomic, write_text_atomic

# ADE20K 0-based class ids of the classes drawn (names from detectron2's ADE20K list).
CLASSES: Dict[str, int] = {
    "building": 1,
    "sky": 2,
    "tree": 4,
    "road": 6,
    "grass": 9,
    "person": 12,
    "mountain": 16,
    "car": 20,
    "water": 21,
}
SPLITS = {"train": "training", "val": "validation"}


@dataclass
class _Canvas:
    image: np.ndarray  # H x W x 3 float32 in [0, 255]
    label: np.ndarray  # H x W uint8
    rng: np.random.Generator

    @property
    def hw(self) -> Tuple[int, int]:
        return self.label.shape[0], self.label.shape[1]

    def paint(self, mask: np.ndarray, cls: str, texture: np.ndarray) -> None:
        self.image[mask] = texture[mask]
        self.label[mask] = CLASSES[cls]


def _jitter(rng: np.random.Generator, rgb, amount: float = 18.0) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _noise_texture(c: _Canvas, rgb, sigma: float) -> np.ndarray:
    h, w = c.hw
    return np.clip(_jitter(c.rng, rgb) + c.rng.normal(0, sigma, (h, w, 1)), 0, 255).astype(np.float32)


def _stripes(c: _Canvas, rgb_a, rgb_b, period: int, vertical: bool) -> np.ndarray:
    h, w = c.hw
    coord = np.arange(w if vertical else h)
    on = ((coord // max(1, period // 2)) % 2).astype(bool)
    on = np.broadcast_to(on[None, :] if vertical else on[:, None], (h, w))
    tex = np.where(on[..., None], _jitter(c.rng, rgb_a), _jitter(c.rng, rgb_b))
    return tex.astype(np.float32)


def _sky(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    top, bottom = _jitter(c.rng, (70, 120, 215)), _jitter(c.rng, (175, 205, 240))
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    tex = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).copy()
    mask = np.zeros((h, w), bool)
    mask[:horizon] = True
    c.paint(mask, "sky", tex)


def _ground(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    mask = np.zeros((h, w), bool)
    mask[horizon:] = True
    kind = c.rng.choice(["grass", "road", "water"])
    if kind == "grass":
        tex = _noise_texture(c, (60, 150, 50), 22.0)
    elif kind == "road":
        tex = _noise_texture(c, (95, 95, 100), 6.0)
        lane = np.zeros((h, w), bool)
        x0 = int(w * c.rng.uniform(0.3, 0.7))
        lane[:, x0 : x0 + max(3, w // 60)] = True
        tex[lane & ((np.arange(h)[:, None] // 12) % 2 == 0)] = (235, 235, 230)
    else:
        tex = _stripes(c, (30, 80, 160), (45, 105, 185), int(c.rng.integers(6, 14)), vertical=False)
    c.paint(mask, kind, tex)


def _mountains(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    peaks = int(c.rng.integers(2, 5))
    xs = np.linspace(-0.1 * w, 1.1 * w, 2 * peaks + 1)
    ys = [horizon if i % 2 == 0 else horizon - c.rng.uniform(0.15, 0.4) * horizon for i in range(len(xs))]
    poly = np.array(list(zip(xs, ys)) + [(1.1 * w, horizon), (-0.1 * w, horizon)], np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 1)
    tex = _noise_texture(c, (120, 100, 85), 10.0)
    c.paint(mask.astype(bool), "mountain", tex)


def _building(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    bw, bh = int(w * c.rng.uniform(0.12, 0.3)), int(horizon * c.rng.uniform(0.4, 0.85))
    x0 = int(c.rng.uniform(0, w - bw))
    y1 = horizon + int(c.rng.uniform(0, 0.08) * h)
    mask = np.zeros((h, w), bool)
    mask[max(0, y1 - bh) : y1, x0 : x0 + bw] = True
    base = _jitter(c.rng, (150, 140, 130), 30)
    tex = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
    step = int(c.rng.integers(12, 22))
    yy, xx = np.mgrid[0:h, 0:w]
    windows = ((yy % step) < step // 2) & ((xx % step) < step // 2)
    tex[windows] = _jitter(c.rng, (40, 50, 70), 10)
    c.paint(mask, "building", tex)


def _tree(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    r = int(min(h, w) * c.rng.uniform(0.05, 0.11))
    cx, cy = int(c.rng.uniform(0, w)), horizon + int(c.rng.uniform(-0.05, 0.15) * h) - 2 * r
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (cx - r // 5, cy), (cx + r // 5, cy + 2 * r), 1, -1)
    cv2.circle(mask, (cx, cy), r, 1, -1)
    cv2.circle(mask, (cx - r // 2, cy + r // 3), int(r * 0.7), 1, -1)
    cv2.circle(mask, (cx + r // 2, cy + r // 3), int(r * 0.7), 1, -1)
    tex = _noise_texture(c, (25, 85, 30), 28.0)
    c.paint(mask.astype(bool), "tree", tex)


def _car(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    cw = int(w * c.rng.uniform(0.1, 0.2))
    ch = int(cw * 0.45)
    x0, y1 = int(c.rng.uniform(0, w - cw)), int(c.rng.uniform(horizon + 0.1 * (h - horizon), h))
    mask = np.zeros((h, w), np.uint8)
    cv2.rectangle(mask, (x0, y1 - ch // 2), (x0 + cw, y1), 1, -1)
    cv2.rectangle(mask, (x0 + cw // 5, y1 - ch), (x0 + 4 * cw // 5, y1 - ch // 2), 1, -1)
    rgb = [(200, 30, 30), (30, 40, 190), (230, 200, 40)][int(c.rng.integers(0, 3))]
    tex = _noise_texture(c, rgb, 4.0)
    c.paint(mask.astype(bool), "car", tex)


def _person(c: _Canvas, horizon: int) -> None:
    h, w = c.hw
    ph = int((h - horizon) * c.rng.uniform(0.35, 0.7)) + 12
    cx, y1 = int(c.rng.uniform(0, w)), int(c.rng.uniform(horizon + 0.2 * (h - horizon), h))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, y1 - ph // 3), (max(2, ph // 8), ph // 3), 0, 0, 360, 1, -1)
    cv2.circle(mask, (cx, y1 - 3 * ph // 4), max(2, ph // 9), 1, -1)
    tex = _stripes(c, (235, 120, 160), (250, 210, 170), int(c.rng.integers(4, 8)), vertical=False)
    c.paint(mask.astype(bool), "person", tex)


_OBJECTS: Dict[str, Tuple[Callable[[_Canvas, int], None], Tuple[int, int]]] = {
    "building": (_building, (0, 3)),
    "tree": (_tree, (0, 4)),
    "car": (_car, (0, 3)),
    "person": (_person, (0, 3)),
}


def _boundaries(label: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels on a class boundary (set to ignore, as annotators' uncertain edges)."""
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    return cv2.dilate(label, k) != cv2.erode(label, k)


def render_scene(seed: int, min_size: int = 256, max_size: int = 640) -> Tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        seed: the scene's seed (its only source of randomness).
        min_size: smallest side length in pixels.
        max_size: largest side length in pixels.

    Returns:
        (image H x W x 3 uint8 RGB, label H x W uint8 with ADE20K 0-based ids and 255).
    """
    if not 16 <= min_size <= max_size:
        raise ValueError(f"render_scene: need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(min_size, max_size + 1, 2))
    c = _Canvas(np.zeros((h, w, 3), np.float32), np.full((h, w), 255, np.uint8), rng)
    horizon = int(h * rng.uniform(0.35, 0.6))
    _sky(c, horizon)
    _ground(c, horizon)
    if rng.uniform() < 0.7:
        _mountains(c, horizon)
    for name, (draw, (lo, hi)) in _OBJECTS.items():
        for _ in range(int(rng.integers(lo, hi + 1))):
            draw(c, horizon)
    label = c.label.copy()
    label[_boundaries(c.label)] = 255
    image = cv2.GaussianBlur(c.image, (3, 3), 0.6)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def image_seed(seed: int, split: str, index: int) -> int:
    """The seed of image `index` of `split` in a dataset generated with `seed`."""
    return (seed * 1_000_003 + zlib.crc32(split.encode()) + index * 7919) % (2**32)


# Version of the generator's output for given settings; bump it whenever render_scene's bytes change.
GENERATOR_VERSION = 1
RECORD = "synthetic_ade20k.json"  # in the dataset root: the settings that determine the files
_FILE_RE = {"images": re.compile(r"synth_\d{6}\.jpg"), "annotations_detectron2": re.compile(r"synth_\d{6}\.png")}
_Indices = Dict[str, List[int]]  # split ("train" / "val") -> image indices


class SyntheticFolderError(UserError, ValueError):
    """The output folder holds something other than (part of) the dataset asked for."""


def _settings(seed: int, min_size: int, max_size: int) -> Dict[str, int]:
    return {"generator": GENERATOR_VERSION, "seed": int(seed), "min_size": int(min_size), "max_size": int(max_size)}


def _describe(settings: Dict, keys=("seed", "min_size", "max_size", "generator")) -> str:
    return ", ".join(f"{k} {settings.get(k)!r}" for k in keys)


def _scan(out: str) -> Tuple[_Indices, _Indices, List[str], List[str]]:
    """Per split the indices of complete image/label pairs and of lone halves (an interrupted run),
    then the generated files and the files that are not generated ones (paths relative to `out`)."""
    pairs: _Indices = {}
    lone: _Indices = {}
    generated: List[str] = []
    foreign: List[str] = []
    for split, sub in SPLITS.items():
        found = {}
        for top, pattern in _FILE_RE.items():
            folder = os.path.join(out, top, sub)
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            for n in names:
                if n.startswith("."):
                    continue  # hidden files (e.g. a temporary file of an interrupted write)
                rel = os.path.join(top, sub, n)
                if pattern.fullmatch(n):
                    generated.append(rel)
                    found.setdefault(int(n[6:12]), set()).add(top)
                else:
                    foreign.append(rel)
        pairs[split] = sorted(i for i, tops in found.items() if len(tops) == 2)
        lone[split] = sorted(i for i, tops in found.items() if len(tops) == 1)
    return pairs, lone, generated, foreign


def _matches(out: str, settings: Dict, pairs: _Indices) -> Tuple[bool, str]:
    """Whether the first generated label of the folder is the one these settings render."""
    for split, idx in pairs.items():
        if idx:
            rel = os.path.join("annotations_detectron2", SPLITS[split], f"synth_{idx[0]:06d}.png")
            try:
                with Image.open(os.path.join(out, rel)) as im:
                    have = np.asarray(im)
            except Exception as e:  # noqa: BLE001 - any unreadable file is a mismatch, reported
                return False, f"{rel} cannot be read ({type(e).__name__})"
            seed = image_seed(settings["seed"], split, idx[0])
            _, want = render_scene(seed, settings["min_size"], settings["max_size"])
            return (have.shape == want.shape and np.array_equal(have, want)), rel
    return True, ""


def _check_folder(out: str, settings: Dict, overwrite: bool) -> Tuple[_Indices, _Indices, bool]:
    """Refuse a folder made with other settings (unless `overwrite`: then empty it).

    Returns:
        the complete pairs kept and the lone halves per split, and whether the record must be written.
    """
    pairs, lone, generated, foreign = _scan(out)
    if foreign:
        raise SyntheticFolderError(
            f"{out} holds files that are not part of a generated dataset (e.g. {foreign[0]}; {len(foreign)} in all)",
            hint="give an empty or new --out folder",
        )
    record_path = os.path.join(out, RECORD)
    old = None
    if os.path.isfile(record_path):
        try:
            with open(record_path, "r", encoding="utf-8") as f:
                old = json.load(f)
        except ValueError as e:
            old = {"record": f"unreadable ({e})"}
        if not isinstance(old, dict):
            old = {"record": f"not a JSON object ({type(old).__name__})"}
    if old is not None and "record" in old and set(old) == {"record"}:
        reason = f"{record_path} is {old['record']}, so what the folder holds is unknown"
    elif old is not None and old != settings:
        keys = [k for k in ("seed", "min_size", "max_size", "generator") if old.get(k) != settings.get(k)]
        reason = (f"{out} was generated with {_describe(old, keys)}; this run asks for "
                  f"{_describe(settings, keys)} ({RECORD})")
    elif old is None and generated:
        same, rel = _matches(out, settings, pairs)
        reason = "" if same else (f"{out} holds a generated dataset that was not made with {_describe(settings)} "
                                  f"({rel} differs; the folder has no {RECORD})")
    else:
        reason = ""
    if reason and not overwrite:
        raise SyntheticFolderError(reason, hint="use --overwrite to regenerate it, or another --out folder")
    if overwrite and (generated or os.path.exists(record_path)):
        if os.path.exists(record_path):
            os.remove(record_path)
        for rel in generated:
            os.remove(os.path.join(out, rel))
        pairs = lone = {split: [] for split in SPLITS}
        old = None
    return pairs, lone, old != settings


def make_synthetic_ade20k(
    out: str,
    seed: int = 0,
    num_train: int = 200,
    num_val: int = 50,
    min_size: int = 256,
    max_size: int = 640,
    progress: bool = True,
    overwrite: bool = False,
) -> Dict[str, int]:
    """Write a synthetic dataset in detectron2's ADE20K layout, or complete / reuse one.

    ``out/images/{training,validation}/synth_XXXXXX.jpg`` (JPEG quality 95),
    ``out/annotations_detectron2/{training,validation}/synth_XXXXXX.png`` and ``out/synthetic_ade20k.json``
    (seed, size range, generator version). A folder made with the same settings is completed (missing
    images are written, existing ones kept: image `i` depends only on seed, split and `i`); one made
    with other settings, or holding other files, is refused with `SyntheticFolderError` unless
    `overwrite` (then its generated files are deleted and everything is written again).

    Args:
        out: dataset root.
        seed: dataset seed.
        num_train: training images.
        num_val: validation images.
        min_size: smallest image side.
        max_size: largest image side.
        progress: show a progress bar.
        overwrite: regenerate a folder made with other settings (or the same ones) from scratch.

    Returns:
        number of images written per split (0 when everything existed).
    """
    from tqdm import tqdm

    if not 16 <= min_size <= max_size:
        raise UserValueError(f"make_synthetic_ade20k: need 16 <= min_size <= max_size, got {min_size}, {max_size}")
    if num_train < 0 or num_val < 0:
        raise UserValueError(f"make_synthetic_ade20k: image counts must be >= 0, got {num_train}, {num_val}")
    settings = _settings(seed, min_size, max_size)
    have, lone, new_record = _check_folder(out, settings, overwrite)
    if new_record:  # before any image: an interrupted run is recognised by its settings
        write_text_atomic(os.path.join(out, RECORD), json.dumps(settings, indent=2, sort_keys=True) + "\n")
    written = {}
    for split, n in (("train", num_train), ("val", num_val)):
        sub = SPLITS[split]
        img_dir = os.path.join(out, "images", sub)
        gt_dir = os.path.join(out, "annotations_detectron2", sub)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        done = set(have[split])  # lone halves are completed too, also beyond n: the folder stays loadable
        todo = sorted(set(i for i in range(n) if i not in done) | set(lone[split]))
        for i in tqdm(todo, desc=f"synthetic {split}", disable=not progress or not todo):
            stem = f"synth_{i:06d}"
            image, label = render_scene(image_seed(seed, split, i), min_size, max_size)
            save_image_atomic(os.path.join(gt_dir, stem + ".png"), label)
            save_image_atomic(os.path.join(img_dir, stem + ".jpg"), image, quality=95)
        written[split] = len(todo)
    return written


def count_images(out: str) -> Dict[str, int]:
    """Number of complete image/label pairs per split ("train", "val") of a generated dataset folder."""
    return {split: len(idx) for split, idx in _scan(out)[0].items()}
