"""The browser demo's work without the page: which models it runs, reading uploads, degrading,
RASS on the clean and the degraded image, SAM / GleSAM on the degraded image, download files.

Everything here is plain numpy / torch (no gradio), so it is tested without a browser; the page
(`rass.app.page`) only wires it to components. Problems the user can fix (an unreadable or huge
upload, a missing weights file, a bad seed, no prompt) are `AppError`s whose message is shown on
the page as it is.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from rass.config import setup_cfg
from rass.data.dataset_mappers.io import read_image_checked
from rass.data.degradation import build_degradation
from rass.engine import PromptablePredictor, SemanticPredictor
from rass.evaluation.visualize import class_areas, draw, mask_iou, overlay, short_name
from rass.utils.cli import as_user_error
from rass.utils.errors import UserError
from rass.utils.io import save_image_atomic
from rass.utils.paths import project_path

__all__ = [
    "AppError", "DEGRADATIONS", "ModelChoice", "choose_rass_model", "choose_sam_model", "load_upload",
    "Degrader", "RassBackend", "RassResult", "Prompts", "SamBackend", "SamResult", "Downloads",
    "load_backend", "DEFAULT_MAX_PIXELS",
]

logger = logging.getLogger(__name__)

# The degradations offered on the page: none, the three LQSeg levels and RASS's training preset.
DEGRADATIONS = ("none", "lqseg_1", "lqseg_2", "lqseg_3", "rass")
RASS_DEFAULT_CONFIG = "configs/quickstart/tiny_rass.yaml"
SAM_DEFAULT_CONFIG = "configs/lqseg/tiny_glesam.yaml"
QUICKSTART_WEIGHTS = "output/quickstart/model_final.pth"
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_SEED = 2**31 - 1
CLICK_MODES = ("positive point", "negative point", "box corner")


class AppError(UserError, ValueError):
    """A problem with what the user gave the demo (shown on the page as its message)."""


# ----------------------------------------------------------------- which models
@dataclass
class ModelChoice:
    """The config a tab runs and how it was chosen.

    Args:
        config_file: the YAML config.
        opts: `KEY VALUE` overrides.
        origin: one sentence for the page on where the weights come from.
    """

    config_file: str
    opts: List[str]
    origin: str


def _has_key(opts: Sequence[str], key: str) -> bool:
    return any(k == key for k in opts[0::2])


def choose_rass_model(config_file: Optional[str], opts: Sequence[str] = (),
                      quickstart_weights: Optional[str] = None) -> ModelChoice:
    """The RASS tab's model: the given config, else the quickstart's trained model when
    `scripts/quickstart.sh` has written it, else the tiny configuration with random weights.

    Args:
        config_file: `--config-file`, or None.
        opts: `--opts` overrides.
        quickstart_weights: where the quickstart writes its model (default: the repository's
            output/quickstart/model_final.pth).
    """
    opts = list(opts)
    if config_file:
        if _has_key(opts, "MODEL.WEIGHTS"):
            weights = opts[1::2][opts[0::2].index("MODEL.WEIGHTS")]
            return ModelChoice(config_file, opts, f"{config_file} with MODEL.WEIGHTS {weights}")
        return ModelChoice(config_file, opts, f"{config_file} (MODEL.WEIGHTS as in the config)")
    weights = quickstart_weights or project_path(QUICKSTART_WEIGHTS)
    if os.path.isfile(weights) and not _has_key(opts, "MODEL.WEIGHTS"):
        return ModelChoice(project_path(RASS_DEFAULT_CONFIG), ["MODEL.WEIGHTS", weights] + opts,
                           f"the quickstart's tiny RASS model ({QUICKSTART_WEIGHTS}, trained on synthetic scenes): "
                           "no weights were configured")
    return ModelChoice(project_path(RASS_DEFAULT_CONFIG), opts,
                       "no weights configured: the tiny RASS configuration with RANDOM weights "
                       "(scripts/quickstart.sh trains one; --config-file / --opts MODEL.WEIGHTS choose yours)")


def choose_sam_model(config_file: Optional[str], opts: Sequence[str] = ()) -> ModelChoice:
    """The SAM / GleSAM tab's model: the given config, else the tiny GleSAM configuration (random weights).

    Args:
        config_file: `--sam-config-file`, or None.
        opts: `--sam-opts` overrides.
    """
    if config_file:
        return ModelChoice(config_file, list(opts), f"{config_file} (MODEL.SAM.CHECKPOINT, MODEL.GLESAM.LORA_PATH "
                                                     "as configured)")
    return ModelChoice(project_path(SAM_DEFAULT_CONFIG), list(opts),
                       "no weights configured: the tiny SAM and CRE UNet with RANDOM weights "
                       "(--sam-config-file configs/lqseg/glesam_vitl_sd21.yaml with MODEL.SAM.CHECKPOINT and "
                       "MODEL.GLESAM.LORA_PATH run the released GleSAM)")


def _message(exc: BaseException) -> Optional[str]:
    """The one-line user message of an exception, or None when it is a bug."""
    err = as_user_error(exc)
    if err is None:
        return None
    return err.message + (f" (hint: {err.hint})" if err.hint else "")


@dataclass
class Loaded:
    """A tab's back end, or why it could not be built.

    Args:
        choice: the config it was built from.
        backend: the back end, or None.
        error: the message shown on the page instead, or None.
    """

    choice: ModelChoice
    backend: Optional[object] = None
    error: Optional[str] = None


def load_backend(choice: ModelChoice, build: Callable[[object], object]) -> Loaded:
    """Build a tab's back end; a user error (config, weights) becomes the tab's message.

    Args:
        choice: the model choice.
        build: config -> back end (`RassBackend.from_cfg` or `SamBackend.from_cfg`).
    """
    try:
        return Loaded(choice, backend=build(setup_cfg(choice.config_file, choice.opts)))
    except Exception as e:  # noqa: BLE001 - the page shows it; the other tab keeps working
        msg = _message(e)
        if msg is None:
            logger.exception(f"building the model of {choice.config_file} failed")
            msg = f"{type(e).__name__}: {e} (a bug? the server log has the traceback)"
        return Loaded(choice, error=msg)


# ----------------------------------------------------------------- images
def load_upload(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an uploaded file as H x W x 3 uint8 RGB (the project's reader: EXIF orientation, 16-bit,
    palette, gray+alpha; float images refused), refusing images of more than `max_pixels`.

    Args:
        path: the uploaded file (its base name is the user's file name).
        max_pixels: the largest accepted width x height.
    """
    name = os.path.basename(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise AppError(f"{name}: the image is too large to open safely",
                       hint=f"the demo takes at most {max_pixels / 1e6:.1f} megapixels; make it smaller") from None
    except (OSError, ValueError) as e:
        reason = str(e).replace(f"'{path}'", name).replace(path, name)  # the upload's temp path means nothing
        raise AppError(f"{name}: not an image file this demo can read ({reason})") from None
    if w * h > max_pixels:
        raise AppError(f"{name} is {w} x {h} pixels ({w * h / 1e6:.1f} MP): the demo takes at most "
                       f"{max_pixels / 1e6:.1f} MP (--max-pixels)", hint="make the image smaller first")
    try:
        return np.ascontiguousarray(read_image_checked(path, "RGB"))
    except (OSError, ValueError) as e:
        raise AppError(f"{name}: cannot read the image ({str(e).replace(path, name)})") from None


class Degrader:
    """The page's degradations (`DEGRADATIONS`), one engine per preset, seeded per call.

    Args:
        num_threads: CPU threads of the engine (None: torch's setting).
    """

    def __init__(self, num_threads: Optional[int] = None) -> None:
        self._engines: Dict[str, Callable] = {}
        self._num_threads = num_threads
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, preset: str, seed: int) -> np.ndarray:
        """Degrade an RGB uint8 image; the same (image, preset, seed) always gives the same result.

        Args:
            image: H x W x 3 uint8 RGB.
            preset: one of `DEGRADATIONS` ("none" returns a copy).
            seed: the image's degradation seed, 0 .. 2**31 - 1.
        """
        if preset not in DEGRADATIONS:
            raise AppError(f"unknown degradation {preset!r}; expected one of {', '.join(DEGRADATIONS)}")
        seed = check_seed(seed)
        if preset == "none":
            return image.copy()
        with self._lock:
            if preset not in self._engines:
                self._engines[preset] = build_degradation(preset, seed=0, num_threads=self._num_threads)
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float() / 255.0
            y = self._engines[preset](x, seeds=[seed])[0]
        return np.ascontiguousarray((y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy())


def check_seed(seed: object) -> int:
    """The seed as an int in 0 .. 2**31 - 1 (the page's number box may give a float or None)."""
    try:
        value = float(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AppError(f"seed {seed!r}: expected a whole number from 0 to {MAX_SEED}") from None
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise AppError(f"seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
    return int(value)


# ----------------------------------------------------------------- RASS
@dataclass
class RassResult:
    """RASS on the clean and on the degraded image.

    Args:
        overlays: "clean" / "degraded" -> class-colour overlay (H x W x 3 uint8).
        labels: "clean" / "degraded" -> class ids (H x W int64).
        tags: "clean" / "degraded" -> the prompt the tagger read from that image.
        seconds: "clean" / "degraded" -> time of the prediction.
        legend: (class name, RGB colour, % of the clean image, % of the degraded image), for every
            class present in either, largest in the degraded image first.
    """

    overlays: Dict[str, np.ndarray]
    labels: Dict[str, np.ndarray]
    tags: Dict[str, str]
    seconds: Dict[str, float]
    legend: List[Tuple[str, Tuple[int, int, int], float, float]]


class RassBackend:
    """A semantic-segmentation predictor for the RASS tab, with the tags its tagger reads.

    Args:
        predictor: a `SemanticPredictor` (RASS or any semantic model of the project).
        opacity: weight of the class colours in the overlays.
    """

    def __init__(self, predictor: SemanticPredictor, opacity: float = 0.5) -> None:
        self.predictor = predictor
        self.opacity = opacity
        self._lock = threading.Lock()
        self._tags: List[str] = []
        self.tagger = getattr(getattr(predictor.model, "backbone", None), "tagger", None)
        if self.tagger is not None:
            self.tagger.register_forward_hook(self._record_tags)

    @classmethod
    def from_cfg(cls, cfg, opacity: float = 0.5) -> "RassBackend":
        """Build the predictor (random weights allowed: the page says so).

        Args:
            cfg: a semantic-segmentation config.
            opacity: see the class.
        """
        if cfg.MODEL.META_ARCHITECTURE == "PromptableSAM":
            raise AppError("the RASS tab needs a semantic-segmentation config; this is a SAM / GleSAM config",
                           hint="give it as --sam-config-file")
        return cls(SemanticPredictor(cfg, allow_random_weights=True), opacity=opacity)

    @property
    def weight_notes(self) -> List[str]:
        """What of the model has random weights."""
        return self.predictor.weight_notes

    def _record_tags(self, module: torch.nn.Module, inputs, output: List[str]) -> None:
        self._tags.extend(output)

    def describe_tags(self, tags: List[str]) -> str:
        """The tags of one prediction as shown on the page."""
        if self.tagger is None:
            return "(this model reads no tags: its backbone has no tagger)"
        text = tags[0] if tags else ""
        if hasattr(self.tagger, "prompt") and not hasattr(self.tagger, "decode"):  # the fixed-prompt tagger
            return f"fixed prompt {text!r} (MODEL.TAGGER.NAME none: no tagger network)"
        return text if text else "(no tag above its threshold)"

    def predict(self, image: np.ndarray) -> Tuple[np.ndarray, str, float]:
        """(class ids H x W, the tags read, seconds) of one RGB uint8 image."""
        with self._lock:
            self._tags = []
            start = time.perf_counter()
            labels = self.predictor(image)["labels"].cpu().numpy()
            seconds = time.perf_counter() - start
            tags = self.describe_tags(list(self._tags))
        return labels, tags, seconds

    def run(self, clean: np.ndarray, degraded: np.ndarray) -> RassResult:
        """Segment the clean and the degraded image.

        Args:
            clean: H x W x 3 uint8 RGB.
            degraded: its degraded version (same size).
        """
        result = RassResult({}, {}, {}, {}, [])
        colors = self.predictor.colors
        for key, image in (("clean", clean), ("degraded", degraded)):
            labels, tags, seconds = self.predict(image)
            result.labels[key] = labels
            result.overlays[key] = overlay(image, labels, colors, alpha=self.opacity)
            result.tags[key] = tags
            result.seconds[key] = seconds
        n = len(self.predictor.class_names)
        area = {k: class_areas(v, n) / max(v.size, 1) * 100.0 for k, v in result.labels.items()}
        present = [int(c) for c in np.argsort(-(area["degraded"] + 1e-6 * area["clean"]), kind="stable")
                   if area["clean"][c] > 0 or area["degraded"][c] > 0]
        result.legend = [(short_name(self.predictor.class_names[c]), tuple(int(v) for v in colors[c]),
                          float(area["clean"][c]), float(area["degraded"][c])) for c in present]
        return result


# ----------------------------------------------------------------- SAM / GleSAM
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

    def as_dict(self) -> Dict:
        """{"points", "labels", "box"} for drawing; a pending box corner is drawn as a gray point."""
        return {"points": self.points, "labels": self.labels, "box": self.box}

    def describe(self) -> str:
        """One line for the page."""
        pos, neg = self.labels.count(1), self.labels.count(0)
        parts = [f"{pos} positive / {neg} negative point(s)"]
        if self.box is not None:
            parts.append("box " + ", ".join(f"{v:.0f}" for v in self.box))
        if self.corner is not None:
            parts.append(f"box corner at {self.corner[0]:.0f}, {self.corner[1]:.0f} (click the opposite corner)")
        return "; ".join(parts)


def draw_prompts(image: np.ndarray, prompts: Prompts) -> np.ndarray:
    """The image with the prompts drawn (and a pending box corner as a white cross)."""
    out = draw(image, None, prompts.as_dict(), 0.0)
    if prompts.corner is not None:
        import cv2

        r = max(4, round(max(image.shape[:2]) / 60))
        x, y = (int(round(v)) for v in prompts.corner)
        cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 2 * r, 2)
    return out


@dataclass
class SamResult:
    """SAM and GleSAM on the degraded image with the same prompts.

    Args:
        masks: "SAM" / "GleSAM" -> H x W bool.
        iou_pred: the model's own predicted IoU per method.
        overlays: per method, the mask and the prompts over the image.
        seconds: per method, the time of the prediction.
        mutual_iou: IoU between the SAM and the GleSAM mask (None with SAM only).
    """

    masks: Dict[str, np.ndarray]
    iou_pred: Dict[str, float]
    overlays: Dict[str, np.ndarray]
    seconds: Dict[str, float]
    mutual_iou: Optional[float]


class SamBackend:
    """Plain SAM and, when the config enables it, GleSAM (the same SAM weights) for the SAM tab.

    Args:
        predictor: a `PromptablePredictor` (GleSAM when MODEL.GLESAM.ENHANCE, else plain SAM).
        opacity: weight of the mask colour in the overlays.
    """

    def __init__(self, predictor: PromptablePredictor, opacity: float = 0.5) -> None:
        self.weight_notes = list(predictor.weight_notes)
        self.methods: Dict[str, PromptablePredictor] = {}
        if predictor.enhanced:
            self.methods["SAM"] = predictor.plain_sam()  # shares the SAM image encoder's cache
            self.methods["GleSAM"] = predictor
        else:
            self.methods["SAM"] = predictor
        self.opacity = opacity
        self._lock = threading.Lock()

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

    def run(self, image: np.ndarray, prompts: Prompts) -> SamResult:
        """The masks of every method for the prompts.

        Args:
            image: H x W x 3 uint8 RGB (the degraded image).
            prompts: the clicks (at least one point or a complete box).
        """
        if not prompts.ready:
            raise AppError("no prompt yet: click a point on the image, or two opposite corners of a box")
        result = SamResult({}, {}, {}, {}, None)
        with self._lock:
            for name, predictor in self.methods.items():
                start = time.perf_counter()
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
        if len(result.masks) == 2:
            result.mutual_iou = mask_iou(result.masks["SAM"], result.masks["GleSAM"])
        return result


# ----------------------------------------------------------------- downloads
class Downloads:
    """PNG files for the page's download lists, one folder per run under `root` (the newest
    `keep` runs are kept), written atomically.

    Args:
        root: folder of the run folders (created).
        keep: how many run folders to keep.
    """

    def __init__(self, root: str, keep: int = 50) -> None:
        self.root = root
        self.keep = keep
        os.makedirs(root, exist_ok=True)
        self._lock = threading.Lock()
        self._runs = 0

    def write(self, stem: str, images: Dict[str, np.ndarray]) -> List[str]:
        """Write `<stem>_<key>.png` for every image; returns the paths.

        Args:
            stem: the input's name without extension.
            images: key -> H x W x 3 uint8 RGB, H x W bool mask (written 0 / 255) or H x W class ids
                (written as uint8).
        """
        with self._lock:
            self._runs += 1
            folder = tempfile.mkdtemp(prefix=f"run{self._runs:07d}-", dir=self.root)  # names sort by age
            runs = sorted(os.path.join(self.root, d) for d in os.listdir(self.root))
            for old in runs[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        paths = []
        for key, image in images.items():
            if image.dtype == bool:
                image = image.astype(np.uint8) * 255
            elif image.dtype != np.uint8:  # class ids
                if image.size and (image.min() < 0 or image.max() > 255):
                    raise AppError(f"{stem}_{key}.png is a uint8 PNG: class ids up to {int(image.max())} do not fit")
                image = image.astype(np.uint8)
            path = os.path.join(folder, f"{stem}_{key}.png")
            save_image_atomic(path, image)
            paths.append(path)
        return paths
