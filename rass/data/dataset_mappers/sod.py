"""MGD-SAM2's SOD / DIS mapper ("mgd_sod"): image + one grey object mask, the release's augmentations.

Input dict (see `rass.data.datasets.sod`): file_name, mask_file, image_id, height, width.

Training (as MGD-SAM2's ``datasets/wrappers.py`` TrainDataset, on PIL images, in this order):
1. horizontal flip with probability FLIP_PROB (0.5);
2. centred crop of (W − a) × (H − b), a, b ~ U{1..CROP_BORDER} (30), the release's box
   ``((W−w)>>1, (H−h)>>1, (W+w)>>1, (H+h)>>1)``; a side ≤ CROP_BORDER draws from 1..side−1 (side 1: kept);
3. with probability ROTATION_PROB (0.2) a rotation by U{−ROTATION_DEGREES..ROTATION_DEGREES−1}° (−15..14)
   about the centre, same size, black corners: bicubic image, nearest mask;
4. colour enhancement of the image (always): PIL brightness, contrast, colour and sharpness factors
   drawn in 0.1 steps from BRIGHTNESS (0.5..1.5), CONTRAST (0.5..1.5), COLOR (0..2.0), SHARPNESS (0..3.0);
5. resize to IMAGE_SIZE² (1024): image bilinear, mask nearest (aspect not kept).
Output ``image`` uint8 3×S×S (RGB, not normalised: the model normalises) and ``gt_mask`` float32 S×S
= mask value / 255 (nearest-resized, NOT binarised, as released); ``height``/``width`` stay the mask's
original size. Draws come from a generator seeded
by (INPUT.SOD.SEED, rank, data-loader worker), re-drawn at every call (as the promptable mapper).

Test: ``image`` = the image resized to S² bilinear (only the image is resized); ``gt_mask`` float32
H×W = mask / 255 at the mask's original size (height, width in the dict); the evaluator binarises it
at value > 128 (`rass.evaluation.sod`), as the release's metrics.

Masks: 8-bit grey, palette or RGB are read as PIL's ``convert("L")`` (as the release). RGBA / LA:
grey of the colour channels, unless those are uniform while the alpha varies, then the alpha
(``mask_note`` "alpha"). A 0/1 mask is read as 0/255 ("binary01"; the release would read it as
empty). Other values are kept (value/255 in training, > 128 = object at evaluation; "not_binary").
Each rule is logged once per mapper. The image and its mask must have the same size.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.utils import comm
from PIL import Image, ImageEnhance

from rass.data.degradation.online import derive_seed
from rass.utils.errors import UserValueError
from rass.utils.image_io import DAMAGED_FILE_HINT, EXIF_POLICIES, DataFileError, exif_note, read_image_checked

__all__ = ["MGDSODDatasetMapper", "read_grey_mask", "sod_train_augment"]

logger = logging.getLogger(__name__)

_RULES = {
    "alpha": "its colour is uniform, so its alpha channel is the mask",
    "binary01": "0/1 values read as 0/255 (1 = object)",
    "not_binary": "values other than 0/255 kept (value/255 as training target; > 128 = object at evaluation)",
}


def read_grey_mask(path: str) -> Tuple[np.ndarray, str]:
    """Read an object mask as uint8 H×W grey values (not binarised) and say which rule applied.

    Args:
        path: mask image (8-bit grey, palette, RGB, RGBA or LA).

    Returns:
        (mask, note) with note "" (0/255), "alpha", "binary01" or "not_binary" (see the module docstring).
    """
    if not os.path.exists(path):
        raise DataFileError(f"Mask file {path} does not exist", hint="each image needs a <stem>.png mask")
    note = ""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                raise DataFileError(f"Mask {path} has mode {im.mode!r}; expected an 8-bit grey (0/255) mask")
            arr = np.asarray(im if im.mode == "L" else im.convert("L"))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                alpha = np.asarray(im.convert("RGBA" if im.mode != "LA" else "LA"))[..., -1]
                if arr.min() == arr.max() and alpha.min() != alpha.max():
                    arr, note = alpha, "alpha"
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding problem, by name
        raise DataFileError(f"Cannot decode mask {path}: {type(e).__name__}: {e}", hint=DAMAGED_FILE_HINT) from e
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    values = np.unique(arr)
    if np.isin(values, (0, 255)).all():
        return arr, note
    if np.isin(values, (0, 1)).all():
        return arr * np.uint8(255), "binary01"
    return arr, note or "not_binary"


def _factor(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    """A factor in 0.1 steps from [lo, hi] (both included), as the release's randint(a, b) / 10."""
    lo, hi = int(round(bounds[0] * 10)), int(round(bounds[1] * 10))
    return int(rng.integers(lo, hi + 1)) / 10.0


def sod_train_augment(
    image: Image.Image,
    mask: Image.Image,
    rng: np.random.Generator,
    flip_prob: float = 0.5,
    crop_border: int = 30,
    rotation_prob: float = 0.2,
    rotation_degrees: int = 15,
    enhance: Optional[Dict[str, Sequence[float]]] = None,
) -> Tuple[Image.Image, Image.Image, Dict[str, Any]]:
    """MGD-SAM2's training augmentations before the resize (steps 1-4 of the module docstring).

    Args:
        image: RGB PIL image.
        mask: "L" PIL mask of the same size.
        rng: the generator every draw comes from.
        flip_prob, crop_border, rotation_prob, rotation_degrees: see the module docstring.
        enhance: {"brightness", "contrast", "color", "sharpness"} → (lo, hi) factor ranges.

    Returns:
        (image, mask, params) with params the drawn values (flip, crop box, angle or None, factors).
    """
    p: Dict[str, Any] = {}
    p["flip"] = bool(rng.random() < flip_prob)
    if p["flip"]:
        image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    w, h = image.size
    cw = w - int(rng.integers(1, min(crop_border, w - 1) + 1)) if w > 1 and crop_border > 0 else w
    ch = h - int(rng.integers(1, min(crop_border, h - 1) + 1)) if h > 1 and crop_border > 0 else h
    box = ((w - cw) >> 1, (h - ch) >> 1, (w + cw) >> 1, (h + ch) >> 1)
    p["crop"] = box
    image, mask = image.crop(box), mask.crop(box)
    p["angle"] = None
    if rng.random() < rotation_prob:
        p["angle"] = int(rng.integers(-rotation_degrees, rotation_degrees))
        image, mask = image.rotate(p["angle"], Image.BICUBIC), mask.rotate(p["angle"], Image.NEAREST)
    enhance = enhance or {"brightness": (0.5, 1.5), "contrast": (0.5, 1.5), "color": (0.0, 2.0), "sharpness": (0.0, 3.0)}
    for key, cls in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                     ("color", ImageEnhance.Color), ("sharpness", ImageEnhance.Sharpness)):
        p[key] = _factor(rng, enhance[key])
        image = cls(image).enhance(p[key])
    return image, mask, p


class MGDSODDatasetMapper:
    """Dataset dict → MGD-SAM2 input (see the module docstring).

    Args:
        is_train: training (augmented, 1024² mask target) or testing (GT at its own size).
        image_size: square side S of the model input (1024 as released).
        seed: base seed of the training augmentations.
        flip_prob: horizontal-flip probability.
        crop_border: largest number of pixels the centred crop removes per side length.
        rotation_prob: probability of a rotation.
        rotation_degrees: angles are drawn from −rotation_degrees..rotation_degrees−1.
        brightness, contrast, color, sharpness: (lo, hi) PIL enhancement factor ranges (0.1 steps).
        labelled_exif: "apply" (images turned upright by their EXIF orientation) or "ignore".
    """

    @configurable
    def __init__(
        self,
        is_train: bool = False,
        *,
        image_size: int = 1024,
        seed: int = 0,
        flip_prob: float = 0.5,
        crop_border: int = 30,
        rotation_prob: float = 0.2,
        rotation_degrees: int = 15,
        brightness: Sequence[float] = (0.5, 1.5),
        contrast: Sequence[float] = (0.5, 1.5),
        color: Sequence[float] = (0.0, 2.0),
        sharpness: Sequence[float] = (0.0, 3.0),
        labelled_exif: str = "apply",
    ) -> None:
        if labelled_exif not in EXIF_POLICIES:
            raise UserValueError(f"INPUT.LABELLED_EXIF must be one of {EXIF_POLICIES}, got {labelled_exif!r}")
        if image_size < 1 or crop_border < 0 or rotation_degrees < 0 or not (0 <= flip_prob <= 1 and 0 <= rotation_prob <= 1):
            raise UserValueError(f"INPUT.SOD: invalid settings image_size={image_size} (>= 1), crop_border={crop_border} "
                                 f"(>= 0), rotation_degrees={rotation_degrees} (>= 0), flip_prob={flip_prob} and "
                                 f"rotation_prob={rotation_prob} (in [0, 1])")
        self.enhance: Dict[str, Tuple[float, float]] = {}
        for key, r in (("brightness", brightness), ("contrast", contrast), ("color", color), ("sharpness", sharpness)):
            if len(r) != 2 or not 0 <= r[0] <= r[1]:
                raise UserValueError(f"INPUT.SOD.{key.upper()} must be [lo, hi] with 0 <= lo <= hi, got {list(r)}")
            self.enhance[key] = (float(r[0]), float(r[1]))
        self.is_train = is_train
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.flip_prob, self.rotation_prob = float(flip_prob), float(rotation_prob)
        self.crop_border, self.rotation_degrees = int(crop_border), int(rotation_degrees)
        self.apply_exif = labelled_exif == "apply"
        self._logged: set = set()
        self._train_rng: Optional[Tuple[Any, np.random.Generator]] = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = False) -> Dict[str, Any]:
        s = cfg.INPUT.SOD
        return {
            "is_train": is_train,
            "image_size": s.IMAGE_SIZE,
            "seed": s.SEED,
            "flip_prob": s.FLIP_PROB,
            "crop_border": s.CROP_BORDER,
            "rotation_prob": s.ROTATION_PROB,
            "rotation_degrees": s.ROTATION_DEGREES,
            "brightness": tuple(s.BRIGHTNESS),
            "contrast": tuple(s.CONTRAST),
            "color": tuple(s.COLOR),
            "sharpness": tuple(s.SHARPNESS),
            "labelled_exif": cfg.INPUT.LABELLED_EXIF,
        }

    def _rng(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), comm.get_rank(), info.id if info is not None else -1)
        if self._train_rng is None or self._train_rng[0] != owner:
            self._train_rng = (owner, np.random.default_rng(derive_seed("mgd-sod-train", self.seed, *owner[1:])))
        return self._train_rng[1]

    def _log_once(self, note: str, path: str) -> None:
        if note and note not in self._logged:
            self._logged.add(note)
            logger.warning(f"Mask {path}: {_RULES[note]}; further masks of this dataset follow the same rule silently "
                           "(see mask_note)")

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        d = copy.deepcopy(dataset_dict)
        for key in ("file_name", "mask_file"):
            if key not in d:
                raise KeyError(f"MGDSODDatasetMapper: dataset dict lacks {key!r} (got keys {sorted(d)})")
        image = read_image_checked(d["file_name"], "RGB", self.apply_exif)
        mask, note = read_grey_mask(d["mask_file"])
        self._log_once(note, d["mask_file"])
        if image.shape[:2] != mask.shape:
            exif = exif_note(d["file_name"], self.apply_exif)
            raise DataFileError(
                f"Image {d['file_name']} is {image.shape[1]}x{image.shape[0]} but its mask {d['mask_file']} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH)" + (exif[0] if exif else ""),
                hint=exif[1] if exif else "an SOD mask must have its image's size")
        s = self.image_size
        pil_image, pil_mask = Image.fromarray(image), Image.fromarray(mask)
        if self.is_train:
            pil_image, pil_mask, _ = sod_train_augment(pil_image, pil_mask, self._rng(), self.flip_prob, self.crop_border,
                                                       self.rotation_prob, self.rotation_degrees, self.enhance)
            target = np.asarray(pil_mask.resize((s, s), Image.NEAREST))
        else:
            target = mask
        out = np.asarray(pil_image.resize((s, s), Image.BILINEAR)) if pil_image.size != (s, s) else np.asarray(pil_image)
        d["image"] = torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
        d["gt_mask"] = torch.from_numpy(target.astype(np.float32) / 255.0)
        d["height"], d["width"] = int(mask.shape[0]), int(mask.shape[1])
        d["mask_note"] = note
        d.setdefault("image_id", os.path.splitext(os.path.basename(d["file_name"]))[0])
        return d
