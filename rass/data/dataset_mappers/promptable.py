"""Promptable-segmentation mapper ("promptable"): image + one object mask + prompts drawn from it.

Input dict (see `rass.data.datasets.lqseg`): file_name, mask_file, image_id, height, width.
Output dict:
- ``image``: uint8 3×h×w tensor (RGB; resized to IMAGE_SIZE² bicubic when IMAGE_SIZE > 0, as
  GleSAM's data loader; IMAGE_SIZE 0 keeps the image, whose size must then equal the mask's);
- ``gt_mask``: bool H×W tensor at the mask's own size (foreground = value > MASK_THRESHOLD);
- ``point_coords`` float [1, N, 2] (x, y) and ``point_labels`` int64 [1, N] in the image (h×w)
  frame (protocols "points", "point_box"); ``boxes`` float [1, 4] xyxy (protocols "box",
  "point_box"); P = 1 object per image;
- ``prompt_note`` ("", "empty_mask", "no_interior_pixel", see `rass.data.prompts`), ``mask_note``
  ("", "thresholded", "binary01"); plus height, width (mask size), file_name, image_id.

Masks: 8-bit PNG (gray, palette or RGB: converted to gray as OpenCV's IMREAD_GRAYSCALE does).
0/255 masks are used as they are. A mask with other values is thresholded at MASK_THRESHOLD (128:
foreground = value > 128, as the release's metrics) before the prompts are drawn, and a 0/1 mask is
read as binary (1 → 255); each rule is logged once per mapper and recorded in ``mask_note``.

Prompts at test time are seeded per image from (TEST.PROMPT.SEED, image_id); in training they come
from a generator seeded by (INPUT.PROMPT.SEED, rank, data-loader worker), re-drawn at every call.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.utils import comm
from PIL import Image

from rass.data.degradation.online import derive_seed
from rass.data.prompts import PROTOCOLS, prompt_rng, sample_prompts
from rass.utils.errors import UserValueError
from rass.utils.image_io import DAMAGED_FILE_HINT, EXIF_POLICIES, DataFileError, exif_note, read_image_checked

__all__ = ["PromptableDatasetMapper", "read_binary_mask"]

logger = logging.getLogger(__name__)


def read_binary_mask(path: str, threshold: int = 128) -> Tuple[np.ndarray, str]:
    """Read an object mask as uint8 0/255 (H×W) and say which rule made it binary.

    Args:
        path: mask image (8-bit).
        threshold: values > threshold are foreground when the mask is not 0/255 or 0/1.

    Returns:
        (mask, note) with note "" (already 0/255), "binary01" (a 0/1 mask) or "thresholded".
    """
    if not os.path.exists(path):
        raise DataFileError(f"Mask file {path} does not exist", hint="each image needs a <stem>.png mask")
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
                raise DataFileError(f"Mask {path} has mode {im.mode!r}; expected an 8-bit 0/255 mask")
            arr = np.asarray(im if im.mode == "L" else im.convert("L"))
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any decoding problem, by name
        raise DataFileError(f"Cannot decode mask {path}: {type(e).__name__}: {e}", hint=DAMAGED_FILE_HINT) from e
    values = np.unique(arr)
    if np.isin(values, (0, 255)).all():
        return np.ascontiguousarray(arr, dtype=np.uint8), ""
    if np.isin(values, (0, 1)).all():
        return (arr.astype(np.uint8) * 255), "binary01"
    return np.where(arr > threshold, 255, 0).astype(np.uint8), "thresholded"


class PromptableDatasetMapper:
    """Dataset dict → promptable-segmentation model input (see the module docstring).

    Args:
        is_train: training (prompts re-drawn at every call) or testing (seeded per image).
        protocol: "points", "box" or "point_box".
        num_points: positive points per object.
        box_noise: box jitter scale (0 = exact box; GleSAM's `box_noise` uses 0.05).
        seed: base seed of the prompts.
        image_size: square side the image is resized to (bicubic); 0 keeps the image.
        mask_threshold: foreground = mask value > this, for masks that are not 0/255.
        labelled_exif: "apply" (images turned upright by their EXIF orientation; masks must follow
            the upright image) or "ignore" (the stored pixels).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = False,
        *,
        protocol: str = "points",
        num_points: int = 3,
        box_noise: float = 0.0,
        seed: int = 0,
        image_size: int = 512,
        mask_threshold: int = 128,
        labelled_exif: str = "apply",
    ) -> None:
        if labelled_exif not in EXIF_POLICIES:
            raise UserValueError(f"INPUT.LABELLED_EXIF must be one of {EXIF_POLICIES}, got {labelled_exif!r}")
        if protocol not in PROTOCOLS:
            raise UserValueError(f"Prompt protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if num_points < 1 or image_size < 0 or box_noise < 0 or not 0 <= mask_threshold < 255:
            raise UserValueError(f"Invalid prompt settings: num_points={num_points} (>= 1), image_size={image_size} "
                                 f"(>= 0), box_noise={box_noise} (>= 0), mask_threshold={mask_threshold} (0..254)")
        self.is_train = is_train
        self.protocol = protocol
        self.num_points = int(num_points)
        self.box_noise = float(box_noise)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.mask_threshold = int(mask_threshold)
        self.apply_exif = labelled_exif == "apply"
        self._logged: set = set()
        self._train_rng: Optional[Tuple[Any, np.random.Generator]] = None

    @classmethod
    def from_config(cls, cfg, is_train: bool = False) -> Dict[str, Any]:
        p = cfg.INPUT.PROMPT if is_train else cfg.TEST.PROMPT
        return {
            "is_train": is_train,
            "protocol": p.PROTOCOL,
            "num_points": p.NUM_POINTS,
            "box_noise": p.BOX_NOISE,
            "seed": p.SEED,
            "image_size": cfg.INPUT.PROMPT.IMAGE_SIZE,
            "mask_threshold": cfg.INPUT.PROMPT.MASK_THRESHOLD,
            "labelled_exif": cfg.INPUT.LABELLED_EXIF,
        }

    def _rng(self, image_id: str) -> np.random.Generator:
        if not self.is_train:
            return prompt_rng(self.seed, image_id)
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), comm.get_rank(), info.id if info is not None else -1)
        if self._train_rng is None or self._train_rng[0] != owner:
            self._train_rng = (owner, np.random.default_rng(derive_seed("prompts-train", self.seed, *owner[1:])))
        return self._train_rng[1]

    def _log_once(self, note: str, path: str) -> None:
        if note and note not in self._logged:
            self._logged.add(note)
            rule = {"thresholded": f"thresholded at {self.mask_threshold} (value > {self.mask_threshold} = object, as GleSAM)",
                    "binary01": "0/1 values read as binary (1 = object)"}[note]
            logger.warning(f"Mask {path} is not 0/255: {rule}; further masks of this dataset follow the same rule silently "
                           "(see mask_note in the per-image results)")

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        d = copy.deepcopy(dataset_dict)
        for key in ("file_name", "mask_file", "image_id"):
            if key not in d:
                raise KeyError(f"PromptableDatasetMapper: dataset dict lacks {key!r} (got keys {sorted(d)})")
        image = read_image_checked(d["file_name"], "RGB", self.apply_exif)
        mask, mask_note = read_binary_mask(d["mask_file"], self.mask_threshold)
        self._log_once(mask_note, d["mask_file"])
        if self.image_size > 0:
            if image.shape[:2] != (self.image_size, self.image_size):
                image = np.asarray(Image.fromarray(image).resize((self.image_size, self.image_size), Image.BICUBIC))
        elif image.shape[:2] != mask.shape:
            note = exif_note(d["file_name"], self.apply_exif)
            raise DataFileError(
                f"Image {d['file_name']} is {image.shape[1]}x{image.shape[0]} but its mask {d['mask_file']} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH)" + (note[0] if note else ""),
                hint=note[1] if note else
                "with INPUT.PROMPT.IMAGE_SIZE 0 they must match; GleSAM's 512x512 LQ images need IMAGE_SIZE 512",
            )
        h, w = image.shape[:2]
        prompts = sample_prompts(mask, (h, w), self.protocol, self.num_points, self.box_noise,
                                 self._rng(str(d["image_id"])), self.mask_threshold)
        d["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d["gt_mask"] = torch.from_numpy(mask > self.mask_threshold)
        d["height"], d["width"] = int(mask.shape[0]), int(mask.shape[1])
        if prompts.point_coords is not None:
            d["point_coords"] = torch.from_numpy(prompts.point_coords)[None]
            d["point_labels"] = torch.from_numpy(prompts.point_labels)[None]
        if prompts.box is not None:
            d["boxes"] = torch.from_numpy(prompts.box)[None]
        d["prompt_note"], d["mask_note"] = prompts.note, mask_note
        return d
