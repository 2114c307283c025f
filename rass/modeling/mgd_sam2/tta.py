"""MGD-SAM2's test-time augmentation, as its `test.py` runs it with `ttach`:
`Compose([HorizontalFlip(), Scale([0.75, 1, 1.25], interpolation="bilinear", align_corners=False)])`.

Passes: the product (flip in [False, True]) x (scale in SCALES), flip-major (ttach's order; the first pass is
unflipped at the first scale). Per pass: flip the image (width axis), resize it to int(S * scale) (bilinear,
align_corners False, no antialias; views of half that side, so the model takes int(S * scale) / 2-px views),
run the model, resize its logits back to int(S' / scale) and unflip. Result: the mean of the logits (the
caller resizes it to the GT size; the evaluator applies the sigmoid).

The release's MCEM caches the sine position encoding of its first call (`mask_decoder.py`, `self.pe` is
computed once and bicubically resized afterwards): in `test.py` that is the first pass's tiled map, so at
scale 1 the encoding is a resized 0.75-scale one. `pe_cache=True` reproduces this (MCEM's
`pe_reference_size` set to the first pass's tiled size while the passes run).
"""
from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rass.utils.errors import UserValueError

from .model import MgdSam2Model, check_mgd_sam2_input_size

__all__ = ["tta_passes", "mgd_sam2_tta_logits", "mcem_pe_reference"]


def tta_passes(scales: Sequence[float], flip: bool) -> List[Tuple[bool, float]]:
    """(flipped, scale) of every pass, in ttach's order (flip-major)."""
    if not scales or any(float(s) <= 0 for s in scales):
        raise UserValueError(f"MODEL.MGD_SAM2.TTA_SCALES {list(scales)}: expected positive scales")
    return list(itertools.product([False, True] if flip else [False], [float(s) for s in scales]))


def _scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    """ttach's `functional.scale` with bilinear interpolation: size int(h * factor) x int(w * factor)."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    return F.interpolate(x, size=(int(h * factor), int(w * factor)), mode="bilinear", align_corners=False)


@contextmanager
def mcem_pe_reference(model: MgdSam2Model, size: Optional[Tuple[int, int]]) -> Iterator[None]:
    """Temporarily set MCEM's `pe_reference_size` (None: the encoding at each call's own size)."""
    mcem = model.mask_decoder.new_multifieldcrossatt
    old = mcem.pe_reference_size
    mcem.pe_reference_size = size
    try:
        yield
    finally:
        mcem.pe_reference_size = old


def mgd_sam2_tta_logits(model: MgdSam2Model, pixels: torch.Tensor, scales: Sequence[float] = (0.75, 1.0, 1.25),
                        flip: bool = True, pe_cache: bool = True) -> torch.Tensor:
    """Mean MGD-SAM2 logits over the TTA passes.

    Args:
        model: the MGD-SAM2 model (its `logits(pixels) -> (logits, view logits)` is called per pass).
        pixels: [B, 3, S, S] normalised images.
        scales: the scales (the release: 0.75, 1, 1.25); every int(S * scale) must suit the model.
        flip: add the horizontally flipped passes.
        pe_cache: MCEM's position encoding of every pass resized from the first pass's (the release's
            behaviour at test, see the module doc); False: computed at each pass's size.

    Returns:
        [B, 1, S, S] mean logits (not resized to the GT size, no sigmoid).
    """
    passes = tta_passes(scales, flip)
    side = int(pixels.shape[-1])
    for _, s in passes:
        check_mgd_sam2_input_size(model.variant, int(side * s),
                                  key=f"MODEL.MGD_SAM2.TTA_SCALES: scale {s:g} of the {side}-px input gives")
    first = int(side * passes[0][1]) // 16  # tiled stride-16 map of the first pass: 2 x (view side / 16)
    preds = []
    with mcem_pe_reference(model, (first, first) if pe_cache else None):
        for flipped, s in passes:
            x = pixels.flip(-1) if flipped else pixels
            logits, _ = model.logits(_scale(x, s))
            logits = _scale(logits, 1.0 / s)
            preds.append(logits.flip(-1) if flipped else logits)
    return torch.stack(preds).mean(dim=0)
