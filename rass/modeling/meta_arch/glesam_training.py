"""GleSAM's two training stages on `PromptableSAM` (MODEL.GLESAM.STAGE), as functions of the model's parts.

Both stages degrade the clean training image on the model side (INPUT.DEGRADATION, DEVICE "model")
and run SAM's frozen image encoder under `no_grad` (clean image: z_H; degraded image: z_L).

- "denoise" (stage 1): trainable = the CRE UNet's LoRA only (SAM, base UNet, text embedding frozen).
  `paper` loss (MODEL.GLESAM.STAGE1_LOSS): L = MSE(x0, γ·z_H) with x0 = γ·ẑ_H the one-step estimate of
  the UNet on γ·z_L (`LatentEnhancer`; = γ²·MSE(ẑ_H, z_H), the release's `loss_mse`).
- "decoder" (stage 2): UNet + LoRA frozen (`no_grad`); trainable = SAM's mask decoder except the IoU
  token and head (segment-anything names without "iou": 3,925,472 values for SAM ViT-B/L/H).
  L = DICE_WEIGHT·Dice + FOCAL_WEIGHT·Focal on the single-mask logits (mask token 0, as released),
  resized to the image frame like the evaluation (`PromptableSAM.to_output_size`), against the GT
  mask resized bilinearly to that frame (a soft target, as the release's 512x512 bilinear mask);
  every image of the batch has its own prompts (the release supports one image per GPU only).

The loss forms are `rass.modeling.enhancement.losses` (Dice/Focal of the release's `utils/loss.py`,
its soft 0..1 target, the reconstruction MSE).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from rass.modeling.enhancement.losses import reconstruction_loss, release_mask_target, segmentation_loss

__all__ = ["STAGES", "STAGE1_LOSSES", "select_trainable", "stage1_paper_loss", "stage2_loss"]

STAGES = ("none", "denoise", "decoder")
STAGE1_LOSSES = ("paper", "release")


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def select_trainable(sam: nn.Module, enhancer: Optional[nn.Module], stage: str) -> List[str]:
    """Freeze everything, then make the parameters of `stage` trainable.

    Args:
        sam: the `SamModel`.
        enhancer: the `LatentEnhancer` (None: plain SAM; not allowed for "denoise").
        stage: one of `STAGES` ("none": everything stays frozen).

    Returns:
        The names (relative to the model: "sam.*", "enhancer.*") of the trainable parameters.
    """
    if stage not in STAGES:
        raise ValueError(f"MODEL.GLESAM.STAGE must be one of {STAGES}, got {stage!r}")
    sam.requires_grad_(False)
    if enhancer is not None:
        enhancer.requires_grad_(False)
    names: List[str] = []
    if stage == "denoise":
        if enhancer is None:
            raise ValueError("MODEL.GLESAM.STAGE 'denoise' trains the CRE UNet's LoRA: it needs MODEL.GLESAM.ENHANCE True")
        for n, p in enhancer.unet.named_parameters():
            if _is_lora(n):
                p.requires_grad_(True)
                names.append(f"enhancer.unet.{n}")
        if not names:
            raise ValueError("MODEL.GLESAM.STAGE 'denoise': the CRE UNet has no LoRA parameters to train")
    elif stage == "decoder":
        for n, p in sam.mask_decoder.named_parameters():
            if "iou" not in n:  # the release's rule (sam_joint.py): the IoU token and head stay frozen
                p.requires_grad_(True)
                names.append(f"sam.mask_decoder.{n}")
    return names


def stage1_paper_loss(enhancer: nn.Module, z_low: torch.Tensor, z_high: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The paper's stage-1 loss MSE(x0, γ·z_H), x0 = γ·ẑ_H (gradients reach the enhancer's LoRA).

    Args:
        enhancer: the `LatentEnhancer` (its `feat_weight` is γ).
        z_low: SAM embeddings of the degraded images, B x C x h x w.
        z_high: SAM embeddings of the clean images, same shape.
    """
    x0 = enhancer(z_low).float() * enhancer.feat_weight
    return {"loss_mse": reconstruction_loss(x0, z_high, enhancer.feat_weight)}


def stage2_loss(logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], dice_weight: float = 1.0,
                focal_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """Dice + Focal of each image's mask logits against its GT mask, averaged over the images.

    With images of one size this equals the loss of the whole batch at once (Dice is a mean over
    masks, Focal a mean over pixels).

    Args:
        logits: per image, P x h x w mask logits in the image frame (P prompts of that image's object).
        masks: per image, the H x W bool GT mask (resized bilinearly to h x w: a soft target).
        dice_weight: weight of the Dice term.
        focal_weight: weight of the Focal term.

    Returns:
        {"loss_dice", "loss_focal"} (weighted; detectron2 sums the dict).
    """
    if len(logits) != len(masks) or not logits:
        raise ValueError(f"stage-2 loss: {len(logits)} logits for {len(masks)} masks (expected one per image, >= 1)")
    dice, focal = [], []
    for lg, m in zip(logits, masks):
        target = release_mask_target(m, tuple(lg.shape[-2:])).expand(lg.shape[0], 1, *lg.shape[-2:])
        out = segmentation_loss(lg[:, None], target, dice_weight, focal_weight)
        dice.append(out["loss_dice"])
        focal.append(out["loss_focal"])
    return {"loss_dice": torch.stack(dice).mean(), "loss_focal": torch.stack(focal).mean()}
