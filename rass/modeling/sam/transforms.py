"""SAM's input preprocessing and mask postprocessing (segment-anything's `ResizeLongestSide`,
`Sam.preprocess` and `Sam.postprocess_masks`), on torch tensors.

The image is resized so that its longest side is `target` (bilinear, antialias, as the fixed
`apply_image_torch` of segment-anything's GitHub main / the GleSAM fork; PyPI 1.0 computes the size
from the wrong dimensions), normalised with SAM's mean/std (0..255 scale) and zero-padded at the
bottom/right to `target` x `target`. Point and box coordinates (x, y pixels of the original image)
are scaled per axis by new_w / w and new_h / h, where new = int(old * target / max(h, w) + 0.5).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable

__all__ = ["SamImageTransform", "SAM_PIXEL_MEAN", "SAM_PIXEL_STD"]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def _hw(size: Sequence[int], what: str) -> Tuple[int, int]:
    if len(size) != 2 or int(size[0]) <= 0 or int(size[1]) <= 0:
        raise ValueError(f"{what}: expected (height, width) with positive values, got {tuple(size)}")
    return int(size[0]), int(size[1])


class SamImageTransform:
    """Resize-longest-side + normalise + pad for SAM, and the inverse for masks.

    Args:
        target: SAM's input side (1024 for the released weights).
        pixel_mean: RGB mean on the 0..255 scale.
        pixel_std: RGB std on the 0..255 scale.
    """

    @configurable
    def __init__(self, target: int = 1024, pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
                 pixel_std: Sequence[float] = SAM_PIXEL_STD) -> None:
        if int(target) <= 0:
            raise ValueError(f"SamImageTransform: target must be positive, got {target}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"SamImageTransform: expected 3 means and 3 positive stds, got {pixel_mean}, {pixel_std}")
        self.target = int(target)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"target": cfg.MODEL.SAM.IMAGE_SIZE, "pixel_mean": cfg.MODEL.SAM.PIXEL_MEAN,
                "pixel_std": cfg.MODEL.SAM.PIXEL_STD}

    def get_preprocess_shape(self, height: int, width: int) -> Tuple[int, int]:
        """(new_h, new_w) of an image of `height` x `width` after the resize (SAM's rounding)."""
        height, width = _hw((height, width), "image size")
        scale = self.target * 1.0 / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a float/uint8 [B, 3, H, W] or [3, H, W] image (longest side -> target); float32 out."""
        batched = self._check_image(image)
        x = batched.float()
        new_hw = self.get_preprocess_shape(x.shape[-2], x.shape[-1])
        if tuple(x.shape[-2:]) != new_hw:
            x = F.interpolate(x, new_hw, mode="bilinear", align_corners=False, antialias=True)
        return x

    def __call__(self, image: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Preprocess an RGB image for SAM's image encoder.

        Args:
            image: uint8 or float RGB, [3, H, W] or [B, 3, H, W], values on the 0..255 scale.

        Returns:
            (pixel_values float32 [B, 3, target, target], (new_h, new_w) of the valid region).
        """
        x = self.resize(image)
        mean = x.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        x = (x - mean) / std
        new_h, new_w = x.shape[-2:]
        x = F.pad(x, (0, self.target - new_w, 0, self.target - new_h))
        return x, (int(new_h), int(new_w))

    def apply_coords(self, coords: torch.Tensor, original_hw: Sequence[int]) -> torch.Tensor:
        """Map (x, y) pixel coordinates [..., 2] of the original image to the resized frame (float32).
        (User prompts are checked first with `rass.data.prompts.check_prompts`.)

        Args:
            coords: [..., 2] (x, y) in pixels of the original image.
            original_hw: (H, W) of the original image.
        """
        old_h, old_w = _hw(original_hw, "apply_coords original_hw")
        coords = torch.as_tensor(coords)
        if coords.shape[-1:] != (2,):
            raise ValueError(f"apply_coords: expected coordinates [..., 2] (x, y), got shape {tuple(coords.shape)}")
        new_h, new_w = self.get_preprocess_shape(old_h, old_w)
        out = coords.to(torch.float32).clone()
        out[..., 0] = out[..., 0] * (new_w / old_w)
        out[..., 1] = out[..., 1] * (new_h / old_h)
        return out

    def apply_boxes(self, boxes: torch.Tensor, original_hw: Sequence[int]) -> torch.Tensor:
        """Map xyxy boxes [..., 4] of the original image to the resized frame (float32), as `apply_coords`."""
        boxes = torch.as_tensor(boxes)
        if boxes.shape[-1:] != (4,):
            raise ValueError(f"apply_boxes: expected boxes [..., 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
        corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
        return self.apply_coords(corners, original_hw).reshape(boxes.shape)

    def postprocess_masks(self, low_res_logits: torch.Tensor, input_hw_resized: Sequence[int],
                          original_hw: Sequence[int]) -> torch.Tensor:
        """Mask logits of SAM's decoder back to the original image (segment-anything's `postprocess_masks`).

        Args:
            low_res_logits: [..., h, w] logits (h = w = target / 4 for SAM).
            input_hw_resized: (new_h, new_w) returned by `__call__` (the unpadded region).
            original_hw: (H, W) of the original image.

        Returns:
            float logits [..., H, W] (upsampled to target x target bilinearly, cropped, resized).
        """
        new_h, new_w = _hw(input_hw_resized, "postprocess_masks input_hw_resized")
        out_hw = _hw(original_hw, "postprocess_masks original_hw")
        if new_h > self.target or new_w > self.target:
            raise ValueError(f"postprocess_masks: resized size {(new_h, new_w)} exceeds the input side {self.target}")
        if low_res_logits.dim() < 2:
            raise ValueError(f"postprocess_masks: expected logits [..., h, w], got shape {tuple(low_res_logits.shape)}")
        lead = low_res_logits.shape[:-2]
        x = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:]).float()
        x = F.interpolate(x, (self.target, self.target), mode="bilinear", align_corners=False)
        x = x[..., :new_h, :new_w]
        x = F.interpolate(x, out_hw, mode="bilinear", align_corners=False)
        return x.reshape(*lead, *out_hw)

    @staticmethod
    def _check_image(image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"SamImageTransform: expected a torch.Tensor image, got {type(image).__name__}")
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"SamImageTransform: expected an RGB image [3, H, W] or [B, 3, H, W], "
                             f"got shape {tuple(image.shape)}")
        if image.dim() == 3:
            image = image[None]
        if image.shape[-1] == 0 or image.shape[-2] == 0:
            raise ValueError(f"SamImageTransform: empty image of shape {tuple(image.shape)}")
        return image
