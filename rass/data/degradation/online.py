"""Config-driven online degradation for training (`cfg.INPUT.DEGRADATION`).

`OnlineDegradation` is called either inside the model's preprocessing (DEVICE "model": the batch
is on the model's device and degraded there) or inside data-loader workers (DEVICE "worker": one
image at a time on CPU). It takes *unpadded* images with values 0..255 — the caller pads after
degrading, so padding is never degraded — and leaves labels alone.

Seeds: pass `seeds` (one per image) for reproducible per-image results. Without them, seeds come
from a per-process generator seeded from (SEED, distributed rank, data-loader worker id), created
lazily in the process that calls it (the semantic mapper uses it with DEVICE "worker"; nothing is
drawn from the global RNGs); SEED < 0 seeds it from the operating system's entropy. The stream
starts again with every run, a resumed one included (as detectron2's training sampler does).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable

from rass.utils.errors import UserKeyError, UserValueError

from .pipeline import Degradation
from .presets import get_spec, spec_field_names

__all__ = ["OnlineDegradation", "derive_seed", "DEGRADATION_DEVICES", "model_side_degradation"]

DEGRADATION_DEVICES = ("model", "worker")


def derive_seed(*parts: Any) -> int:
    """A stable 62-bit seed from any printable parts (e.g. a base seed and a file name).

    Args:
        *parts: values whose `repr` identifies the image (order matters).
    """
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 2


def _process_identity() -> Tuple[int, int]:
    """(distributed rank, data-loader worker id or -1)."""
    rank = 0
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank = torch.distributed.get_rank()
    info = torch.utils.data.get_worker_info()
    return rank, (info.id if info is not None else -1)


class OnlineDegradation:
    """Degrade unpadded 0..255 images on the fly (training), per `cfg.INPUT.DEGRADATION`.

    Args:
        enabled: degrade at all (when False, `__call__` returns its inputs unchanged).
        preset: preset name (see `presets.PRESETS`).
        device: "model" (batched in the model's preprocessing) or "worker" (data-loader workers).
        keep_clean: whether the caller should keep the clean image next to the degraded one.
        seed: base seed of the per-process seed generator; < 0 for OS entropy.
        jpeg_backend: see `Degradation`.
        overrides: preset values to replace, by lower-case `DegradationSpec` field name.
    """

    @configurable
    def __init__(
        self,
        *,
        enabled: bool = False,
        preset: str = "rass",
        device: str = "model",
        keep_clean: bool = True,
        seed: int = -1,
        jpeg_backend: str = "auto",
        overrides: Optional[Dict[str, Any]] = None,
    ):
        if device not in DEGRADATION_DEVICES:
            raise UserValueError(f"INPUT.DEGRADATION.DEVICE must be one of {DEGRADATION_DEVICES}, got {device!r}")
        self.enabled = bool(enabled)
        self.device = device
        self.keep_clean = bool(keep_clean)
        self.seed = int(seed)
        self.spec = get_spec(preset, **(overrides or {}))
        self.preset = preset
        self.engine = Degradation(self.spec, seed=0, jpeg_backend=jpeg_backend)
        self._owner: Optional[Tuple[int, int, int]] = None
        self.last_params: List[Dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        d = cfg.INPUT.DEGRADATION
        overrides = {}
        for key, value in d.PARAMS.items():
            name = key.lower()
            if name not in spec_field_names():
                raise UserKeyError(f"INPUT.DEGRADATION.PARAMS.{key} is not a degradation value; valid: "
                                   f"{sorted(n.upper() for n in spec_field_names())}")
            if value is not None:
                overrides[name] = value
        return {
            "enabled": d.ENABLED,
            "preset": d.PRESET,
            "device": d.DEVICE,
            "keep_clean": d.KEEP_CLEAN,
            "seed": d.SEED,
            "jpeg_backend": d.JPEG_BACKEND,
            "overrides": overrides,
        }

    def _seeds(self, n: int) -> List[int]:
        """Per-image seeds from this process's generator (re-created after fork / in workers)."""
        rank, worker = _process_identity()
        owner = (os.getpid(), rank, worker)
        if self._owner != owner:
            base = None if self.seed < 0 else derive_seed("online-degradation", self.seed, rank, worker)
            self.engine.reseed(base)
            self._owner = owner
        return self.engine.draw_seeds(n)

    def degrade_with_params(
        self, images: Sequence[torch.Tensor], seeds: Optional[Sequence[int]] = None
    ) -> Tuple[List[torch.Tensor], List[Dict[str, Any]]]:
        """Like `__call__`, also returning the sampled parameters (one dict per image)."""
        if not self.enabled:
            return list(images), []
        for img in images:
            if img.dim() != 3 or img.shape[0] != 3:
                raise ValueError(f"OnlineDegradation expects unpadded 3×H×W images, got shape {tuple(img.shape)}")
        seeds = self._seeds(len(images)) if seeds is None else list(seeds)
        inputs = [img.to(torch.float32) / 255.0 for img in images]
        out, params = self.engine.degrade_list(inputs, seeds)
        result = [torch.round(o * 255.0).to(dtype=img.dtype) for o, img in zip(out, images)]
        self.last_params = params
        return result, params

    def __call__(self, images: List[torch.Tensor], seeds: Optional[List[int]] = None) -> List[torch.Tensor]:
        """Degrade unpadded images.

        Args:
            images: C×H×W (C = 3, RGB) tensors (float or uint8) with values 0..255; sizes may differ.
            seeds: optional per-image seeds.

        Returns:
            Degraded images, same sizes/dtype/device, values 0..255 on integer levels.
            The sampled parameters are in `self.last_params`.
        """
        return self.degrade_with_params(images, seeds)[0]

    def __repr__(self) -> str:
        return f"OnlineDegradation(enabled={self.enabled}, preset={self.preset!r}, device={self.device!r}, keep_clean={self.keep_clean}, seed={self.seed})"


def model_side_degradation(cfg) -> Optional["OnlineDegradation"]:
    """The online degradation a model applies itself (INPUT.DEGRADATION enabled with DEVICE "model"),
    or None.

    Args:
        cfg: the project config.
    """
    d = cfg.INPUT.get("DEGRADATION")
    if d is None or not d.ENABLED or d.DEVICE != "model":
        return None
    return OnlineDegradation(cfg)
