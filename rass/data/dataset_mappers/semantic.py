"""Semantic-segmentation dataset mapper: read, check, augment, (optionally) degrade, pad."""
from __future__ import annotations

import copy
import logging
from typing import Callable, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from rass.utils.errors import UserValueError
from rass.utils.image_io import EXIF_POLICIES, check_labels, read_image_checked, read_label_checked

from .color_aug import ColorAugSSDTransform

__all__ = ["SemanticDatasetMapper"]


class SemanticDatasetMapper:
    """Turn a dataset dict into model inputs for semantic segmentation.

    Training: resize shortest edge, crop with a single-category area cap, SSD colour
    augmentation, flip; then, when a worker-side degradation is given, the cropped image is
    degraded (before any padding; the label is untouched); then optional padding to
    `size_divisibility` (image with 128, label with `ignore_label`). Testing: resize only (no
    padding: the model pads the batch and crops its predictions back to the image).

    Output dict: ``image`` (uint8 C x H x W tensor, the model input, degraded when degradation
    runs here), ``sem_seg`` (int64 H x W, training), ``image_clean`` (uint8 C x H x W, when
    `keep_clean` and the image was degraded here), ``exif_applied`` (whether the image's EXIF
    orientation was applied, INPUT.LABELLED_EXIF: for the evaluator's size-mismatch message), plus
    the input fields.

    Args:
        is_train: training or testing behaviour.
        augmentations: detectron2 augmentations applied to image and label.
        image_format: detectron2 image format ("RGB").
        ignore_label: label value of ignored pixels.
        num_classes: number of classes; label values must be < num_classes or == ignore_label.
        size_divisibility: pad to a multiple of this (<= 0: no padding here; from_config disables
            it when the model degrades the batch, so that padding is added after degradation).
        validate_labels: check label values of every loaded annotation.
        degradation: callable ``(list of C x H x W float 0..255 tensors) -> list`` run in the
            worker, drawing its own per-image seeds (`OnlineDegradation`: a stream seeded by
            INPUT.DEGRADATION.SEED, the rank and the worker id; no global RNG); None: no degradation here.
        keep_clean: also return the clean image as ``image_clean`` when degrading here.
        labelled_exif: "apply" (images are turned upright by their EXIF orientation, as detectron2
            reads them; labels must follow the upright image) or "ignore" (the stored pixels).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List,
        image_format: str,
        ignore_label: int,
        num_classes: int,
        size_divisibility: int = -1,
        validate_labels: bool = True,
        degradation: Optional[Callable] = None,
        keep_clean: bool = False,
        labelled_exif: str = "apply",
    ) -> None:
        if labelled_exif not in EXIF_POLICIES:
            raise UserValueError(f"INPUT.LABELLED_EXIF must be one of {EXIF_POLICIES}, got {labelled_exif!r}")
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_label = ignore_label
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.validate_labels = validate_labels
        self.degradation = degradation
        self.keep_clean = keep_clean
        self.apply_exif = labelled_exif == "apply"
        mode = "training" if is_train else "inference"
        logging.getLogger(__name__).info(f"[SemanticDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> dict:
        if is_train:
            augs = [
                T.ResizeShortestEdge(
                    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
                )
            ]
            if cfg.INPUT.CROP.ENABLED:
                augs.append(
                    T.RandomCrop_CategoryAreaConstraint(
                        cfg.INPUT.CROP.TYPE,
                        cfg.INPUT.CROP.SIZE,
                        cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                        cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
                    )
                )
            if cfg.INPUT.COLOR_AUG_SSD:
                augs.append(ColorAugSSDTransform(img_format=cfg.INPUT.FORMAT))
            if cfg.INPUT.RANDOM_FLIP != "none":
                augs.append(
                    T.RandomFlip(
                        horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                        vertical=cfg.INPUT.RANDOM_FLIP == "vertical",
                    )
                )
        else:
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
        dataset_names = cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST
        ignore = MetadataCatalog.get(dataset_names[0]).get("ignore_label", 255) if dataset_names else 255
        degradation, keep_clean = _worker_degradation(cfg) if is_train else (None, False)
        # Training only (as in Mask2Former): at test time the model pads and crops its output back.
        size_divisibility = cfg.INPUT.SIZE_DIVISIBILITY if is_train else -1
        deg_cfg = cfg.INPUT.get("DEGRADATION")
        if is_train and deg_cfg is not None and deg_cfg.ENABLED and deg_cfg.DEVICE == "model":
            size_divisibility = -1  # the model degrades the content first, then pads (never the padding)
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "ignore_label": ignore,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "size_divisibility": size_divisibility,
            "validate_labels": cfg.INPUT.VALIDATE_LABELS,
            "degradation": degradation,
            "keep_clean": keep_clean,
            "labelled_exif": cfg.INPUT.LABELLED_EXIF,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_checked(dataset_dict["file_name"], self.image_format, self.apply_exif)
        dataset_dict.setdefault("height", image.shape[0])  # original size: predictions are resized to it
        dataset_dict.setdefault("width", image.shape[1])
        dataset_dict["exif_applied"] = self.apply_exif
        sem_seg = None
        if self.is_train:
            sem_seg = read_label_checked(dataset_dict["sem_seg_file_name"], image.shape[:2], dataset_dict["file_name"],
                                         self.apply_exif)
            if self.validate_labels:
                check_labels(sem_seg, self.num_classes, self.ignore_label, dataset_dict["sem_seg_file_name"])
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))

        if self.degradation is not None:
            # seeds from the degradation's own stream of (INPUT.DEGRADATION.SEED, rank, worker id)
            lq = self.degradation([image.float()])[0]
            if self.keep_clean:
                dataset_dict["image_clean"] = self._pad(image, 128)
            image = lq.round().clamp_(0, 255).to(torch.uint8)

        dataset_dict["image"] = self._pad(image, 128)
        if aug_input.sem_seg is not None:
            label = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
            dataset_dict["sem_seg"] = self._pad(label, self.ignore_label)
        return dataset_dict

    def _pad(self, t: torch.Tensor, value: int) -> torch.Tensor:
        if self.size_divisibility <= 0:
            return t
        h, w = t.shape[-2:]
        d = self.size_divisibility
        ph, pw = (d - h % d) % d, (d - w % d) % d
        if ph == 0 and pw == 0:
            return t
        return torch.nn.functional.pad(t, (0, pw, 0, ph), value=value)


def _worker_degradation(cfg):
    """The online degradation to run in data-loader workers (INPUT.DEGRADATION.DEVICE "worker")."""
    deg_cfg = cfg.INPUT.get("DEGRADATION")
    if deg_cfg is None or not deg_cfg.ENABLED or deg_cfg.DEVICE != "worker":
        return None, False
    from rass.data.degradation import OnlineDegradation

    deg = OnlineDegradation(cfg)
    return deg, bool(deg.keep_clean)
