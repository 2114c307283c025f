"""The `ram` and `dape` taggers: images in [0, 1] -> ", "-joined RAM tags.

A tagger *is* the RAM network (it subclasses `RAM`), so its `state_dict()` names are exactly
the released ones: `ram` has the 1042 names of `ram_swin_large_14m.pth`, `dape` the 1290 names of
the LoRA variant (RASS stores both as `backbone.feature_extractor.{ram,dape}.<name>`).

Inference, as in RAM / the RASS release: resize to IMAGE_SIZE (bilinear; without antialiasing as
the release's torchvision 0.16 `transforms.Resize` on tensors, or with it: MODEL.TAGGER.RAM.ANTIALIAS), ImageNet
normalisation, sigmoid of the tag logits, a tag is kept when its probability is strictly above
its class threshold, deleted indices are dropped, tags are joined with ", " in tag-list order.
Taggers are frozen and always run their network in eval mode without gradients; on CUDA they
run in DTYPE (float16 as released), on other devices in float32. While the tagger is in eval mode,
tags are cached per image content (LRU); switching to training clears the cache.
"""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from torch.nn import functional as F
from transformers import BertConfig

from rass.utils.errors import UserValueError

from .base import TAGGER_REGISTRY, Tagger
from .bert import load_bert_config
from .loading import load_dape_weights, load_ram_weights, read_tag_list, read_thresholds
from .ram import RAM

__all__ = ["RAMTagger", "DAPETagger"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@TAGGER_REGISTRY.register_as("ram")
class RAMTagger(RAM, Tagger):
    """RAM image tagger (frozen).

    Args:
        tags: tag names, in class order (RAM: 4585).
        thresholds: per-class thresholds [num_tags], or None for `default_threshold` everywhere.
        default_threshold: threshold used when `thresholds` is None.
        delete_tag_indices: class indices never emitted.
        image_size: square input side of the network (384).
        antialias: antialias the bilinear resize to `image_size` (False: the release's resize).
        pixel_mean: RGB mean on the 0..1 scale.
        pixel_std: RGB std on the 0..1 scale.
        swin: Swin hyper-parameters (default Swin-L).
        text_config: BERT config of tag encoder / text decoder (default RAM's).
        head_config: BERT config of the tagging head (default RAM's).
        embed_dim: label embedding width (512).
        text_modules: build the tag encoder / text decoder (checkpoint names).
        lora_rank: LoRA rank (0 for RAM; DAPE: 8).
        lora_alpha: LoRA alpha.
        weights: RAM weight file, loaded strictly ("" keeps the random initialisation).
        adapter_weights: DAPE adapter file, loaded non-strictly on top ("" : none).
        dtype: compute dtype on CUDA ("float32", "float16", "bfloat16").
        batch_size: images per network pass.
        cache: cache tags per image content in eval mode.
        cache_size: maximal number of cached images.
    """

    @configurable
    def __init__(
        self,
        *,
        tags: Sequence[str],
        thresholds: Optional[torch.Tensor] = None,
        default_threshold: float = 0.68,
        delete_tag_indices: Sequence[int] = (),
        image_size: int = 384,
        antialias: bool = False,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
        swin: Optional[Dict[str, object]] = None,
        text_config: Optional[BertConfig] = None,
        head_config: Optional[BertConfig] = None,
        embed_dim: int = 512,
        text_modules: bool = True,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        weights: str = "",
        adapter_weights: str = "",
        dtype: str = "float16",
        batch_size: int = 8,
        cache: bool = True,
        cache_size: int = 10000,
    ) -> None:
        super().__init__(
            num_classes=len(tags), image_size=image_size, swin=swin, text_config=text_config,
            head_config=head_config, embed_dim=embed_dim, lora_rank=lora_rank, lora_alpha=lora_alpha,
            text_modules=text_modules,
        )
        self.tags: List[str] = list(tags)
        if thresholds is None:
            thresholds = torch.full((len(self.tags),), float(default_threshold), device="cpu")
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32, device="cpu")
        if thresholds.shape != (len(self.tags),):
            raise ValueError(f"tagger: {tuple(thresholds.shape)} thresholds for {len(self.tags)} tags")
        self.class_thresholds = thresholds  # plain CPU tensor: compared with probabilities on CPU
        bad = [i for i in delete_tag_indices if not 0 <= int(i) < len(self.tags)]
        if bad:
            raise UserValueError(f"MODEL.TAGGER.RAM.DELETE_TAG_INDICES: {bad} outside 0..{len(self.tags) - 1}")
        self.delete_tag_indices = sorted({int(i) for i in delete_tag_indices})
        if dtype not in _DTYPES:
            raise UserValueError(f"MODEL.TAGGER.RAM.DTYPE: {dtype!r} is not one of {sorted(_DTYPES)}")
        if int(batch_size) < 1:
            raise UserValueError(f"MODEL.TAGGER.RAM.BATCH_SIZE must be >= 1, got {batch_size}")
        self.cuda_dtype = _DTYPES[dtype]
        self.batch_size = int(batch_size)
        self.antialias = bool(antialias)
        self.pixel_mean = tuple(float(v) for v in pixel_mean)
        self.pixel_std = tuple(float(v) for v in pixel_std)
        self.cache_enabled = bool(cache)
        self.cache_size = int(cache_size)
        self._cache: "OrderedDict[str, str]" = OrderedDict()

        if weights:
            logger.info(load_ram_weights(self, weights).summary())
        if adapter_weights:
            if self.lora_rank <= 0:
                raise ValueError("tagger: adapter weights given to a tagger built without LoRA (lora_rank 0)")
            logger.info(load_dape_weights(self, adapter_weights).summary())
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        c = cfg.MODEL.TAGGER.RAM
        if c.TAG_LIST:
            tags = read_tag_list(c.TAG_LIST)
        elif c.WEIGHTS:
            raise UserValueError(
                "MODEL.TAGGER.RAM.TAG_LIST is empty but MODEL.TAGGER.RAM.WEIGHTS is set: give the local path of "
                "RAM's tag list (ram_tag_list.txt, one tag per line) that goes with the weights"
            )
        else:
            logger.warning("RAM tagger without weights and tag list: random weights, %d placeholder tags", c.NUM_CLASSES)
            tags = [f"tag{i}" for i in range(int(c.NUM_CLASSES))]
        thresholds = read_thresholds(c.THRESHOLDS, len(tags)) if c.THRESHOLDS else None
        if c.WEIGHTS and not c.THRESHOLDS:
            logger.warning("MODEL.TAGGER.RAM.THRESHOLDS is empty: every tag uses %.2f (RAM's published inference "
                           "reads per-class thresholds from ram_tag_list_threshold.txt)", c.DEFAULT_THRESHOLD)
        return {
            "tags": tags,
            "thresholds": thresholds,
            "default_threshold": c.DEFAULT_THRESHOLD,
            "delete_tag_indices": list(c.DELETE_TAG_INDICES),
            "image_size": c.IMAGE_SIZE,
            "antialias": c.ANTIALIAS,
            "pixel_mean": list(c.PIXEL_MEAN),
            "pixel_std": list(c.PIXEL_STD),
            "swin": dict(embed_dim=c.SWIN_EMBED_DIM, depths=tuple(c.SWIN_DEPTHS), num_heads=tuple(c.SWIN_NUM_HEADS),
                         window_size=c.SWIN_WINDOW_SIZE),
            "text_config": load_bert_config(c.TEXT_BERT_CONFIG, "MODEL.TAGGER.RAM.TEXT_BERT_CONFIG")
            if c.TEXT_BERT_CONFIG else None,
            "head_config": load_bert_config(c.HEAD_BERT_CONFIG, "MODEL.TAGGER.RAM.HEAD_BERT_CONFIG")
            if c.HEAD_BERT_CONFIG else None,
            "embed_dim": c.EMBED_DIM,
            "text_modules": c.TEXT_MODULES,
            "weights": c.WEIGHTS,
            "dtype": c.DTYPE,
            "batch_size": c.BATCH_SIZE,
            "cache": c.CACHE,
            "cache_size": c.CACHE_SIZE,
        }

    # ------------------------------------------------------------------ mode and cache
    def train(self, mode: bool = True) -> "RAMTagger":
        """The network always stays in eval mode; the flag only switches the cache (training clears it)."""
        super().train(False)
        self.training = bool(mode)
        if mode:
            self.clear_cache()
        return self

    def clear_cache(self) -> None:
        """Forget every cached result."""
        self._cache.clear()

    @staticmethod
    def fingerprint(image: torch.Tensor) -> str:
        """Content key of one image tensor (shape, dtype and exact values)."""
        t = image.detach().contiguous()
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.cpu().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ inference
    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> float32 [B, 3, S, S] (bilinear, antialiased when `antialias`;
        no-op at size S)."""
        x = images.float()
        s = self.image_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=self.antialias)
        return x

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize and ImageNet-normalise a [0, 1] RGB batch."""
        x = self.resize(images)
        mean = torch.tensor(self.pixel_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.pixel_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def compute_dtype(self, device: torch.device) -> torch.dtype:
        """DTYPE on CUDA, float32 elsewhere."""
        return self.cuda_dtype if device.type == "cuda" else torch.float32

    @torch.no_grad()
    def tag_probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> sigmoid probabilities [B, num_tags] (float32, CPU)."""
        device = self.label_embed.device
        dtype = self.compute_dtype(device)
        if self.label_embed.dtype != dtype:
            self.to(dtype=dtype)  # frozen network: cast once to the compute dtype of its device
        x = self.preprocess(images.to(device))
        with torch.autocast(device_type=device.type, enabled=False):
            logits = self.tag_logits(x.to(dtype))
        return torch.sigmoid(logits).float().cpu()

    def kept_indices(self, probabilities: torch.Tensor) -> List[List[int]]:
        """Probabilities [B, num_tags] -> per row, the increasing indices of the kept tags (above their
        class threshold, not deleted)."""
        keep = probabilities.float().cpu() > self.class_thresholds
        if self.delete_tag_indices:
            keep[:, self.delete_tag_indices] = False
        return [row.nonzero().flatten().tolist() for row in keep]

    def decode(self, probabilities: torch.Tensor) -> List[str]:
        """Probabilities [B, num_tags] -> one ", "-joined string of kept tags per row (tag-list order)."""
        return [", ".join(self.tags[j] for j in idx) for idx in self.kept_indices(probabilities)]

    def forward(self, images: torch.Tensor) -> List[str]:  # type: ignore[override]
        """Images [B, 3, H, W], RGB in [0, 1], any size and device -> B prompt strings."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"tagger expects images B x 3 x H x W in [0, 1], got shape {tuple(images.shape)}")
        n = int(images.shape[0])
        out: List[Optional[str]] = [None] * n
        use_cache = self.cache_enabled and not self.training and not torch.jit.is_tracing()
        keys = [self.fingerprint(images[i]) for i in range(n)] if use_cache else []
        todo = []
        for i in range(n):
            if use_cache and keys[i] in self._cache:
                self._cache.move_to_end(keys[i])
                out[i] = self._cache[keys[i]]
            else:
                todo.append(i)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            for i, text in zip(idx, self.decode(self.tag_probabilities(images[idx]))):
                out[i] = text
                if use_cache:
                    self._cache[keys[i]] = text
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return [s if s is not None else "" for s in out]


@TAGGER_REGISTRY.register_as("dape")
class DAPETagger(RAMTagger):
    """DAPE: the RAM tagger with LoRA adapters (Swin qkv q/v, BERT query/key), read from DAPE.pth."""

    @classmethod
    def from_config(cls, cfg) -> dict:
        args = super().from_config(cfg)
        d = cfg.MODEL.TAGGER.DAPE
        if d.LORA_RANK <= 0:
            raise UserValueError(f"MODEL.TAGGER.DAPE.LORA_RANK must be positive for the dape tagger, got {d.LORA_RANK}")
        if not d.WEIGHTS and args["weights"]:
            logger.warning("MODEL.TAGGER.DAPE.WEIGHTS is empty: the dape tagger has no adapters and tags as RAM does")
        args.update(lora_rank=d.LORA_RANK, lora_alpha=d.LORA_ALPHA, adapter_weights=d.WEIGHTS)
        return args
