"""SSD-style photometric distortion as a detectron2 augmentation.

Brightness (delta in [-32, 32]), contrast (x[0.5, 1.5], before or after the HSV steps),
saturation (x[0.5, 1.5]) and hue (+-18 degrees on OpenCV's 0..180 scale), each applied with
probability 1/2. All random draws happen in `get_transform` (detectron2's augmentation RNG);
the returned transform is deterministic. Labels are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform

from rass.utils.errors import UserValueError

__all__ = ["ColorAugSSDTransform", "PhotometricDistortTransform"]


@dataclass
class _Photometric:
    brightness: Optional[float]
    contrast: Optional[float]
    contrast_first: bool
    saturation: Optional[float]
    hue: Optional[float]


class PhotometricDistortTransform(Transform):
    """Apply fixed photometric parameters to an image (segmentation/coords unchanged).

    Args:
        params: the sampled parameters (None = step skipped).
        img_format: "RGB" or "BGR".
    """

    def __init__(self, params: _Photometric, img_format: str = "RGB") -> None:
        super().__init__()
        if img_format not in ("RGB", "BGR"):
            raise UserValueError(f"ColorAugSSD: INPUT.FORMAT must be RGB or BGR, got {img_format!r}")
        self.params = params
        self.img_format = img_format

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        p = self.params
        out = img.astype(np.float32)
        if p.brightness is not None:
            out = out + p.brightness
        if p.contrast is not None and p.contrast_first:
            out = out * p.contrast
        if p.saturation is not None or p.hue is not None:
            bgr = np.clip(out, 0, 255).astype(np.uint8)
            if self.img_format == "RGB":
                bgr = bgr[..., ::-1]
            hsv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2HSV).astype(np.float32)
            if p.saturation is not None:
                hsv[..., 1] = hsv[..., 1] * p.saturation
            if p.hue is not None:
                hsv[..., 0] = (hsv[..., 0] + p.hue) % 180
            bgr = cv2.cvtColor(np.clip(hsv, 0, [180, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2BGR)
            out = (bgr[..., ::-1] if self.img_format == "RGB" else bgr).astype(np.float32)
        if p.contrast is not None and not p.contrast_first:
            out = out * p.contrast
        return np.clip(out, 0, 255).astype(img.dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> Transform:
        return T.NoOpTransform()


class ColorAugSSDTransform(T.Augmentation):
    """Sample SSD photometric parameters (the name follows Mask2Former's config switch COLOR_AUG_SSD).

    Args:
        img_format: image channel order, "RGB" or "BGR".
        brightness_delta: max absolute brightness shift.
        contrast_range: contrast factor range.
        saturation_range: saturation factor range.
        hue_delta: max absolute hue shift (OpenCV hue units, 0..180).
    """

    def __init__(
        self,
        img_format: str = "RGB",
        brightness_delta: float = 32.0,
        contrast_range=(0.5, 1.5),
        saturation_range=(0.5, 1.5),
        hue_delta: float = 18.0,
    ) -> None:
        super().__init__()
        self._init(locals())

    def _maybe(self, lo: float, hi: float) -> Optional[float]:
        return float(self._rand_range(lo, hi)) if self._rand_range() < 0.5 else None

    def get_transform(self, image: np.ndarray) -> Transform:
        params = _Photometric(
            brightness=self._maybe(-self.brightness_delta, self.brightness_delta),
            contrast=self._maybe(*self.contrast_range),
            contrast_first=bool(self._rand_range() < 0.5),
            saturation=self._maybe(*self.saturation_range),
            hue=self._maybe(-self.hue_delta, self.hue_delta),
        )
        return PhotometricDistortTransform(params, self.img_format)
