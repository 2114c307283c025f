"""The RASS segmentation model: `MaskFormer` with the restoration-adapted diffusion backbone.

Registered as META_ARCHITECTURE "RASSMaskFormer". Differences from `MaskFormer`:
- the clean images — kept by `MaskFormer`'s online degradation (INPUT.DEGRADATION.DEVICE "model",
  KEEP_CLEAN) or given by the mapper as `image_clean` (DEVICE "worker") — are passed to the
  backbone, whose tagger reads them in training (MODEL.TAGGER.INPUT);
- the batch is padded with the normalised value of a black pixel (the release pads 0..255 images
  with 0 before mapping them to [-1, 1], i.e. with -1).
Use PIXEL_MEAN = PIXEL_STD = [127.5] * 3 so that the backbone receives [-1, 1] inputs.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from .mask_former import MaskFormer

__all__ = ["RASSMaskFormer"]


@META_ARCH_REGISTRY.register()
class RASSMaskFormer(MaskFormer):
    """`MaskFormer` whose backbone also receives the clean images (`ImageList.clean`, kept by the
    online degradation or given by the mapper as `image_clean`) and whose padding is black.

    Args:
        **kwargs: `MaskFormer` arguments.
    """

    @classmethod
    def from_config(cls, cfg) -> Dict:
        args = super().from_config(cfg)
        if "degradation" not in args:
            args["keep_clean"] = True  # clean images from the mapper, when it degrades
        return args

    @property
    def pad_value(self) -> float:
        """Normalised value of a black (0) pixel when it is the same for every channel, else 0."""
        values = (-self.pixel_mean / self.pixel_std).flatten()
        return float(values[0]) if bool(torch.all(values == values[0])) else 0.0

    def extract_features(self, images: ImageList, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        return self.backbone(images.tensor, clean_images=getattr(images, "clean", None))
