"""The browser demo's SAM / GleSAM tab: the clicks (points, a box) and SAM's and GleSAM's masks for them (and,
optionally, a third mask from another promptable model, e.g. RobustSAM, on the same clicks)."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from rass.app.models import AppError, Progress
from rass.engine import PromptablePredictor
from rass.evaluation.visualize import draw, enlarge, mask_iou, scale_prompt

__all__ = ["CLICK_MODES", "ENCODE_STAGE", "ENHANCE_STAGE", "Prompts", "draw_prompts", "SamBackend", "SamResult",
           "extra_encode_stage", "robustsam_predictor", "extra_sam_predictor", "EXTRA_SAM_ARCHITECTURES",
           "perturb_box", "draw_perturbed", "NOISY_BOX_COLOR", "PerturbResult",
           "mask_file_key", "UNTRAINED_PLUGINS_NOTE"]

# The promptable models that can add a mask to the SAM tab (`extra_sam_predictor`): META_ARCHITECTURE -> the
# configs that have it.
EXTRA_SAM_ARCHITECTURES = {
    "StableSAM": "configs/lqseg/stable_sam_vit_*.yaml",
    "PromptableSAMHQ": "configs/lqseg/sam_hq_vit_*.yaml",
    "RobustSAM": "configs/lqseg/robustsam_vit_*.yaml",
    "PromptableSAM": "configs/lqseg/*.yaml (SAM or GleSAM)",
}
# The weight note of a Stable-SAM without plugin weights (`extra_sam_predictor`; the page says it in plain words).
UNTRAINED_PLUGINS_NOTE = ("MODEL.STABLE_SAM.PLUGIN_WEIGHTS is empty: Stable-SAM's plugins are untrained (their init "
                          "gives SAM's masks exactly)")
# The colour of a perturbed box (the user's own box is drawn blue, `rass.evaluation.visualize.draw`).
NOISY_BOX_COLOR = (255, 150, 0)

ENCODE_STAGE = "encoding the image (SAM's image encoder: the slow step, once per image)"
ENHANCE_STAGE = "enhancing the image embedding (GleSAM's denoising UNet, once per image)"


def extra_encode_stage(name: str) -> str:
    """The progress stage of an added model's own image encoder (`SamBackend.with_extra`)."""
    return f"encoding the image for {name} (its own SAM image encoder, once per image)"

CLICK_MODES = ("positive point", "negative point", "box corner")


@dataclass
class Prompts:
    """The clicks on the SAM tab's image: points (label 1 positive, 0 negative) and at most one box,
    drawn by two "box corner" clicks (the first is kept in `corner` until the second).
    """

    points: List[List[float]] = field(default_factory=list)
    labels: List[int] = field(default_factory=list)
    box: Optional[List[float]] = None
    corner: Optional[List[float]] = None

    def add_click(self, x: float, y: float, mode: str) -> "Prompts":
        """A new `Prompts` with one more click.

        Args:
            x, y: pixel coordinates on the image.
            mode: one of `CLICK_MODES`.
        """
        if mode not in CLICK_MODES:
            raise AppError(f"unknown click mode {mode!r}; expected one of {', '.join(CLICK_MODES)}")
        new = Prompts([list(p) for p in self.points], list(self.labels), self.box, self.corner)
        if mode == "box corner":
            if new.corner is None:
                new.corner = [float(x), float(y)]
            else:
                (x0, y0), new.corner = new.corner, None
                new.box = [min(x0, x), min(y0, y), max(x0, x), max(y0, y)]
        else:
            new.points.append([float(x), float(y)])
            new.labels.append(1 if mode == "positive point" else 0)
        return new

    @property
    def ready(self) -> bool:
        """Whether there is a point or a complete box."""
        return bool(self.points) or self.box is not None

    def scaled(self, factor: int) -> "Prompts":
        """The prompts on the image enlarged by `factor` for display (`rass.evaluation.visualize.enlarge`)."""
        if factor == 1:
            return self
        big = scale_prompt(self.as_dict(), factor)
        corner = None if self.corner is None else scale_prompt({"points": [self.corner]}, factor)["points"][0]
        return Prompts(big["points"], big["labels"], big["box"], corner)

    def as_dict(self) -> Dict:
        """{"points", "labels", "box"} for drawing; a pending box corner is drawn as a gray point."""
        return {"points": self.points, "labels": self.labels, "box": self.box}

    def describe(self) -> str:
        """One line for the page, e.g. "1 positive / 1 negative point(s): +(10, 20) -(30, 5); box 12, 8, 50, 40"."""
        pos, neg = self.labels.count(1), self.labels.count(0)
        points = " ".join(f"{'+' if label else '-'}({x:.0f}, {y:.0f})" for (x, y), label in zip(self.points, self.labels))
        parts = [f"{pos} positive / {neg} negative point(s)" + (f": {points}" if points else "")]
        if self.box is not None:
            parts.append("box " + ", ".join(f"{v:.0f}" for v in self.box))
        if self.corner is not None:
            parts.append(f"box corner at {self.corner[0]:.0f}, {self.corner[1]:.0f} (click the opposite corner)")
        return "; ".join(parts)


def draw_prompts(image: np.ndarray, prompts: Prompts, factor: int = 1) -> np.ndarray:
    """The image with the prompts drawn (and a pending box corner as a white cross).

    Args:
        image: H x W x 3 uint8 RGB.
        prompts: the clicks, in the image's pixels.
        factor: draw on the image enlarged by this integer factor (nearest neighbour), for display.
    """
    image, prompts = enlarge(image, factor), prompts.scaled(factor)
    out = draw(image, None, prompts.as_dict(), 0.0)
    if prompts.corner is not None:
        r = max(4, round(max(image.shape[:2]) / 60))
        x, y = (int(round(v)) for v in prompts.corner)
        cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 2 * r, 2)
    return out


@dataclass
class SamResult:
    """SAM and GleSAM on the degraded image with the same prompts.

    Args:
        masks: "SAM" / "GleSAM" (/ an added model's name, e.g. "RobustSAM") -> H x W bool.
        iou_pred: the model's own predicted IoU per method.
        overlays: per method, the mask and the prompts over the image.
        seconds: per method, the time of its mask decoder; "encoder": SAM's image encoder (shared) plus an added
            model's own (~0 when the image's embedding was cached); "enhancement": GleSAM's UNet.
        mutual_iou: IoU between the SAM and the GleSAM mask (None with SAM only).
        pair_iou: IoU of every pair of masks, keyed "A vs B" in the order of `masks` (e.g. "SAM vs RobustSAM").
    """

    masks: Dict[str, np.ndarray]
    iou_pred: Dict[str, float]
    overlays: Dict[str, np.ndarray]
    seconds: Dict[str, float]
    mutual_iou: Optional[float]
    pair_iou: Dict[str, float] = field(default_factory=dict)


class SamBackend:
    """Plain SAM and, when the config enables it, GleSAM (the same SAM weights) for the SAM tab, plus optional
    further models with their own weights and image encoders (`extra`, e.g. RobustSAM) on the same clicks.

    Args:
        predictor: a `PromptablePredictor` (GleSAM when MODEL.GLESAM.ENHANCE, else plain SAM).
        opacity: weight of the mask colour in the overlays.
        extra: name -> predictor of another model (its own image encoder and embedding cache); its masks come
            after SAM's and GleSAM's. Its weight notes stay its own (not in `weight_notes`).
    """

    def __init__(self, predictor: PromptablePredictor, opacity: float = 0.5,
                 extra: Optional[Dict[str, PromptablePredictor]] = None) -> None:
        self.predictor = predictor
        self.weight_notes = list(predictor.weight_notes)
        self.methods: Dict[str, PromptablePredictor] = {}
        if predictor.enhanced:
            self.methods["SAM"] = predictor.plain_sam()  # shares the SAM image encoder's cache
            self.methods["GleSAM"] = predictor
        else:
            self.methods["SAM"] = predictor
        self.own_methods: List[str] = list(self.methods)
        self.extra: Dict[str, PromptablePredictor] = dict(extra or {})
        for name, other in self.extra.items():
            if name in self.methods:
                raise AppError(f"the SAM tab already has a {name} mask; give the added model another name")
            self.methods[name] = other
        self.opacity = opacity
        self._lock = threading.Lock()

    def with_extra(self, name: str, predictor: PromptablePredictor) -> "SamBackend":
        """A back end with the same SAM / GleSAM predictors and one more model's mask (e.g. "RobustSAM").

        Args:
            name: the mask's name on the page.
            predictor: the model's predictor (its own weights and image encoder).
        """
        return SamBackend(self.predictor, self.opacity, extra={**self.extra, name: predictor})

    @classmethod
    def from_cfg(cls, cfg, opacity: float = 0.5) -> "SamBackend":
        """Build the predictor(s) from a configs/lqseg config.

        Args:
            cfg: a PromptableSAM config.
            opacity: see the class.
        """
        if cfg.MODEL.META_ARCHITECTURE != "PromptableSAM":
            raise AppError(f"the SAM / GleSAM tab needs a configs/lqseg config (MODEL.META_ARCHITECTURE "
                           f"'PromptableSAM'), got {cfg.MODEL.META_ARCHITECTURE!r}")
        return cls(PromptablePredictor(cfg), opacity=opacity)


    def stages(self) -> List[str]:
        """The names of the steps of `run`, in order (the first ones are quick when the image was seen before:
        its embeddings are cached)."""
        steps = [ENCODE_STAGE] + ([ENHANCE_STAGE] if "GleSAM" in self.methods else [])
        steps += [extra_encode_stage(name) for name in self.extra]
        return steps + [f"decoding {name}'s mask" for name in self.methods]

    def run(self, image: np.ndarray, prompts: Prompts, progress: Optional[Progress] = None) -> SamResult:
        """The masks of every method for the prompts.

        Args:
            image: H x W x 3 uint8 RGB (the degraded image).
            prompts: the clicks (at least one point or a complete box).
            progress: told each of `stages` as it starts, e.g. gradio's progress bar.
        """
        if not prompts.ready:
            raise AppError("no prompt yet: click a point on the image, or two opposite corners of a box")
        result = SamResult({}, {}, {}, {}, None)
        steps = self.stages()

        def stage(i: int) -> float:
            if progress is not None:
                progress(i / len(steps), steps[i])
            return time.perf_counter()

        with self._lock:
            start = stage(0)
            next(iter(self.methods.values())).embeddings(image)  # SAM's encoder, shared by the methods
            result.seconds["encoder"] = time.perf_counter() - start
            if "GleSAM" in self.methods:
                start = stage(1)
                self.methods["GleSAM"].embeddings(image)
                result.seconds["enhancement"] = time.perf_counter() - start
            for name, other in self.extra.items():  # their own image encoders: counted as reading the image
                start = stage(steps.index(extra_encode_stage(name)))
                other.embeddings(image)
                result.seconds["encoder"] += time.perf_counter() - start
            for i, (name, predictor) in enumerate(self.methods.items()):
                start = stage(len(steps) - len(self.methods) + i)
                try:
                    out = predictor(image, points=prompts.points or None, labels=prompts.labels or None,
                                    box=prompts.box)
                except ValueError as e:  # a prompt outside the image
                    raise AppError(str(e)) from None
                result.seconds[name] = time.perf_counter() - start
                mask = out["masks"].cpu().numpy().astype(bool)
                result.masks[name] = mask
                result.iou_pred[name] = float(out["iou_pred"])
                result.overlays[name] = draw(image, mask, prompts.as_dict(), self.opacity)
        if progress is not None:
            progress(1.0, "done")
        if "GleSAM" in result.masks:
            result.mutual_iou = mask_iou(result.masks["SAM"], result.masks["GleSAM"])
        names = list(result.masks)
        result.pair_iou = {f"{a} vs {b}": mask_iou(result.masks[a], result.masks[b])
                           for i, a in enumerate(names) for b in names[i + 1:]}
        return result

    def perturb(self, image: np.ndarray, prompts: Prompts, scale: float, seed: int,
                progress: Optional[Progress] = None) -> "PerturbResult":
        """Every model's mask with the user's box replaced by one noisy draw (`perturb_box`), next to its mask
        for the user's own prompts.

        Args:
            image: H x W x 3 uint8 RGB (the degraded image).
            prompts: the clicks, with a complete box (points are kept as they are).
            scale: the noise scale (>= 0).
            seed: the draw's seed.
            progress: see `run` (the two runs share the bar).
        """
        if prompts.box is None:
            raise AppError("no box to perturb: choose 'box corner' and click two opposite corners of a box first")
        noisy = perturb_box(prompts.box, scale, seed, image.shape[:2])

        def half(offset: float) -> Optional[Progress]:
            if progress is None:
                return None
            return lambda f, stage: progress(offset + 0.5 * f, stage) if f < 1.0 else None

        original = self.run(image, prompts, progress=half(0.0))
        moved = Prompts([list(p) for p in prompts.points], list(prompts.labels), noisy)
        perturbed = self.run(image, moved, progress=half(0.5))
        if progress is not None:
            progress(1.0, "done")
        stability = {name: mask_iou(perturbed.masks[name], original.masks[name]) for name in perturbed.masks}
        return PerturbResult(list(prompts.box), noisy, float(scale), int(seed), original, perturbed, stability)


@dataclass
class PerturbResult:
    """Every model's mask under one noisy draw of the user's box (the "perturb my box" control).

    Args:
        box: the user's box; noisy: the drawn box (`perturb_box`); scale, seed: the draw's.
        original: the masks for the user's prompts; perturbed: the masks with the box replaced by `noisy` (the
            points kept).
        stability: per model, the IoU of its mask under `noisy` with its own mask under `box` (a one-draw
            stability, 1 = the same mask).
    """

    box: List[float]
    noisy: List[float]
    scale: float
    seed: int
    original: SamResult
    perturbed: SamResult
    stability: Dict[str, float]


def mask_file_key(name: str) -> str:
    """A model's name as a part of a file name: lower case, runs of other characters as "_" ("Stable-SAM" ->
    "stable_sam", "GleSAM + Stable-SAM" -> "glesam_stable_sam")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "model"


def perturb_box(box: Sequence[float], scale: float, seed: int, hw: Tuple[int, int]) -> List[float]:
    """One seeded noisy draw of a box: HQ-SAM's box-noise form and box rules of the prompt-quality protocol
    (`rass.data.prompt_quality.noisy_box`) with the generator `numpy.random.default_rng(seed)`. The same seed
    draws the same four uniforms at every scale, so a larger scale moves the box further the same way.

    Args:
        box: (x1, y1, x2, y2) pixels of the image.
        scale: the noise scale s (>= 0; 0 gives the box back).
        seed: the draw's seed (>= 0).
        hw: (h, w) of the image (the drawn box is clamped to it).

    Raises:
        UserValueError: scale < 0 or not a number (`noisy_box`).
    """
    from rass.data.prompt_quality import noisy_box

    noisy = noisy_box(np.asarray(box, dtype=np.float32), float(scale), np.random.default_rng(int(seed)), hw)
    return [float(v) for v in noisy]


def draw_perturbed(image: np.ndarray, mask: Optional[np.ndarray], prompts: Prompts, noisy: Sequence[float],
                   opacity: float, factor: int = 1) -> np.ndarray:
    """The image (a mask over it, or None) with the prompts' points, the user's box (blue) and the perturbed box
    (orange, `NOISY_BOX_COLOR`).

    Args:
        image: H x W x 3 uint8 RGB.
        mask: H x W bool, or None.
        prompts: the clicks (their box is the user's box).
        noisy: the perturbed box, in the image's pixels.
        opacity: weight of the mask colour.
        factor: draw on the image enlarged by this integer factor (nearest neighbour), for display.
    """
    big = prompts.scaled(factor)
    out = draw(enlarge(image, factor), None if mask is None else enlarge(mask, factor), big.as_dict(), opacity)
    x1, y1, x2, y2 = (int(round(v)) for v in scale_prompt({"box": list(noisy)}, factor)["box"])
    r = max(4, round(max(out.shape[:2]) / 60))
    cv2.rectangle(out, (x1, y1), (x2, y2), NOISY_BOX_COLOR, max(1, r // 2))
    return out


def extra_sam_predictor(cfg) -> PromptablePredictor:
    """An added mask of the SAM tab (`SamBackend.with_extra`): Stable-SAM, HQ-SAM, RobustSAM or another SAM /
    GleSAM, from its config (`EXTRA_SAM_ARCHITECTURES`).

    Args:
        cfg: the model's config.
    """
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch not in EXTRA_SAM_ARCHITECTURES:
        raise AppError(f"an added SAM-tab mask needs a promptable config (META_ARCHITECTURE one of "
                       f"{', '.join(EXTRA_SAM_ARCHITECTURES)}), got {arch!r}")
    predictor = PromptablePredictor(cfg)
    if arch == "StableSAM" and not cfg.MODEL.STABLE_SAM.PLUGIN_WEIGHTS and not cfg.MODEL.WEIGHTS:
        predictor.weight_notes.append(UNTRAINED_PLUGINS_NOTE)
    return predictor


def robustsam_predictor(cfg) -> PromptablePredictor:
    """The SAM tab's optional RobustSAM (`SamBackend.with_extra`), from a configs/lqseg/robustsam_*.yaml config.

    Args:
        cfg: a RobustSAM config (MODEL.META_ARCHITECTURE "RobustSAM").
    """
    if cfg.MODEL.META_ARCHITECTURE != "RobustSAM":
        raise AppError(f"the RobustSAM mask needs a RobustSAM config (configs/lqseg/robustsam_vit_*.yaml, "
                       f"MODEL.META_ARCHITECTURE 'RobustSAM'), got {cfg.MODEL.META_ARCHITECTURE!r}")
    return PromptablePredictor(cfg)
