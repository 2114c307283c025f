"""HQ-SAM (NeurIPS 2023) as a promptable model next to SAM, GleSAM and RobustSAM (META_ARCHITECTURE
"PromptableSAMHQ").

A `PromptableSAM` (same preprocessing, prompts, output sizes, input and output dicts, evaluator) whose SAM is
transformers' `SamHQModel`: the image encoder also returns the first global-attention block's output (its
`intermediate_embeddings[0]`, the release's `interm_embeddings[0]`), and the decoder adds the HQ output token's
mask. Output rule MODEL.SAM_HQ.HQ_TOKEN_ONLY: False (the release predictor's default) = SAM's mask + the HQ mask
(logits added), True = the HQ mask alone (what the release's training-time evaluation scores). With
MODEL.SAM.MULTIMASK_OUTPUT SAM's mask is the best-scored of its three (as released) plus the HQ mask.
"iou_pred" is SAM's IoU head (HQ-SAM adds none).

Weights: MODEL.SAM_HQ.CHECKPOINT (a released `sam_hq_vit_{b,l,h}.pth`, strict), or MODEL.SAM.CHECKPOINT (plain
SAM) with random HQ modules (logged as such). Inference only.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from rass.checkpoint.sam_hq_loader import load_sam_hq_checkpoint, load_sam_into_hq
from rass.modeling.sam import SamImageTransform, sam_variant
from rass.modeling.sam_hq import build_sam_hq, sam_hq_image_embeddings, sam_hq_predict
from rass.utils.errors import UserValueError

from .early_features import EarlyFeaturePrompting
from .promptable_sam import PromptableSAM, pick_best_mask

__all__ = ["PromptableSAMHQ"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PromptableSAMHQ(EarlyFeaturePrompting, PromptableSAM):
    """HQ-SAM (see the module doc).

    Args:
        sam: the `SamHQModel` (weights loaded).
        transform: SAM's pre/postprocessing.
        hq_token_only: the output rule (see the module doc).
        multimask_output: SAM's part is the best-scored of its 3 masks (False: mask token 0).
        mask_threshold: logit threshold of the binary masks.
        return_intermediates: add "intermediates" to every output (see `decode_hq`).
    """

    @configurable
    def __init__(self, *, sam: nn.Module, transform: SamImageTransform, hq_token_only: bool = False,
                 multimask_output: bool = False, mask_threshold: float = 0.0,
                 return_intermediates: bool = False) -> None:
        if not list(sam.config.vision_config.global_attn_indexes):
            raise UserValueError("HQ-SAM reads the first global-attention block of SAM's encoder, but "
                                 "MODEL.SAM.GLOBAL_ATTN_INDEXES is empty")
        super().__init__(sam=sam, transform=transform, enhancer=None, multimask_output=multimask_output,
                         mask_threshold=mask_threshold, return_intermediates=return_intermediates)
        self.hq_token_only = bool(hq_token_only)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s, h = cfg.MODEL.SAM, cfg.MODEL.SAM_HQ
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        device = torch.device("meta" if meta else "cpu")
        if h.CHECKPOINT and s.CHECKPOINT:
            raise UserValueError(f"MODEL.SAM_HQ.CHECKPOINT {h.CHECKPOINT!r} already holds SAM's weights: leave "
                                 f"MODEL.SAM.CHECKPOINT ({s.CHECKPOINT!r}) empty")
        variant = sam_variant(s.VARIANT, s.EMBED_DIM, s.DEPTH, s.NUM_HEADS, s.GLOBAL_ATTN_INDEXES, s.WINDOW_SIZE)
        # one draw from torch's global RNG seeds the random init (the caller seeds or forks it), with a file too
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        sam = build_sam_hq(variant, s.IMAGE_SIZE, device, init=not h.CHECKPOINT,
                           generator=torch.Generator().manual_seed(init_seed))
        if meta:
            logger.info("meta device: HQ-SAM / SAM checkpoints not read (shapes only)")
        elif h.CHECKPOINT:
            load_sam_hq_checkpoint(sam, h.CHECKPOINT)
        elif s.CHECKPOINT:
            load_sam_into_hq(sam, s.CHECKPOINT, base_path=s.BASE_CHECKPOINT)
            logger.warning("HQ-SAM: SAM weights from %s, the HQ modules are RANDOM (set MODEL.SAM_HQ.CHECKPOINT to "
                           "a released sam_hq_vit_*.pth)", s.CHECKPOINT)
        else:
            logger.warning("MODEL.SAM_HQ.CHECKPOINT and MODEL.SAM.CHECKPOINT are empty: HQ-SAM %s has RANDOM weights "
                           "(fine for tests, not for real use)", s.VARIANT)
        model_device = torch.device(cfg.MODEL.DEVICE) if not meta else device
        return {
            "sam": sam.to(model_device) if not meta else sam,
            "transform": SamImageTransform(cfg),
            "hq_token_only": h.HQ_TOKEN_ONLY,
            "multimask_output": s.MULTIMASK_OUTPUT,
            "mask_threshold": s.MASK_THRESHOLD,
            "return_intermediates": s.RETURN_INTERMEDIATES,
        }

    def plain_sam(self) -> "PromptableSAM":
        raise NotImplementedError("PromptableSAMHQ has no plain-SAM twin here: evaluate a SAM config next to it")

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        from rass.modeling.sam_hq import HQ_MODULES

        return {**super().analysis_parts(), "hq_modules": [f"sam.mask_decoder.{n}" for n in HQ_MODULES]}

    # ---------------------------------------------------------------- forward
    def encode_hq(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """Image embeddings and the first global block's output of RGB images (0..255).

        Args:
            images: 3 x h x w tensors (any sizes).

        Returns:
            (B x 256 x h' x w' embeddings, B x h' x w' x C_vit early features, each image's resized size).
        """
        pixels, valid = [], []
        for image in images:
            x, hw = self.transform(image.to(self.device))
            pixels.append(x)
            valid.append(hw)
        z, early = sam_hq_image_embeddings(self.sam, torch.cat(pixels))
        return z, early, valid

    def decode_hq(self, inp: Dict, embedding: torch.Tensor, early: torch.Tensor, valid_hw: Tuple[int, int],
                  return_intermediates: bool = False) -> Dict:
        """The masks of one input's prompts (the second half of `forward`; an interactive caller embeds an image
        once with `encode_hq` and decodes many prompts).

        Args:
            inp: one input dict of `forward` (its "image" gives the prompts' frame: only its size is read).
            embedding: 1 x 256 x h' x w'; early: 1 x h' x w' x C_vit (from `encode_hq` of that image).
            valid_hw: the image's resized size in SAM's frame.
            return_intermediates: add "intermediates": "low_res_logits" [P, M, 4h', 4w'] and "iou_predictions"
                [P, M] (M = 3 with MULTIMASK_OUTPUT, sorted best first, else 1), "chosen" [P], "early" (the first
                global block's output, 1 x h' x w' x C_vit), "z_low" (the image embedding).

        Returns:
            {"mask_logits": P x H x W, "masks": P x H x W bool, "iou_pred": P}.
        """
        h, w = (int(v) for v in inp["image"].shape[-2:])
        out_hw = (int(inp.get("height", h)), int(inp.get("width", w)))
        all_low_res, all_iou = sam_hq_predict(self.sam, embedding, early, multimask_output=self.multimask_output,
                                              hq_token_only=self.hq_token_only, **self._prompts(inp, (h, w)))
        all_low_res, all_iou = all_low_res[0], all_iou[0]
        low_res, iou, best = pick_best_mask(all_low_res, all_iou)
        logits = self.to_output_size(low_res, valid_hw, out_hw)
        out: Dict = {"mask_logits": logits, "masks": logits > self.mask_threshold, "iou_pred": iou}
        if return_intermediates:
            out["intermediates"] = {"low_res_logits": all_low_res, "iou_predictions": all_iou, "chosen": best,
                                    "early": early, "z_low": embedding}
        return out

    # the encode / decode pair of `EarlyFeaturePrompting` (predictor, page, robustness matrix)
    method_label = "HQ-SAM"
    encode_early = encode_hq
    decode_early = decode_hq

    def forward(self, batched_inputs: List[Dict], return_intermediates: Optional[bool] = None) -> List[Dict]:
        """Masks for the prompts of each image (dicts as `PromptableSAM`); inference only.

        Args:
            batched_inputs: the input dicts.
            return_intermediates: add "intermediates" (see `decode_hq`); None: MODEL.SAM.RETURN_INTERMEDIATES.
        """
        if self.training:
            raise NotImplementedError("PromptableSAMHQ is inference only: call model.eval()")
        want = self.return_intermediates if return_intermediates is None else bool(return_intermediates)
        with torch.no_grad():
            z, early, valid = self.encode_hq([x["image"] for x in batched_inputs])
            return [self.decode_hq(inp, z[i:i + 1], early[i:i + 1], valid[i], return_intermediates=want)
                    for i, inp in enumerate(batched_inputs)]
