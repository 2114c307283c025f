"""Promptable segmentation with plain SAM 2 / SAM 2.1 on single images.

Registered as META_ARCHITECTURE "PromptableSAM2". Same input and output dicts as "PromptableSAM", so the
promptable evaluator and `tools/eval_robustness.py` run SAM2 on the same prompts as SAM / GleSAM. It runs
SAM2 as SAM2's `SAM2ImagePredictor` does:
  1. `Sam2ImageTransform`: the image resized to MODEL.SAM2.IMAGE_SIZE squared (aspect not kept, bilinear with
     antialias), ImageNet mean / std; prompt coordinates scaled by IMAGE_SIZE / w and IMAGE_SIZE / h;
  2. Hiera + FPN -> stride-16 embedding (+ `no_mem_embed`) and the stride-4 / 8 features (`conv_s0` / `conv_s1`);
  3. prompts: points as given; a box becomes its two corners labelled 2 / 3, placed before the points; SAM2's
     padding point is always appended;
  4. mask decoder: single mask (token 0, or SAM2's stability fallback with MODEL.SAM2.DYNAMIC_MULTIMASK), or
     with MODEL.SAM2.MULTIMASK_OUTPUT the multimask output of highest predicted IoU;
  5. logits bilinearly resized straight to the output size (SAM2's `postprocess_masks`, no hole filling).

Input dicts: "image" uint8 3 x h x w RGB, "point_coords" [P, N, 2] (x, y) with "point_labels" [P, N] (1 positive,
0 negative, -1 padding) and/or "boxes" [P, 4] xyxy, in the image's pixel frame; optional "height", "width" (output
size). Output per image: "mask_logits" [P, H, W], "masks" [P, H, W] bool (logits > MODEL.SAM2.MASK_THRESHOLD),
"iou_pred" [P]; with MODEL.SAM2.RETURN_INTERMEDIATES also "intermediates": "low_res_logits" [P, M, S/4, S/4],
"iou_predictions" [P, M], "chosen" [P] and "object_score_logits" [P] (SAM2's object-presence logit).
Inference only.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from rass.checkpoint.sam2_loader import load_sam2_checkpoint
from rass.modeling.sam2 import Sam2ImageModel, Sam2ImageTransform, box_points, build_sam2

from .promptable_sam import pick_best_mask, resize_mask_logits

__all__ = ["PromptableSAM2"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PromptableSAM2(nn.Module):
    """Plain SAM2 (`Sam2ImageModel`) answering point / box prompts.

    Args:
        sam2: the SAM2 image model (weights already loaded).
        transform: SAM2's preprocessing (its target must be the model's input side).
        multimask_output: decode the multimask outputs and return the best-scored one (False: one mask).
        mask_threshold: logit threshold of the binary masks.
        return_intermediates: add "intermediates" to every output (see the module doc).
    """

    @configurable
    def __init__(self, *, sam2: Sam2ImageModel, transform: Sam2ImageTransform, multimask_output: bool = False,
                 mask_threshold: float = 0.0, return_intermediates: bool = False) -> None:
        super().__init__()
        if transform.target != sam2.image_size:
            raise ValueError(f"PromptableSAM2: the transform's size {transform.target} differs from the SAM2 model's "
                             f"input side {sam2.image_size}")
        self.sam2 = sam2
        self.transform = transform
        self.multimask_output = bool(multimask_output)
        self.mask_threshold = float(mask_threshold)
        self.return_intermediates = bool(return_intermediates)
        for p in self.sam2.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s = cfg.MODEL.SAM2
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        # A random SAM2 is seeded by one draw from torch's global RNG (the caller seeds or forks it); the draw
        # is made with a checkpoint too, so that the parts built next get the same values either way.
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        sam2 = build_sam2(s.VARIANT, s.IMAGE_SIZE, s.GLOBAL_ATTN_BLOCKS or None, s.FPN_INTERP,
                          s.NUM_MULTIMASK_OUTPUTS, s.OBJ_SCORE_HEAD, s.DYNAMIC_MULTIMASK,
                          device="meta" if meta else "cpu", generator=torch.Generator().manual_seed(init_seed))
        if s.CHECKPOINT and not meta:
            load_sam2_checkpoint(sam2, s.CHECKPOINT)
        elif s.CHECKPOINT:
            logger.info("meta device: SAM2 checkpoint %s not read (shapes only)", s.CHECKPOINT)
        elif not meta:
            logger.warning("MODEL.SAM2.CHECKPOINT is empty: SAM2 %s has RANDOM weights (fine for tests, not for "
                           "real use)", s.VARIANT)
        return {"sam2": sam2 if meta else sam2.to(torch.device(cfg.MODEL.DEVICE)),
                "transform": Sam2ImageTransform(cfg), "multimask_output": s.MULTIMASK_OUTPUT,
                "mask_threshold": s.MASK_THRESHOLD, "return_intermediates": s.RETURN_INTERMEDIATES}

    @property
    def device(self) -> torch.device:
        return self.sam2.no_memory_embedding.device

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        return {"sam2_image_encoder": ["sam2.image_encoder"], "sam2_prompt_encoder": ["sam2.prompt_encoder"],
                "sam2_mask_decoder": ["sam2.mask_decoder"]}

    def image_features(self, images: List[torch.Tensor]) -> Dict[str, object]:
        """SAM2's image features (`Sam2ImageModel.image_features`) of RGB images (uint8 or float 0..255, any size)."""
        pixels = torch.cat([self.transform(image.to(self.device)) for image in images])
        return self.sam2.image_features(pixels)

    def prompts(self, inp: Dict) -> Tuple[torch.Tensor, torch.Tensor]:
        """One input's prompts as SAM2's points in its input frame: ([P, N, 2] float, [P, N] long)."""
        name = inp.get("file_name", "input")
        coords, labels, boxes = inp.get("point_coords"), inp.get("point_labels"), inp.get("boxes")
        if coords is None and boxes is None:
            raise ValueError(f"{name}: no prompt (expected 'point_coords'/'point_labels' and/or 'boxes')")
        hw = tuple(int(v) for v in inp["image"].shape[-2:])
        parts_xy, parts_label = [], []
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32)
            if boxes.dim() != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"{name}: 'boxes' must be [P, 4] xyxy, got shape {tuple(boxes.shape)}")
            xy, lab = box_points(self.transform.apply_boxes(boxes, hw))
            parts_xy.append(xy)
            parts_label.append(lab)
        if coords is not None:
            if labels is None:
                raise ValueError(f"{name}: 'point_coords' without 'point_labels'")
            coords, labels = torch.as_tensor(coords), torch.as_tensor(labels)
            if coords.dim() != 3 or coords.shape[-1] != 2 or tuple(labels.shape) != tuple(coords.shape[:2]):
                raise ValueError(f"{name}: expected 'point_coords' [P, N, 2] and 'point_labels' [P, N], got "
                                 f"{tuple(coords.shape)} and {tuple(labels.shape)}")
            bad = ~((labels == 1) | (labels == 0) | (labels == -1))
            if bool(bad.any()):
                raise ValueError(f"{name}: 'point_labels' must be 1 (positive), 0 (negative) or -1 (padding), got "
                                 f"{sorted(set(labels[bad].tolist()))[:5]}")
            parts_xy.append(self.transform.apply_coords(coords, hw))
            parts_label.append(labels.to(torch.long))
        if len(parts_xy) == 2 and parts_xy[0].shape[0] != parts_xy[1].shape[0]:
            raise ValueError(f"{name}: points and boxes together need the same number of prompts P, got "
                             f"{parts_xy[1].shape[0]} and {parts_xy[0].shape[0]}")
        return torch.cat(parts_xy, dim=1), torch.cat(parts_label, dim=1)

    def decode(self, inp: Dict, features: Dict[str, object], return_intermediates: bool = False) -> Dict:
        """The masks of one input's prompts from its image features (see the module doc for the dict keys).

        Args:
            inp: one input dict (its "image" gives the prompts' frame: only its size is read).
            features: `image_features` of that one image.
            return_intermediates: add "intermediates".

        Returns:
            {"mask_logits": P x H x W, "masks": P x H x W bool, "iou_pred": P}.
        """
        h, w = (int(v) for v in inp["image"].shape[-2:])
        out_hw = (int(inp.get("height", h)), int(inp.get("width", w)))
        coords, labels = self.prompts(inp)
        low_res, iou, object_score = self.sam2.predict(features, coords[None].to(self.device),
                                                       labels[None].to(self.device), self.multimask_output)
        all_low_res, all_iou = low_res[0], iou[0]  # P x M x S/4 x S/4, P x M
        best_low_res, best_iou, chosen = pick_best_mask(all_low_res, all_iou)
        logits = resize_mask_logits(best_low_res, out_hw)
        out: Dict = {"mask_logits": logits, "masks": logits > self.mask_threshold, "iou_pred": best_iou}
        if return_intermediates:
            out["intermediates"] = {"low_res_logits": all_low_res, "iou_predictions": all_iou, "chosen": chosen,
                                    "object_score_logits": object_score[0, :, 0]}
        return out

    def forward(self, batched_inputs: List[Dict], return_intermediates: Optional[bool] = None) -> List[Dict]:
        """Masks for the prompts of each image (see the module doc).

        Args:
            batched_inputs: the input dicts.
            return_intermediates: add "intermediates"; None: MODEL.SAM2.RETURN_INTERMEDIATES.
        """
        if self.training:
            raise NotImplementedError("PromptableSAM2 is inference only: call model.eval()")
        want = self.return_intermediates if return_intermediates is None else bool(return_intermediates)
        with torch.no_grad():
            features = self.image_features([x["image"] for x in batched_inputs])
            outs = []
            for i, inp in enumerate(batched_inputs):
                one = {"image_embed": features["image_embed"][i:i + 1],
                       "high_res_feats": [f[i:i + 1] for f in features["high_res_feats"]]}
                outs.append(self.decode(inp, one, return_intermediates=want))
            return outs
