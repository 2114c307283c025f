"""`PromptablePredictor`: SAM / GleSAM / RobustSAM / HQ-SAM / Stable-SAM behind a one-call interface for an RGB
array and its prompts."""
from __future__ import annotations

import hashlib
import logging
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable

from rass.checkpoint import RASSCheckpointer
from rass.data.prompts import check_prompts
from rass.engine.model_build import build_model_noting_random_weights
from rass.utils.errors import UserValueError

__all__ = ["PromptablePredictor", "LastImageCache", "prompt_codec"]

logger = logging.getLogger(__name__)

# (images -> (per-image features, each B x ..., resized sizes); (input dict, 1-image features, resized size,
# return_intermediates) -> output dict of `PromptableSAM.decode`)
Encode = Callable[[List[torch.Tensor]], Tuple[Tuple[torch.Tensor, ...], List[Tuple[int, int]]]]
Decode = Callable[..., Dict]


def prompt_codec(model: torch.nn.Module) -> Tuple[Encode, Decode]:
    """The (encode, decode) pair a predictor runs on `model`: the model's own `prompt_features` /
    `decode_features` when it has them (RobustSAM, HQ-SAM: the image embedding and the first global block's
    output), else `PromptableSAM.encode` / `decode` with the image embedding as a 1-tuple (Stable-SAM's `decode`
    runs its plugins). The first feature is always
    SAM's image embedding (what a plain-SAM twin decodes).

    Args:
        model: a promptable SAM model.
    """
    if hasattr(model, "prompt_features") and hasattr(model, "decode_features"):
        return model.prompt_features, model.decode_features

    def encode(images: List[torch.Tensor]) -> Tuple[Tuple[torch.Tensor, ...], List[Tuple[int, int]]]:
        z, valid = model.encode(images)
        return (z,), valid

    def decode(inp: Dict, features: Tuple[torch.Tensor, ...], valid_hw: Tuple[int, int],
               return_intermediates: bool = False) -> Dict:
        return model.decode(inp, features[0], valid_hw, return_intermediates=return_intermediates)

    return encode, decode


class LastImageCache:
    """The embedding of the last image seen (SAM's `set_image` idea): clicking more prompts on the
    same image decodes them without running the image encoder again. Thread-safe.
    """

    def __init__(self) -> None:
        self._key: Optional[str] = None
        self._value: Optional[Tuple[object, Tuple[int, int]]] = None
        self._lock = threading.Lock()

    @staticmethod
    def key(image: np.ndarray) -> str:
        """A digest of the image's size and pixels."""
        h = hashlib.blake2b(repr(image.shape).encode(), digest_size=16)
        h.update(np.ascontiguousarray(image).data)
        return h.hexdigest()

    def get_or_compute(self, key: str, compute) -> Tuple[object, Tuple[int, int]]:
        """The cached value of `key`, else `compute()` (which then replaces the cached one)."""
        with self._lock:
            if self._key != key:
                self._value, self._key = compute(), key
            return self._value

    def clear(self) -> None:
        """Forget the cached value (e.g. after loading other weights into the model)."""
        with self._lock:
            self._key, self._value = None, None


class PromptablePredictor:
    """Masks for point / box prompts on one image, with a "PromptableSAM" (SAM, GleSAM), "RobustSAM",
    "PromptableSAMHQ" (HQ-SAM) or "StableSAM" model.

    The image keeps its aspect ratio (SAM's own preprocessing: longest side to MODEL.SAM.IMAGE_SIZE);
    prompts are pixel coordinates of the image; masks come back at the image's size. (The LQSeg
    evaluation instead follows GleSAM's loader, which first resizes every image to 512 x 512.)
    Weights: MODEL.SAM.CHECKPOINT (+ BASE_CHECKPOINT), MODEL.GLESAM.LORA_PATH and MODEL.ROBUSTSAM.CHECKPOINT as
    the model reads them, then MODEL.WEIGHTS (a project checkpoint of the whole model) when it is set.

        predictor = PromptablePredictor(setup_cfg("configs/lqseg/glesam_vitl_sd21.yaml"))
        out = predictor(rgb, points=[[120, 80]], labels=[1])   # {"masks", "mask_logits", "iou_pred"}
        sam = predictor.plain_sam()                            # SAM alone, same weights and encoder cache

    The image features of the last image are kept (`LastImageCache`; what the model's decoder reads, see
    `prompt_codec`): more prompts on the same image run only the prompt encoder and the mask decoder
    (`clear_cache()` after changing the weights).

    Args:
        model: a PromptableSAM or RobustSAM model, with its weights (put in eval mode).
        weight_notes: what of the model has random weights (empty when every part was loaded);
            `from_config` fills it (the same lines are logged as warnings).
        encoder_cache: the cache of SAM's (not enhanced) image embedding, to share it with another
            predictor of the same SAM (`plain_sam`); default a new one.
        encode: the image step filling `encoder_cache` (`plain_sam` passes its parent's, so that a shared
            cache holds one kind of features); default the model's (`prompt_codec`).
    """

    @configurable
    def __init__(self, *, model: torch.nn.Module, weight_notes: Sequence[str] = (),
                 encoder_cache: Optional[LastImageCache] = None, encode: Optional[Encode] = None) -> None:
        if not hasattr(model, "transform") or not hasattr(model, "sam"):
            raise UserValueError(f"PromptablePredictor needs MODEL.META_ARCHITECTURE 'PromptableSAM' or 'RobustSAM', "
                                 f"got {type(model).__name__}")
        self.model = model.eval()
        own_encode, self._decode = prompt_codec(model)
        self._encode = encode or own_encode
        self.weight_notes = list(weight_notes)
        self._encoded = encoder_cache or LastImageCache()
        self._enhanced = LastImageCache()

    @classmethod
    def from_config(cls, cfg) -> dict:
        model, notes = build_model_noting_random_weights(cfg)
        if cfg.MODEL.WEIGHTS:
            RASSCheckpointer(cfg, model, save_dir="").load(cfg.MODEL.WEIGHTS)
        return {"model": model, "weight_notes": list(notes.messages)}

    @property
    def method(self) -> str:
        """The method's name: "SAM", "GleSAM", "RobustSAM" (`rass.engine.robustness.method_name`), "HQ-SAM",
        "Stable-SAM" or "GleSAM + Stable-SAM" (Stable-SAM's plugins after GleSAM's enhancement)."""
        from rass.engine.robustness import method_name

        return method_name(self.model)

    @property
    def enhanced(self) -> bool:
        """Whether the model runs GleSAM's latent enhancement."""
        return self.model.enhancer is not None

    def plain_sam(self) -> "PromptablePredictor":
        """Plain SAM with this model's SAM (no enhancement, SAM's own decoder), sharing this predictor's encoder
        cache: SAM and GleSAM (or RobustSAM) on the same image run SAM's image encoder once."""
        return PromptablePredictor(model=self.model.plain_sam(), encoder_cache=self._encoded, encode=self._encode)

    def clear_cache(self) -> None:
        """Forget the cached image embeddings."""
        self._encoded.clear()
        self._enhanced.clear()

    @torch.no_grad()
    def embeddings(self, image: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """(z_L: SAM's 1 x 256 x 64 x 64 image embedding; the embedding the decoder uses: ẑ for GleSAM, else
        z_L itself; the resized size in SAM's frame), computed once per image (the last image's is cached).

        Args:
            image: H x W x 3 uint8 RGB array.
        """
        features, z, valid = self._features(image)
        return features[0], z, valid

    @torch.no_grad()
    def _features(self, image: np.ndarray) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor, Tuple[int, int]]:
        """(the model's features of the image, see `prompt_codec`; the embedding the decoder uses; the resized
        size), cached."""
        def encode() -> Tuple[Tuple[torch.Tensor, ...], Tuple[int, int]]:
            features, valid = self._encode([torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))])
            return tuple(features), valid[0]

        key = LastImageCache.key(image)
        features, valid = self._encoded.get_or_compute(key, encode)
        if self.model.enhancer is None:
            return features, features[0], valid
        z, _ = self._enhanced.get_or_compute(key, lambda: (self.model.enhancer(features[0]), valid))
        return features, z, valid

    def embedding(self, image: np.ndarray) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """(1 x 256 x 64 x 64 image embedding, enhanced for GleSAM; the resized size in SAM's frame), cached
        as in `embeddings`.

        Args:
            image: H x W x 3 uint8 RGB array.
        """
        _, z, valid = self.embeddings(image)
        return z, valid

    @torch.no_grad()
    def __call__(self, image: np.ndarray, points: Optional[Sequence[Sequence[float]]] = None,
                 labels: Optional[Sequence[int]] = None, box: Optional[Sequence[float]] = None,
                 intermediates: bool = False) -> Dict:
        """Predict the mask of one object.

        Args:
            image: H x W x 3 uint8 RGB array.
            points: N (x, y) pixel coordinates, or None.
            labels: N labels (1 positive, 0 negative); default all positive.
            box: (x1, y1, x2, y2) pixels with x1 < x2, y1 < y2, or None.
            intermediates: also return "intermediates": "z_low" (z_L), "z_enhanced" (ẑ, GleSAM only),
                "low_res_logits" [M, 4h, 4w], "iou_predictions" [M], "chosen" (index of the returned mask),
                "multimask_logits" [3, 4h, 4w], "multimask_iou" [3] (see `PromptableSAM.decode`); RobustSAM:
                "z_low", "robust_logits" [16, 4h, 4w], "iou_predictions" [4], "chosen" (`RobustSAM.decode_robust`).

        Returns:
            "masks" (H x W bool), "mask_logits" (H x W float), "iou_pred" (SAM's predicted IoU, a float tensor).

        Raises:
            UserValueError: a point that is not finite or lies outside the image, labels other than 0 / 1 or of
                another count, a box that is not finite, inverted, of zero area or outside the image.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise UserValueError(f"PromptablePredictor: expected an H x W x 3 uint8 RGB array, got a {desc}")
        h, w = image.shape[:2]
        has_points = points is not None and len(points) > 0
        if not has_points and box is None:
            raise UserValueError("PromptablePredictor: give at least one point or a box")
        check_prompts((h, w), points if has_points else None, labels if has_points else None,
                      None if box is None else [box], source="prompt")
        inp: Dict = {"image": torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))), "height": h, "width": w}
        if has_points:
            coords = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(-1, 2)
            lab = torch.ones(len(coords), dtype=torch.long) if labels is None else \
                torch.as_tensor(np.asarray(labels)).reshape(-1).long()
            inp["point_coords"], inp["point_labels"] = coords[None], lab[None]
        if box is not None:
            inp["boxes"] = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(1, 4)
        features, z, valid = self._features(image)
        out = self._decode(inp, (z,) + tuple(features[1:]), valid, return_intermediates=intermediates)
        result = {"masks": out["masks"][0], "mask_logits": out["mask_logits"][0], "iou_pred": out["iou_pred"][0]}
        if intermediates:
            inter = {k: v[0] for k, v in out["intermediates"].items()}  # the one object
            result["intermediates"] = {**self.model.embedding_intermediates(features[0], z), **inter}
        return result
