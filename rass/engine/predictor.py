"""`SemanticPredictor`: a trained model behind a one-call interface for RGB arrays."""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import convert_PIL_to_numpy
from PIL import Image

from rass.checkpoint import RASSCheckpointer
from rass.data.dataset_mappers import SemanticDatasetMapper
from rass.data.datasets.sem_seg import palette
from rass.engine.model_build import build_model_noting_random_weights
from rass.utils.errors import UserValueError

__all__ = ["SemanticPredictor"]

logger = logging.getLogger(__name__)


class SemanticPredictor:
    """Run a semantic-segmentation model on RGB images given as numpy arrays.

    Built from a config, it builds the model on MODEL.DEVICE, loads MODEL.WEIGHTS (project or
    released checkpoints, via `RASSCheckpointer`) and switches to eval mode. Every image is
    converted to INPUT.FORMAT and resized with the test mapper's own augmentations (shortest edge
    INPUT.MIN_SIZE_TEST, longest at most INPUT.MAX_SIZE_TEST); the model pads the batch itself
    and returns scores at the original size (as the test data path does).

        predictor = SemanticPredictor(setup_cfg("configs/quickstart/tiny_rass.yaml",
                                                ["MODEL.WEIGHTS", "output/quickstart/model_final.pth"]))
        out = predictor(rgb)  # {"sem_seg": C x H x W scores, "labels": H x W int64}

    Args:
        model: the model, in eval mode, with its weights.
        augmentations: the test-time augmentations (a resize).
        input_format: the model's image format ("RGB", "BGR", "L", ...).
        class_names: one name per class (class id -> name).
        colors: one RGB colour per class.
        weight_notes: what of the model has random weights (empty when every part was loaded);
            `from_config` fills it (the same lines are logged as warnings).
    """

    @configurable
    def __init__(
        self,
        *,
        model: torch.nn.Module,
        augmentations: Sequence[T.Augmentation],
        input_format: str,
        class_names: Sequence[str],
        colors: Sequence[Sequence[int]],
        weight_notes: Sequence[str] = (),
    ) -> None:
        self.model = model.eval()
        self.augmentations = T.AugmentationList(list(augmentations))
        self.input_format = input_format
        self.class_names = list(class_names)
        self.colors = [list(c) for c in colors]
        self.weight_notes = list(weight_notes)

    @classmethod
    def from_config(cls, cfg, allow_random_weights: bool = False) -> dict:
        """Args:
            cfg: the project config.
            allow_random_weights: build the model with random weights when MODEL.WEIGHTS is empty
                (demos of untrained configurations; `weight_notes` says so) instead of refusing.
        """
        weights = cfg.MODEL.WEIGHTS
        if not weights and not allow_random_weights:
            raise UserValueError(
                "MODEL.WEIGHTS is empty: the predictor needs trained weights "
                "(add `MODEL.WEIGHTS path/to/model_final.pth` to the overrides)"
            )
        model, notes = build_model_noting_random_weights(cfg)  # on MODEL.DEVICE
        if weights:
            RASSCheckpointer(cfg, model, save_dir="").load(weights)  # errors name MODEL.WEIGHTS (missing, unreadable, misfit)
        weight_notes = list(notes.messages)
        if not weights:
            weight_notes.insert(0, "MODEL.WEIGHTS is empty: the segmentation head and every part without "
                                   "its own weights file have random weights")
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        names: List[str] = []
        colors: List[List[int]] = []
        if cfg.DATASETS.TEST:
            meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
            names = list(meta.get("stuff_classes", None) or [])
            colors = [list(c) for c in (meta.get("stuff_colors", None) or [])]
        if len(names) != num_classes:
            if names:
                logger.warning(f"{cfg.DATASETS.TEST[0]} has {len(names)} class names for {num_classes} classes "
                               "(MODEL.SEM_SEG_HEAD.NUM_CLASSES); missing names become 'class <id>'")
            names = (names + [f"class {i}" for i in range(len(names), num_classes)])[:num_classes]
        if len(colors) < num_classes:
            colors = colors + palette(num_classes)[len(colors):]
        return {
            "model": model,
            "augmentations": SemanticDatasetMapper.from_config(cfg, is_train=False)["augmentations"],
            "input_format": cfg.INPUT.FORMAT,
            "class_names": names,
            "colors": colors[:num_classes],
            "weight_notes": weight_notes,
        }

    @property
    def device(self) -> torch.device:
        """The model's device (MODEL.DEVICE)."""
        return next(self.model.parameters()).device

    def preprocess(self, image: np.ndarray) -> Dict:
        """One RGB image -> the model input dict (converted, resized, original size recorded).

        Args:
            image: H x W x 3 uint8 RGB array.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            is_array = isinstance(image, np.ndarray)
            desc = f"{image.dtype} array of shape {image.shape}" if is_array else type(image).__name__
            raise ValueError(f"SemanticPredictor: expected an H x W x 3 uint8 RGB array, got a {desc}")
        height, width = image.shape[:2]
        if self.input_format != "RGB":  # exactly as detectron2's read_image converts a decoded file
            image = convert_PIL_to_numpy(Image.fromarray(image), self.input_format)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray]) -> List[Dict[str, torch.Tensor]]:
        """Predict several images in one forward pass. The model pads them to a common size, so
        images of equal size (e.g. video frames) give the same result as one at a time — except
        for noise drawn per forward: RASS with MODEL.RASS.LATENT "sample" draws the VAE posterior
        noise of the whole batch from MODEL.RASS.SEED, so it depends on an image's place in it.

        Args:
            images: H x W x 3 uint8 RGB arrays.

        Returns:
            per image, on the model's device: "sem_seg" (C x H x W float scores at the image's
            own size) and "labels" (H x W int64, the arg-max class id).
        """
        if len(images) == 0:
            return []
        outputs = self.model([self.preprocess(im) for im in images])
        # max(dim).indices is argmax (first maximum on ties), about 3x faster on CPU over dim 0
        return [{"sem_seg": o["sem_seg"], "labels": o["sem_seg"].max(dim=0).indices} for o in outputs]

    def __call__(self, image: np.ndarray) -> Dict[str, torch.Tensor]:
        """Predict one image (see `predict_batch`).

        Args:
            image: H x W x 3 uint8 RGB array.
        """
        return self.predict_batch([image])[0]
