"""The RASS segmentation model: `MaskFormer` with the restoration-adapted diffusion backbone.

Registered as META_ARCHITECTURE "RASSMaskFormer". Differences from `MaskFormer`:
- training with INPUT.DEGRADATION.ENABLED and DEVICE "model": the batch (0..255, as the mapper
  made it) is degraded online on the model's device; the clean images are kept for the tagger;
- the clean images — from that degradation or from the mapper's `image_clean` (DEVICE "worker") —
  are passed to the backbone, whose tagger reads them in training (MODEL.TAGGER.INPUT);
- the batch is padded with the normalised value of a black pixel (the release pads 0..255 images
  with 0 before mapping them to [-1, 1], i.e. with -1).
Use PIXEL_MEAN = PIXEL_STD = [127.5] * 3 so that the backbone receives [-1, 1] inputs.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from .mask_former import MaskFormer

__all__ = ["RASSMaskFormer"]


@META_ARCH_REGISTRY.register()
class RASSMaskFormer(MaskFormer):
    """`MaskFormer` whose backbone also receives the clean image (see the module docstring).

    Args:
        degradation: callable (list of C x H x W float 0..255 images) -> degraded list, applied in
            training; None when degradation is off or runs in the data-loader workers.
        keep_clean: give the clean images to the backbone when degrading here.
        **kwargs: `MaskFormer` arguments.
    """

    @configurable
    def __init__(self, *, degradation: Optional[Callable] = None, keep_clean: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.degradation = degradation
        self.keep_clean = keep_clean

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = super().from_config(cfg)
        d = cfg.INPUT.get("DEGRADATION")
        if d is not None and d.ENABLED and d.DEVICE == "model":
            from rass.data.degradation import OnlineDegradation

            args["degradation"] = OnlineDegradation(cfg)
            args["keep_clean"] = d.KEEP_CLEAN
        return args

    def _pad_value(self) -> float:
        """Normalised value of a 0 pixel when it is the same for every channel, else 0."""
        values = (-self.pixel_mean / self.pixel_std).flatten()
        return float(values[0]) if bool(torch.all(values == values[0])) else 0.0

    def _pad(self, images: List[torch.Tensor], value: float) -> ImageList:
        return ImageList.from_tensors(images, self.size_divisibility, pad_value=value)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Degrade (training, DEVICE "model"), normalise and pad. The returned ImageList carries
        `clean`: B x 3 x H x W clean images in [0, 1] (padded with 0), or None."""
        raw = [x["image"].to(self.device, torch.float32) for x in batched_inputs]
        clean = None
        if self.training and self.degradation is not None:
            degraded = self.degradation(raw)
            clean, raw = (raw if self.keep_clean else None), degraded
        elif self.training and all("image_clean" in x for x in batched_inputs):
            clean = [x["image_clean"].to(self.device, torch.float32) for x in batched_inputs]
        images = self._pad([(r - self.pixel_mean) / self.pixel_std for r in raw], self._pad_value())
        images.clean = None
        if clean is not None:
            for c, r in zip(clean, raw):
                if tuple(c.shape) != tuple(r.shape):
                    raise ValueError(f"clean image {tuple(c.shape)} and input image {tuple(r.shape)} differ in shape")
            images.clean = self._pad([c / 255.0 for c in clean], 0.0).tensor
        return images

    def extract_features(self, images: ImageList, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        return self.backbone(images.tensor, clean_images=getattr(images, "clean", None))
