"""MGD-SAM2 (prompt-free high-resolution class-agnostic segmentation) on the engine.

Registered as META_ARCHITECTURE "MGDSAM2": the `MgdSam2Model` itself (so its state dict has the model's names;
a released `model_epoch_*.pth` given as MODEL.WEIGHTS is renamed while loading), plus:
- input: dataset dicts of the "mgd_sod" mapper: "image" uint8 3 x h x w RGB (resized here to
  MODEL.MGD_SAM2.IMAGE_SIZE squared, bilinear with antialias, when the mapper has not done it; aspect not kept),
  "gt_mask" float S x S in [0, 1] (training), "height" / "width" (output size);
- training: the loss dict of `mgd_sam2_losses` (BCE + IoU on the S x S logits, AUX_WEIGHT x the same on the five
  view masks); the trunk is frozen except the adapters (FREEZE_TRUNK);
- inference: {"mask_logits": [1, H, W] (TTA mean, or one pass, bilinearly resized to height x width, as the
  release), "masks": [1, H, W] bool (logits > MASK_THRESHOLD)}; the evaluator applies the sigmoid.
Weights: MODEL.MGD_SAM2.SAM2_INIT (a sam2.1_hiera_*.pt) initialises the SAM2 parts when the model is built
(`init_mgd_sam2_from_sam2`, with a report of what stays random); MODEL.WEIGHTS then loads MGD-SAM2 weights.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from rass.checkpoint.mgd_sam2_loader import init_mgd_sam2_from_sam2
from rass.modeling.mgd_sam2.loss import mgd_sam2_losses
from rass.modeling.mgd_sam2.model import MgdSam2Model, build_mgd_sam2_parts, check_mgd_sam2_input_size
from rass.modeling.mgd_sam2.tta import mgd_sam2_tta_logits, tta_passes
from rass.modeling.sam2 import Sam2ImageTransform
from rass.utils.errors import UserValueError

__all__ = ["MGDSAM2"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MGDSAM2(MgdSam2Model):
    """MGD-SAM2 taking and returning dataset dicts (see the module doc).

    Args:
        parts: `build_mgd_sam2_parts` output (the modules, with their weights).
        transform: resize to the input side + ImageNet normalisation (`Sam2ImageTransform`).
        aux_weight: weight of the view terms of the loss.
        freeze_trunk: freeze the Hiera trunk except the adapters.
        tta: run the TTA passes at inference.
        tta_scales: TTA scales.
        tta_flip: TTA adds flipped passes.
        pe_cache: the release's cached MCEM encoding during TTA (see `rass.modeling.mgd_sam2.tta`).
        mask_threshold: logit threshold of "masks".
        sam2_init: SAM 2.1 checkpoint that initialises the SAM2 parts (`init_mgd_sam2_from_sam2`, logged with what
            stays random); "": none. Not read when the model is built on the meta device.
    """

    # Parameters outside the loss (IoU / object-score heads, token 0's hypernetwork, the adapters the release
    # creates but never calls): DDP must be told.
    has_unused_parameters = True

    @configurable
    def __init__(self, *, parts: Dict[str, Any], transform: Sam2ImageTransform, aux_weight: float = 0.3,
                 freeze_trunk: bool = True, tta: bool = True, tta_scales: Sequence[float] = (0.75, 1.0, 1.25),
                 tta_flip: bool = True, pe_cache: bool = True, mask_threshold: float = 0.0,
                 sam2_init: str = "") -> None:
        super().__init__(**parts)
        check_mgd_sam2_input_size(self.variant, transform.target)
        self.transform = transform
        self.aux_weight = float(aux_weight)
        self.tta = bool(tta)
        self.tta_scales = tuple(float(s) for s in tta_scales)
        self.tta_flip = bool(tta_flip)
        self.pe_cache = bool(pe_cache)
        self.mask_threshold = float(mask_threshold)
        if self.tta:
            tta_passes(self.tta_scales, self.tta_flip)
            for s in self.tta_scales:
                key = f"MODEL.MGD_SAM2.TTA_SCALES: scale {s:g} of IMAGE_SIZE {transform.target} gives"
                check_mgd_sam2_input_size(self.variant, int(transform.target * s), key=key)
        if freeze_trunk:
            for name, p in self.image_encoder.trunk.named_parameters():
                p.requires_grad_(name.startswith("mpadapter."))
        on_meta = self.no_mask_embed.weight.is_meta
        self.sam2_init_report = None  # `MgdSam2InitReport` of SAM2_INIT
        if sam2_init and not on_meta:
            self.sam2_init_report = init_mgd_sam2_from_sam2(self, sam2_init)
        elif not on_meta:
            logger.warning("MODEL.MGD_SAM2.SAM2_INIT is empty: MGD-SAM2 has random weights (its SAM2 parts included) "
                           "unless MODEL.WEIGHTS sets them")

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        s, m = cfg.MODEL.SAM2, cfg.MODEL.MGD_SAM2
        if s.CHECKPOINT:
            raise UserValueError(f"MODEL.SAM2.CHECKPOINT {s.CHECKPOINT!r} is not read by MGD-SAM2",
                                 hint="initialise training from SAM 2.1 with MODEL.MGD_SAM2.SAM2_INIT; load MGD-SAM2 "
                                      "weights (model_epoch_*.pth) with MODEL.WEIGHTS")
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        # One draw from torch's global RNG seeds the random parts (the caller seeds or forks it).
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        parts = build_mgd_sam2_parts(s.VARIANT, m.IMAGE_SIZE, list(m.GLOBAL_ATTN_BLOCKS) or None, m.FPN_INTERP,
                                     m.ADAPTER_REDUCTION, meta, torch.Generator().manual_seed(init_seed))
        return {"parts": parts, "transform": Sam2ImageTransform(m.IMAGE_SIZE, s.PIXEL_MEAN, s.PIXEL_STD),
                "aux_weight": m.AUX_WEIGHT, "freeze_trunk": m.FREEZE_TRUNK, "tta": m.TTA, "tta_scales": m.TTA_SCALES,
                "tta_flip": m.TTA_FLIP, "pe_cache": m.PE_CACHE, "mask_threshold": m.MASK_THRESHOLD,
                "sam2_init": m.SAM2_INIT}

    @property
    def device(self) -> torch.device:
        return self.no_mask_embed.weight.device

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        return {"image_encoder": ["image_encoder"], "mask_decoder": ["mask_decoder"],
                "detail_enhance": ["detail_enhance"]}

    def _pixels(self, batched_inputs: List[Dict]) -> torch.Tensor:
        return torch.cat([self.transform(x["image"].to(self.device)) for x in batched_inputs])

    def forward(self, batched_inputs: List[Dict]):
        """Training: {loss name: value}; inference: one {"mask_logits", "masks"} per input (module doc)."""
        if self.training:
            return self.losses(batched_inputs)
        with torch.no_grad():
            return [self.inference(x) for x in batched_inputs]

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """MGD-SAM2's loss terms on a training batch (each input needs "gt_mask" S x S in [0, 1])."""
        pixels = self._pixels(batched_inputs)
        side = int(pixels.shape[-1])
        gts = []
        for x in batched_inputs:
            if "gt_mask" not in x:
                raise KeyError(f"MGD-SAM2 training: input {x.get('file_name', '?')!r} has no 'gt_mask' (use the "
                               "'mgd_sod' mapper)")
            gt = x["gt_mask"].to(self.device, torch.float32)
            if tuple(gt.shape[-2:]) != (side, side):
                raise UserValueError(f"MGD-SAM2 training: gt_mask of {x.get('file_name', '?')} is "
                                     f"{tuple(gt.shape)}, expected {side} x {side} (INPUT.SOD.IMAGE_SIZE must equal "
                                     "MODEL.MGD_SAM2.IMAGE_SIZE)")
            gts.append(gt.reshape(1, 1, side, side))
        logits, view_logits = self.logits(pixels)
        return mgd_sam2_losses(logits, view_logits, torch.cat(gts), self.aux_weight)

    def inference(self, inp: Dict) -> Dict[str, torch.Tensor]:
        """One image's output dict (module doc)."""
        pixels = self._pixels([inp])
        if self.tta:
            logits = mgd_sam2_tta_logits(self, pixels, self.tta_scales, self.tta_flip, self.pe_cache)
        else:
            logits, _ = self.logits(pixels)
        h, w = (int(v) for v in inp["image"].shape[-2:])
        out_hw = (int(inp.get("height", h)), int(inp.get("width", w)))
        logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)[0]
        return {"mask_logits": logits, "masks": logits > self.mask_threshold}
