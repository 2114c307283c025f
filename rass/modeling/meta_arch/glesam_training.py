"""GleSAM's two training stages on `PromptableSAM` (MODEL.GLESAM.STAGE), as functions of the model's parts.

Both stages degrade the clean training image on the model side (INPUT.DEGRADATION, DEVICE "model")
and run SAM's frozen image encoder under `no_grad` (clean image: z_H; degraded image: z_L).

- "denoise" (stage 1): trainable = the CRE UNet's LoRA only (SAM, base UNet, text embedding frozen).
  `paper` loss (MODEL.GLESAM.STAGE1_LOSS): L = MSE(x0, γ·z_H) with x0 = γ·ẑ_H the one-step estimate of
  the UNet on γ·z_L (`LatentEnhancer`; = γ²·MSE(ẑ_H, z_H), the release's `loss_mse`).
  `release` recipe: the generator (that LoRA) gets L_G = MSE + 1.0·L_dm + 5e-3·L_gen_cls every
  GEN_UPDATE_RATIO-th iteration; the guidance model (`DistributionMatchingLoss`: a "fake" copy of the
  CRE UNet with its own fresh LoRA + the classifier head; the "real" UNet = the fake one with its
  adapter off, i.e. the base weights) gets its loss every iteration. One optimiser holds both
  parameter sets: each loss reaches only its own set, and on guidance-only iterations the
  generator's gradients are None, so the optimiser leaves the generator as it is.
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

import copy
from typing import Dict, List, Optional, Sequence

import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from rass.modeling.enhancement.dmd import DistributionMatchingLoss
from rass.modeling.enhancement.lora import GLESAM_ADAPTER
from rass.modeling.enhancement.losses import reconstruction_loss, release_mask_target, segmentation_loss
from rass.utils.errors import UserValueError

__all__ = ["STAGES", "STAGE1_LOSSES", "select_trainable", "stage1_paper_loss", "stage2_loss",
           "build_release_guidance", "stage1_release_losses"]

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
        raise UserValueError(f"MODEL.GLESAM.STAGE must be one of {STAGES}, got {stage!r}")
    sam.requires_grad_(False)
    if enhancer is not None:
        enhancer.requires_grad_(False)
    names: List[str] = []
    if stage == "denoise":
        if enhancer is None:
            raise UserValueError("MODEL.GLESAM.STAGE 'denoise' trains the CRE UNet's LoRA: it needs "
                                 "MODEL.GLESAM.ENHANCE True")
        for n, p in enhancer.unet.named_parameters():
            if _is_lora(n):
                p.requires_grad_(True)
                names.append(f"enhancer.unet.{n}")
        if not names:
            raise UserValueError("MODEL.GLESAM.STAGE 'denoise': the CRE UNet has no LoRA parameters to train")
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


def build_release_guidance(enhancer: nn.Module, latent_size: int) -> DistributionMatchingLoss:
    """The guidance model of the release recipe for `enhancer`'s CRE UNet (trainable: fake LoRA + head).

    The fake UNet is a copy of the generator's UNet (same base weights) whose LoRA is re-initialised
    (peft's default: A Kaiming-uniform, B = 0), as the release builds it from the pretrained UNet.

    Args:
        enhancer: the `LatentEnhancer` (its UNet carries the generator's LoRA).
        latent_size: side of SAM's image embedding (64 at 1024 px).
    """
    fake = copy.deepcopy(enhancer.unet)
    for m in fake.modules():
        if isinstance(m, LoraLayer) and GLESAM_ADAPTER in m.lora_A:
            m.reset_lora_parameters(GLESAM_ADAPTER, True)
    guidance = DistributionMatchingLoss(fake, enhancer.alphas_cumprod, real_unet=None, latent_size=int(latent_size))
    guidance.requires_grad_(False)
    for n, p in guidance.named_parameters():
        if n.startswith("head.") or _is_lora(n):
            p.requires_grad_(True)
    return guidance


def stage1_release_losses(enhancer: nn.Module, guidance: DistributionMatchingLoss, z_low: torch.Tensor,
                          z_high: torch.Tensor, generator_turn: bool,
                          rng: torch.Generator) -> Dict[str, torch.Tensor]:
    """One iteration of the release recipe: the guidance loss, plus the generator loss on its turns.

    Args:
        enhancer: the `LatentEnhancer` (generator).
        guidance: `build_release_guidance(enhancer, ...)`.
        z_low, z_high: SAM embeddings of the degraded / clean images (B x C x h x w, no gradient).
        generator_turn: also compute (and backpropagate) the generator's L_G.
        rng: torch.Generator of the random timesteps and noise.

    Returns:
        Weighted terms (detectron2 sums them): "loss_fake_mean", "loss_guidance_cls" every iteration;
        "loss_mse", "loss_dm", "loss_gen_cls" on generator turns.
    """
    gamma = enhancer.feat_weight
    context = enhancer.text_embedding
    if generator_turn:
        x0 = enhancer(z_low).float() * gamma
    else:
        with torch.no_grad():
            x0 = enhancer(z_low).float() * gamma
    out: Dict[str, torch.Tensor] = {}
    if generator_turn:
        g = guidance.generator_loss(x0, z_high, gamma, context, rng)
        out.update(loss_mse=g["loss_mse"], loss_dm=guidance.dm_weight * g["loss_dm"],
                   loss_gen_cls=guidance.gen_cls_weight * g["loss_gen_cls"])
    d = guidance.guidance_loss(x0, z_high, gamma, context, rng)
    out.update(loss_fake_mean=d["loss_fake_mean"], loss_guidance_cls=guidance.guidance_cls_weight * d["loss_guidance_cls"])
    return out
