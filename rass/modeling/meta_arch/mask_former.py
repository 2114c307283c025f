"""Mask-classification semantic segmentation model (Mask2Former), registered as "MaskFormer".

    batched_inputs --preprocess_image--> ImageList --extract_features--> backbone features
      --sem_seg_head--> per-query class logits + mask logits
      --training--> SetCriterion (Hungarian matching, CE + BCE + Dice, deep supervision)
      --inference--> semantic_inference (sum over queries of class prob x mask prob)
                     --> sem_seg_postprocess back to the requested output size.

`preprocess_image` and `extract_features` are the extension points: the former turns the
dataset dicts into a normalised, padded batch (in training with INPUT.DEGRADATION.DEVICE "model",
it first degrades each unpadded image on the model's device, batched by size); the latter calls
the backbone (backbones that need more than the image tensor override it).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone, build_sem_seg_head
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from rass.utils.errors import UserValueError

from ..criterion import SetCriterion

__all__ = ["MaskFormer"]


@META_ARCH_REGISTRY.register()
class MaskFormer(nn.Module):
    """Backbone + Mask2Former head + set criterion, for semantic segmentation.

    Args:
        backbone: a detectron2 backbone.
        sem_seg_head: head returning {"pred_logits", "pred_masks", "aux_outputs"}; must have
            `num_classes` and `ignore_value` attributes.
        criterion: the loss module (with a `weight_dict`).
        num_queries: number of queries.
        size_divisibility: pad the batch to a multiple of this (< 0: the backbone's value).
        sem_seg_postprocess_before_inference: resize mask logits to the output size before
            combining them (more memory) instead of resizing the combined scores.
        pixel_mean, pixel_std: per-channel normalisation `(image - mean) / std` of the 0..255 input.
        semantic_on: produce "sem_seg" outputs.
        degradation: callable (list of unpadded C x H x W float 0..255 images) -> degraded list,
            applied in training before normalisation and padding; None: no degradation here
            (off, or done in the data-loader workers).
        keep_clean: keep the clean images (in [0, 1], padded with 0) as `ImageList.clean`.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        criterion: nn.Module,
        num_queries: int,
        size_divisibility: int,
        sem_seg_postprocess_before_inference: bool,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        semantic_on: bool = True,
        degradation: Optional[Callable] = None,
        keep_clean: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.criterion = criterion
        self.num_queries = num_queries
        if size_divisibility < 0:
            size_divisibility = backbone.size_divisibility
        self.size_divisibility = size_divisibility
        self.sem_seg_postprocess_before_inference = sem_seg_postprocess_before_inference
        if len(pixel_mean) != len(pixel_std):
            raise UserValueError(f"MODEL.PIXEL_MEAN {list(pixel_mean)} and MODEL.PIXEL_STD {list(pixel_std)} differ in "
                                 "length")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
        self.semantic_on = semantic_on
        self.degradation = degradation
        self.keep_clean = keep_clean

    @classmethod
    def from_config(cls, cfg) -> Dict:
        test = cfg.MODEL.MASK_FORMER.TEST
        if test.PANOPTIC_ON or test.INSTANCE_ON:
            raise UserValueError(
                "MaskFormer: only semantic segmentation is implemented; set MODEL.MASK_FORMER.TEST.PANOPTIC_ON "
                "and MODEL.MASK_FORMER.TEST.INSTANCE_ON to False"
            )
        backbone = build_backbone(cfg)
        sem_seg_head = build_sem_seg_head(cfg, backbone.output_shape())
        return {
            "backbone": backbone,
            "sem_seg_head": sem_seg_head,
            "criterion": SetCriterion(cfg, num_classes=sem_seg_head.num_classes),
            "num_queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            "size_divisibility": cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY,
            "sem_seg_postprocess_before_inference": test.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "semantic_on": test.SEMANTIC_ON,
            **cls._degradation_from_config(cfg),
        }

    @staticmethod
    def _degradation_from_config(cfg) -> Dict:
        """Model-side online degradation (INPUT.DEGRADATION with DEVICE "model")."""
        from rass.data.degradation import model_side_degradation

        degradation = model_side_degradation(cfg)
        return {} if degradation is None else {"degradation": degradation, "keep_clean": cfg.INPUT.DEGRADATION.KEEP_CLEAN}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ----------------------------------------------------------------- input
    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(image - PIXEL_MEAN) / PIXEL_STD for one C x H x W image of 0..255 values."""
        return (image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std

    @property
    def pad_value(self) -> float:
        """Value of the padding in the normalised batch (0: the mean pixel, as in Mask2Former)."""
        return 0.0

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Dataset dicts -> (degraded, in training) normalised images padded to a common, divisible size.

        Args:
            batched_inputs: dicts with "image": C x H x W tensor (0..255, the dataset's FORMAT) and,
                optionally, "image_clean" (the clean image when the workers degraded "image").

        Returns:
            an ImageList; `image_sizes` are the unpadded sizes; `clean` is the B x C x H x W clean
            batch in [0, 1] (padded with 0) when it is kept, else None.
        """
        raw = [x["image"].to(self.device, torch.float32) for x in batched_inputs]
        clean = None
        if self.training and self.degradation is not None:
            degraded = self.degradation(raw)
            clean, raw = (raw if self.keep_clean else None), degraded
        elif self.training and batched_inputs and all("image_clean" in x for x in batched_inputs):
            clean = [x["image_clean"].to(self.device, torch.float32) for x in batched_inputs]
        images = ImageList.from_tensors([self.normalize(r) for r in raw], self.size_divisibility, pad_value=self.pad_value)
        images.clean = None
        if clean is not None:
            for c, r in zip(clean, raw):
                if tuple(c.shape) != tuple(r.shape):
                    raise ValueError(f"clean image {tuple(c.shape)} and input image {tuple(r.shape)} differ in shape")
            images.clean = ImageList.from_tensors([c / 255.0 for c in clean], self.size_divisibility, 0.0).tensor
        return images

    def extract_features(self, images: ImageList, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Backbone features of the batch. Backbones that need more than the padded image tensor
        (prompts, the clean image, ...) hook in here.

        Args:
            images: the output of `preprocess_image`.
            batched_inputs: the dataset dicts of the batch.
        """
        return self.backbone(images.tensor)

    def prepare_targets(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, torch.Tensor]]:
        """Per image, class ids and binary masks (padded with 0 to the batch size).

        Reads "instances" (gt_classes, gt_masks) when the mapper provides them, else derives one
        mask per class present in "sem_seg" (pixels with the head's ignore value are in no mask).
        """
        h_pad, w_pad = images.tensor.shape[-2:]
        ignore = self.sem_seg_head.ignore_value
        num_classes = self.sem_seg_head.num_classes
        targets = []
        for i, x in enumerate(batched_inputs):
            if "instances" in x:
                inst = x["instances"]
                labels = inst.gt_classes.to(self.device)
                masks = inst.gt_masks
                masks = (masks.tensor if hasattr(masks, "tensor") else masks).to(self.device)
            elif "sem_seg" in x:
                sem_seg = x["sem_seg"].to(self.device).long()
                labels = self._classes_present(sem_seg, ignore, num_classes)
                masks = sem_seg[None] == labels[:, None, None]
            else:
                raise KeyError(f"MaskFormer: training input {i} has neither 'instances' nor 'sem_seg' (keys {sorted(x)})")
            bad = labels[(labels < 0) | (labels >= num_classes)]
            if bad.numel():
                raise UserValueError(
                    f"MaskFormer: training input {i} ({x.get('file_name', '?')}) has label values {bad.tolist()} outside "
                    f"0..{num_classes - 1} (MODEL.SEM_SEG_HEAD.NUM_CLASSES) and != IGNORE_VALUE {ignore}"
                )
            padded = masks.new_zeros((masks.shape[0], h_pad, w_pad))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks
            targets.append({"labels": labels.long(), "masks": padded})
        return targets

    @staticmethod
    def _classes_present(sem_seg: torch.Tensor, ignore: int, num_classes: int) -> torch.Tensor:
        """Sorted label values of `sem_seg` other than `ignore` (a histogram: `torch.unique` is slow on CPU)."""
        values = sem_seg[sem_seg != ignore]
        if values.numel() == 0:
            return values
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= num_classes:
            return torch.unique(values)  # out of range: the caller reports the bad values
        return torch.bincount(values, minlength=num_classes).nonzero()[:, 0]

    # ----------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]):
        """Losses in training mode, predictions in eval mode.

        Args:
            batched_inputs: dataset dicts with "image" and, for training, "sem_seg" or
                "instances"; optional "height"/"width" of the wanted output.

        Returns:
            training: dict of weighted losses; eval: list of {"sem_seg": K x height x width}.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images, batched_inputs)
        outputs = self.sem_seg_head(features)
        if self.training:
            targets = self.prepare_targets(batched_inputs, images)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict
            return {k: v * weights[k] for k, v in losses.items() if k in weights}
        return self.inference(outputs, images, batched_inputs)

    def inference(self, outputs: Dict, images: ImageList, batched_inputs: List[Dict]) -> List[Dict]:
        """Semantic maps at each input's requested size."""
        mask_cls = outputs["pred_logits"]
        mask_pred = F.interpolate(
            outputs["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear", align_corners=False
        )
        results = []
        for cls_i, mask_i, x, size in zip(mask_cls, mask_pred, batched_inputs, images.image_sizes):
            height, width = x.get("height", size[0]), x.get("width", size[1])
            result = {}
            if self.semantic_on:
                if self.sem_seg_postprocess_before_inference:
                    mask_i = sem_seg_postprocess(mask_i, size, height, width)
                    result["sem_seg"] = self.semantic_inference(cls_i.to(mask_i), mask_i)
                else:
                    result["sem_seg"] = sem_seg_postprocess(self.semantic_inference(cls_i, mask_i), size, height, width)
            results.append(result)
        return results

    @staticmethod
    def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """Per-class scores: sum over queries of P(class | query) * sigmoid(mask logit).

        Args:
            mask_cls: Q x (K+1) class logits (the last class is "no object").
            mask_pred: Q x H x W mask logits.

        Returns:
            K x H x W scores.
        """
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())
