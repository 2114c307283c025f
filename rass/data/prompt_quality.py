"""The prompt-quality protocol: each object is prompted in several ways, from exact to poor, seeded per object.

Protocols (names as in results and tables; the lists come from TEST.PROMPT_QUALITY):
- ``gt_box``: the object's box (pixels > 128 of its mask in the image frame, max inclusive: HQ-SAM's
  `masks_to_boxes` on the GT), no noise — HQ-SAM's own evaluation prompt;
- ``box_noise_<s>`` for each s in BOX_NOISE_SCALES: the GT box jittered with HQ-SAM's `box_noise` form
  (SysCV/sam-hq `train/utils/misc.py`, DN-DETR style): in (cx, cy, w, h),
  ``cx += U(-1, 1)·w/2·s``, ``cy += U(-1, 1)·h/2·s``, ``w += U(-1, 1)·w·s``, ``h += U(-1, 1)·h·s``
  (four independent uniforms; `rass.data.prompts.box_noise`), then the box rules below;
- ``points_<n>`` for each n in NUM_POINTS: n positive points, uniform without replacement over the object's
  pixels (> 128) in the image frame, at pixel indices (x, y) — HQ-SAM's `masks_sample_points`;
- ``box_points_<n>`` (n = BOX_POINTS): the GT box plus n such points.

Seeding: every draw has its own generator, seeded by ``derive_seed("prompt-quality", seed, image_id,
object_index, protocol, draw)`` (SHA-256, not Python's salted `hash`): prompts depend on nothing else (not on the
process count, the order, the model or the other protocols). Draw 0 is the prompt scored for mIoU / mBIoU; draws
1..K-1 (K = STABILITY_DRAWS) are the extra prompts of the stability score.

Rules for degenerate input (documented, tested):
- noise scale < 0: refused (`UserValueError`); 0 gives the GT box;
- a drawn box whose corners cross (x2 < x1 or y2 < y1, possible for s > 1) has its corners sorted; a box (partly)
  outside the image is clamped to [0, w] x [0, h]; a box with no area left after that becomes the 1-pixel box
  at its clamped corner (so every protocol always prompts);
- zero points (n < 1 in NUM_POINTS / BOX_POINTS): refused; an object with fewer pixels than n: all its pixels in
  raster order, then the last one repeated (note "few_pixels");
- an empty object mask: every protocol prompts the whole image [0, 0, w-1, h-1] and/or its centre point
  (`rass.data.prompts`' rule, note "empty_mask"); such objects are counted in the results.

Stability (deterministic protocols have none: ``gt_box`` prompts the same way every time): the mean IoU over the
K(K-1)/2 pairs of masks that one object gets under its K draws (`rass.evaluation.promptable.mean_pairwise_iou`),
averaged over objects; 1 = the same mask whatever the draw.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from rass.data.degradation.online import derive_seed
from rass.data.prompts import box_noise, mask_to_box, resize_mask
from rass.utils.errors import UserValueError

__all__ = ["ProtocolSpec", "ObjectPrompts", "protocol_names", "protocol_rng", "object_prompts", "noisy_box",
           "sample_points", "normalize_box", "parse_protocol"]

_NAME = re.compile(r"(gt_box)|box_noise_(?P<s>[0-9.eE+-]+)|points_(?P<n>\d+)|box_points_(?P<bn>\d+)\Z")


def _scale_name(scale: float) -> str:
    return f"box_noise_{float(scale):g}"


@dataclass(frozen=True)
class ProtocolSpec:
    """Which protocols run and how (TEST.PROMPT_QUALITY).

    Args:
        box_noise_scales: scales s of the ``box_noise_<s>`` protocols (each >= 0).
        num_points: n of the ``points_<n>`` protocols (each >= 1).
        box_points: n of the ``box_points_<n>`` protocol (>= 1).
        draws: K draws per object for the stability score (>= 1; 1 = no stability).
        seed: base seed.
        protocols: the protocols to run, in order; empty = all of them (`names`).
    """

    box_noise_scales: Tuple[float, ...] = (0.1, 0.2, 0.4)
    num_points: Tuple[int, ...] = (1, 3, 5)
    box_points: int = 3
    draws: int = 5
    seed: int = 0
    protocols: Tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for s in self.box_noise_scales:
            if not np.isfinite(float(s)) or float(s) < 0:
                raise UserValueError(f"TEST.PROMPT_QUALITY.BOX_NOISE_SCALES: noise scale {s} is invalid; expected "
                                     f"numbers >= 0 (0 = the exact box; HQ-SAM's box_noise form)")
        for n in (*self.num_points, self.box_points):
            if int(n) < 1:
                raise UserValueError(f"TEST.PROMPT_QUALITY: {n} points requested; expected NUM_POINTS and BOX_POINTS "
                                     f">= 1 (a protocol with zero points would not prompt)")
        if int(self.draws) < 1:
            raise UserValueError(f"TEST.PROMPT_QUALITY.STABILITY_DRAWS {self.draws}: expected >= 1")
        known = self.all_names()
        unknown = [p for p in self.protocols if p not in known]
        if unknown:
            raise UserValueError(f"TEST.PROMPT_QUALITY.PROTOCOLS: unknown protocol(s) {unknown}; with these keys "
                                 f"the protocols are {known}")

    @classmethod
    def from_config(cls, cfg) -> "ProtocolSpec":
        """The spec of a project config's TEST.PROMPT_QUALITY keys."""
        q = cfg.TEST.PROMPT_QUALITY
        return cls(tuple(float(s) for s in q.BOX_NOISE_SCALES), tuple(int(n) for n in q.NUM_POINTS),
                   int(q.BOX_POINTS), int(q.STABILITY_DRAWS), int(q.SEED), tuple(str(p) for p in q.PROTOCOLS))

    def all_names(self) -> List[str]:
        """Every protocol these keys define, in the canonical order."""
        return (["gt_box"] + [_scale_name(s) for s in self.box_noise_scales]
                + [f"points_{int(n)}" for n in self.num_points] + [f"box_points_{int(self.box_points)}"])

    def names(self) -> List[str]:
        """The protocols that run (PROTOCOLS, else all)."""
        return list(self.protocols) or self.all_names()


def protocol_names(spec: ProtocolSpec) -> List[str]:
    """The protocols of `spec` that run, in order."""
    return spec.names()


def parse_protocol(name: str) -> Tuple[str, float, int]:
    """(kind, noise scale, number of points) of a protocol name; kind is "box", "points" or "box_points".

    Raises:
        UserValueError: not a protocol name.
    """
    m = _NAME.match(name)
    if not m:
        raise UserValueError(f"Unknown prompt protocol {name!r}; expected gt_box, box_noise_<s>, points_<n> or "
                             f"box_points_<n>")
    if m.group("s") is not None:
        scale = float(m.group("s"))
        if scale < 0:
            raise UserValueError(f"Prompt protocol {name!r}: noise scale {scale} < 0; expected >= 0")
        return "box", scale, 0
    if m.group("n") is not None:
        return "points", 0.0, int(m.group("n"))
    if m.group("bn") is not None:
        return "box_points", 0.0, int(m.group("bn"))
    return "box", 0.0, 0


def is_random(name: str) -> bool:
    """Whether a protocol's prompts depend on the draw (everything but the exact box)."""
    kind, scale, _ = parse_protocol(name)
    return not (kind == "box" and scale == 0)


def protocol_rng(seed: int, image_id: str, object_index: int, protocol: str, draw: int = 0) -> np.random.Generator:
    """The generator of one draw of one object's prompts under one protocol (see the module doc)."""
    return np.random.default_rng(derive_seed("prompt-quality", int(seed), str(image_id), int(object_index),
                                             str(protocol), int(draw)))


def normalize_box(box: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """A drawn box made valid (module doc): corners sorted, clamped to [0, w] x [0, h], at least 1 pixel wide and
    high (inside the image)."""
    h, w = float(hw[0]), float(hw[1])
    x0, x1 = sorted((float(box[0]), float(box[2])))
    y0, y1 = sorted((float(box[1]), float(box[3])))
    x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
    y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
    if x1 - x0 < 1.0:
        x0 = min(x0, w - 1.0)
        x1 = x0 + 1.0
    if y1 - y0 < 1.0:
        y0 = min(y0, h - 1.0)
        y1 = y0 + 1.0
    return np.array([x0, y0, x1, y1], dtype=np.float32)


def noisy_box(box: np.ndarray, scale: float, rng: np.random.Generator, hw: Tuple[int, int]) -> np.ndarray:
    """HQ-SAM's box noise on one xyxy box in the image frame, then the box rules (module doc).

    Args:
        box: 4 xyxy.
        scale: noise scale s (>= 0; 0 returns the box, made valid).
        rng: the draw's generator.
        hw: (h, w) of the image frame.

    Raises:
        UserValueError: scale < 0.
    """
    if not float(scale) >= 0:
        raise UserValueError(f"Box noise scale {scale}: expected a number >= 0 (HQ-SAM's box_noise form)")
    # rass.data.prompts.box_noise clamps each coordinate to the image; the corner and area rules follow here
    return normalize_box(box_noise(np.asarray(box, dtype=np.float32), float(scale), rng, hw), hw)


def sample_points(mask: np.ndarray, n: int, rng: np.random.Generator, threshold: int = 128) -> Tuple[np.ndarray, str]:
    """n positive points (x, y) uniform without replacement over the pixels > threshold (HQ-SAM's
    `masks_sample_points`); fewer pixels: all of them in raster order, then the last repeated (note "few_pixels").

    Args:
        mask: H x W uint8 mask in the image frame (not empty).
        n: number of points (>= 1).
        rng: the draw's generator.
        threshold: foreground = mask > threshold.

    Returns:
        (n x 2 float32 points, note).
    """
    if int(n) < 1:
        raise UserValueError(f"{n} points requested: expected at least 1 point per prompt")
    ys, xs = np.nonzero(mask > threshold)
    if xs.size == 0:
        raise ValueError("sample_points: the mask has no foreground pixel")
    if xs.size < n:
        idx, note = np.concatenate([np.arange(xs.size), np.full(n - xs.size, xs.size - 1)]), "few_pixels"
    else:
        idx, note = rng.choice(xs.size, size=int(n), replace=False), ""
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32), note


@dataclass
class ObjectPrompts:
    """The K draws of one object under one protocol (image frame).

    Attributes:
        boxes: K x 4 float32 xyxy, or None.
        point_coords: K x n x 2 float32, or None.
        point_labels: K x n int64 (all 1), or None.
        note: "" or "empty_mask" / "few_pixels".
    """

    boxes: Optional[np.ndarray]
    point_coords: Optional[np.ndarray]
    point_labels: Optional[np.ndarray]
    note: str = ""

    def as_inputs(self) -> Dict[str, np.ndarray]:
        """The model-input keys ("boxes" [K, 4], "point_coords" [K, n, 2], "point_labels" [K, n])."""
        out = {}
        if self.boxes is not None:
            out["boxes"] = self.boxes
        if self.point_coords is not None:
            out["point_coords"], out["point_labels"] = self.point_coords, self.point_labels
        return out


def object_prompts(mask: np.ndarray, image_hw: Tuple[int, int], protocol: str, image_id: str, object_index: int = 0,
                   seed: int = 0, draws: int = 1, threshold: int = 128) -> ObjectPrompts:
    """The prompts of one object under one protocol: draws 0..draws-1 (a deterministic protocol gets 1 draw).

    Args:
        mask: H x W uint8 0/255 object mask at its own size (resized to the image frame with cv2 bilinear, as
            `rass.data.prompts`).
        image_hw: (h, w) of the image frame the prompts are in.
        protocol: a protocol name (`ProtocolSpec.names`).
        image_id, object_index, seed: the seeding identity (module doc).
        draws: K.
        threshold: foreground = mask > threshold.

    Returns:
        The `ObjectPrompts`.
    """
    kind, scale, n = parse_protocol(protocol)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"object_prompts expects an H x W uint8 mask, got {mask.dtype} {mask.shape}")
    h, w = int(image_hw[0]), int(image_hw[1])
    m = resize_mask(mask, (h, w))
    k = int(draws) if is_random(protocol) else 1
    box = mask_to_box(m, threshold)
    note = ""
    if box is None:
        note = "empty_mask"
        box = np.array([0, 0, w - 1, h - 1], dtype=np.float32)
    boxes, points = [], []
    for draw in range(k):
        rng = protocol_rng(seed, image_id, object_index, protocol, draw)
        if kind in ("box", "box_points"):
            boxes.append(noisy_box(box, scale, rng, (h, w)))
        if kind in ("points", "box_points"):
            if note == "empty_mask":
                pts = np.tile(np.array([[w / 2, h / 2]], dtype=np.float32), (n, 1))
            else:
                pts, few = sample_points(m, n, rng, threshold)
                note = note or few
            points.append(pts)
    coords = np.stack(points) if points else None
    return ObjectPrompts(np.stack(boxes) if boxes else None, coords,
                         None if coords is None else np.ones(coords.shape[:2], dtype=np.int64), note)
