"""SAM2's image preprocessing (`sam2/utils/transforms.py`, `SAM2Transforms`) on torch tensors: the image is
resized to a `target` x `target` square (the aspect ratio is not kept; bilinear with antialias, as
torchvision's `Resize` on tensors) and normalised with the ImageNet mean / std. Point and box coordinates
(x, y pixels of the original image) are scaled by target / w and target / h (`transform_coords`)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from rass.modeling.sam.transforms import SAM_PIXEL_MEAN, SAM_PIXEL_STD

__all__ = ["Sam2ImageTransform"]


class Sam2ImageTransform:
    """Square resize + normalise for SAM2, and the matching prompt-coordinate transform.

    Args:
        target: SAM2's input side (1024 for the released weights).
        pixel_mean: RGB mean on the 0..255 scale (ImageNet's, = SAM's values).
        pixel_std: RGB std on the 0..255 scale.
    """

    @configurable
    def __init__(self, target: int = 1024, pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
                 pixel_std: Sequence[float] = SAM_PIXEL_STD) -> None:
        if int(target) <= 0:
            raise ValueError(f"Sam2ImageTransform: target must be positive, got {target}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"Sam2ImageTransform: expected 3 means and 3 positive stds, got {pixel_mean}, {pixel_std}")
        self.target = int(target)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)

    @classmethod
    def from_config(cls, cfg) -> dict:
        s = cfg.MODEL.SAM2
        return {"target": s.IMAGE_SIZE, "pixel_mean": s.PIXEL_MEAN, "pixel_std": s.PIXEL_STD}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Preprocess RGB images for SAM2's image encoder.

        Args:
            image: uint8 or float RGB, [3, H, W] or [B, 3, H, W], values on the 0..255 scale.

        Returns:
            float32 [B, 3, target, target].
        """
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"Sam2ImageTransform: expected an RGB image [3, H, W] or [B, 3, H, W], "
                             f"got {tuple(image.shape)}")
        x = (image[None] if image.dim() == 3 else image).float()
        if tuple(x.shape[-2:]) != (self.target, self.target):
            x = F.interpolate(x, (self.target, self.target), mode="bilinear", align_corners=False, antialias=True)
        mean = x.new_tensor(self.pixel_mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.pixel_std).view(1, 3, 1, 1)
        return (x - mean) / std

    def apply_coords(self, coords: torch.Tensor, original_hw: Tuple[int, int]) -> torch.Tensor:
        """(x, y) pixel coordinates [..., 2] of an image of `original_hw` -> SAM2's input frame (float32)."""
        h, w = (int(v) for v in original_hw)
        scale = torch.tensor([self.target / w, self.target / h], dtype=torch.float32, device=coords.device)
        return coords.to(torch.float32) * scale

    def apply_boxes(self, boxes: torch.Tensor, original_hw: Tuple[int, int]) -> torch.Tensor:
        """xyxy boxes [..., 4] -> SAM2's input frame (float32)."""
        return self.apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2), original_hw).reshape(boxes.shape)
