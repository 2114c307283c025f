"""Promptable segmentation with SAM, optionally with GleSAM's generative latent enhancement.

Registered as META_ARCHITECTURE "PromptableSAM". One model for both methods, so that SAM and
GleSAM are compared by the same code on the same prompts:
  1. SAM preprocessing (`SamImageTransform`: longest side to MODEL.SAM.IMAGE_SIZE, bilinear with
     antialias, SAM mean/std, zero padding);
  2. SAM's image encoder -> z_L (B x 256 x 64 x 64), frozen;
  3. MODEL.GLESAM.ENHANCE: one pass of the CRE UNet (`LatentEnhancer`) -> ẑ_H; else z_L as is;
  4. SAM's prompt encoder + mask decoder per image, with that image's prompts (points, boxes or
     both), single- or multi-mask output (MODEL.SAM.MULTIMASK_OUTPUT; with several masks the one of
     highest predicted IoU is returned, SAM's convention);
  5. mask logits back to the output size (the dataset dict's height/width, e.g. the GT mask's size):
     when SAM's input is square and unpadded (GleSAM's 512x512 inputs) the 256x256 decoder logits
     are resized bilinearly straight to that size, as GleSAM's evaluation does; otherwise SAM's
     `postprocess_masks` (upsample, crop the padding, resize).

Input dicts (`rass.data.dataset_mappers.PromptableDatasetMapper`): "image" uint8 3 x h x w RGB,
"point_coords" [P, N, 2] (x, y) and "point_labels" [P, N] (1 positive, 0 negative, -1 padding)
and/or "boxes" [P, 4] xyxy, all in the image's pixel frame; optional "height", "width" (output
size, default the image's). Output per image: "mask_logits" [P, H, W] float, "masks" [P, H, W] bool
(logits > MODEL.SAM.MASK_THRESHOLD), "iou_pred" [P] (SAM's predicted IoU of the returned mask).
With MODEL.SAM.RETURN_INTERMEDIATES (or `forward(..., return_intermediates=True)`) each output also has
"intermediates", the tensors the outputs were computed from (see `decode` and `embedding_intermediates`):
"z_low" (z_L, SAM's embedding of the input image, 1 x 256 x h x w), "z_enhanced" (ẑ, GleSAM only),
"low_res_logits" [P, M, 4h, 4w] and "iou_predictions" [P, M] (the decoder's M = 3 or 1 masks), "chosen" [P]
(the index of the returned mask), "multimask_logits" [P, 3, 4h, 4w] and "multimask_iou" [P, 3] (SAM's three
multimask outputs, decoded once more when MULTIMASK_OUTPUT is off).

Training (MODEL.GLESAM.STAGE "denoise" = GleSAM's stage 1, "decoder" = stage 2; see
`glesam_training`): the input dicts of the "promptable" mapper (is_train=True) also carry "gt_mask";
the model degrades the clean "image" itself (INPUT.DEGRADATION, DEVICE "model"), runs SAM's frozen
encoder on both, and returns the stage's loss dict. STAGE "none" is inference only.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from rass.checkpoint.sam_loader import load_sam_checkpoint
from rass.data.degradation.online import derive_seed
from rass.modeling.enhancement import LatentEnhancer
from rass.modeling.sam import (
    SamImageTransform, build_sam, embedding_shape, sam_image_embeddings, sam_predict, sam_variant)
from rass.utils.errors import UserValueError

from .glesam_training import (
    STAGE1_LOSSES, STAGES, build_release_guidance, select_trainable, stage1_paper_loss, stage1_release_losses,
    stage2_loss)

__all__ = ["PromptableSAM", "resize_mask_logits", "pick_best_mask"]

logger = logging.getLogger(__name__)


def resize_mask_logits(low_res: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
    """Mask logits [..., h, w] bilinearly resized straight to [..., H, W] (float32; align_corners False): GleSAM's
    evaluation on square unpadded inputs, and SAM2's `postprocess_masks`."""
    lead = low_res.shape[:-2]
    x = F.interpolate(low_res.reshape(-1, 1, *low_res.shape[-2:]).float(), size=tuple(out_hw), mode="bilinear",
                      align_corners=False)
    return x.reshape(*lead, *out_hw)


def pick_best_mask(logits: torch.Tensor, iou: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per prompt, the mask of highest predicted IoU: logits [P, M, h, w], iou [P, M] -> ([P, h, w], [P], index [P])."""
    best = iou.argmax(dim=1)
    pick = torch.arange(logits.shape[0], device=logits.device)
    return logits[pick, best], iou[pick, best], best


@META_ARCH_REGISTRY.register()
class PromptableSAM(nn.Module):
    """SAM (transformers `SamModel`) with an optional GleSAM latent enhancer between encoder and decoder.

    Args:
        sam: the SAM model (weights already loaded).
        transform: SAM's pre/postprocessing.
        enhancer: GleSAM's `LatentEnhancer`, or None for plain SAM.
        multimask_output: decode SAM's 3 masks and return the best-scored one (False: mask token 0).
        mask_threshold: logit threshold of the binary masks.
        stage: "none" (inference only: every parameter frozen), "denoise" or "decoder" (GleSAM's
            training stages; they set which parameters train, see `glesam_training.select_trainable`).
        stage1_loss: "paper" (MSE) or "release" (MSE + DMD2 + GAN with `guidance`; see `glesam_training`).
        degradation: callable (list of unpadded 3 x H x W float 0..255 images) -> degraded list, making
            the LQ training images (required by the training stages).
        dice_weight, focal_weight: stage-2 loss weights.
        guidance: the release recipe's guidance model (`build_release_guidance`); required by it.
        gen_update_ratio: release recipe: the generator is updated every this many iterations.
        seed: base seed of the release recipe's random timesteps and noise (mixed with the rank).
        return_intermediates: add "intermediates" to every inference output (see the module doc).
    """

    @configurable
    def __init__(self, *, sam: nn.Module, transform: SamImageTransform, enhancer: Optional[LatentEnhancer] = None,
                 multimask_output: bool = False, mask_threshold: float = 0.0, stage: str = "none",
                 stage1_loss: str = "paper", degradation: Optional[Callable] = None, dice_weight: float = 1.0,
                 focal_weight: float = 1.0, guidance: Optional[nn.Module] = None, gen_update_ratio: int = 5,
                 seed: int = 0, return_intermediates: bool = False) -> None:
        super().__init__()
        channels = embedding_shape(sam)[0]
        if enhancer is not None and enhancer.channels != channels:
            raise UserValueError(f"MODEL.GLESAM.LATENT_CHANNELS is {enhancer.channels} but this SAM's image embedding "
                                 f"has {channels} channels")
        if transform.target != int(sam.config.vision_config.image_size):
            raise UserValueError(f"MODEL.SAM.IMAGE_SIZE {transform.target} differs from the SAM model's input side "
                                 f"{sam.config.vision_config.image_size}")
        self.sam = sam
        self.enhancer = enhancer
        self.transform = transform
        self.multimask_output = bool(multimask_output)
        self.mask_threshold = float(mask_threshold)
        if stage not in STAGES:
            raise UserValueError(f"MODEL.GLESAM.STAGE must be one of {STAGES}, got {stage!r}")
        if stage1_loss not in STAGE1_LOSSES:
            raise UserValueError(f"MODEL.GLESAM.STAGE1_LOSS must be one of {STAGE1_LOSSES}, got {stage1_loss!r}")
        if stage == "denoise" and stage1_loss == "release" and guidance is None:
            raise ValueError("MODEL.GLESAM.STAGE1_LOSS 'release' needs the guidance model (build_release_guidance)")
        if int(gen_update_ratio) < 1:
            raise UserValueError(f"MODEL.GLESAM.GEN_UPDATE_RATIO must be >= 1, got {gen_update_ratio}")
        if stage != "none" and degradation is None:
            raise UserValueError(f"MODEL.GLESAM.STAGE {stage!r} makes the low-quality training images on the model "
                                 "side: set INPUT.DEGRADATION.ENABLED True and INPUT.DEGRADATION.DEVICE 'model'")
        self.stage = stage
        self.stage1_loss = stage1_loss
        # DDP: in the release recipe the generator's LoRA gets no gradient on guidance-only iterations
        self.has_unused_parameters = stage == "denoise" and stage1_loss == "release"
        self.degradation = degradation
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        # every part frozen except the stage's trainable parameters (none for inference)
        self.trainable_names = select_trainable(sam, enhancer, stage)
        self.guidance = guidance if stage == "denoise" and stage1_loss == "release" else None
        if self.guidance is not None:
            self.trainable_names += [f"guidance.{n}" for n, p in self.guidance.named_parameters() if p.requires_grad]
        self.gen_update_ratio = int(gen_update_ratio)
        self.seed = int(seed)
        self.return_intermediates = bool(return_intermediates)
        self._rng: Optional[torch.Generator] = None
        self._calls = 0

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s = cfg.MODEL.SAM
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        device = torch.device("meta" if meta else "cpu")
        variant = sam_variant(s.VARIANT, s.EMBED_DIM, s.DEPTH, s.NUM_HEADS, s.GLOBAL_ATTN_INDEXES, s.WINDOW_SIZE)
        # A random SAM gets segment-anything's initialisation, seeded by one draw from torch's global RNG (the
        # caller seeds or forks it). The draw is made with a checkpoint too (whose strict load replaces every
        # tensor, so the init is skipped): the parts built next get the same random values either way.
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        sam = build_sam(variant, s.IMAGE_SIZE, device, init=not s.CHECKPOINT,
                        generator=torch.Generator().manual_seed(init_seed))
        if s.CHECKPOINT and not meta:
            report = load_sam_checkpoint(sam, s.CHECKPOINT, base_path=s.BASE_CHECKPOINT)
            logger.info("%s", report)
        elif s.CHECKPOINT:
            logger.info("meta device: SAM checkpoint %s not read (shapes only)", s.CHECKPOINT)
        elif not meta:
            logger.warning("MODEL.SAM.CHECKPOINT is empty: SAM %s has RANDOM weights (fine for tests, not for "
                           "real use)", s.VARIANT)
        enhancer = LatentEnhancer(cfg) if cfg.MODEL.GLESAM.ENHANCE else None
        model_device = torch.device(cfg.MODEL.DEVICE) if not meta else device
        g = cfg.MODEL.GLESAM
        degradation = None
        if g.STAGE != "none":
            from rass.data.degradation import model_side_degradation

            degradation = model_side_degradation(cfg)
        guidance = None
        if g.STAGE == "denoise" and g.STAGE1_LOSS == "release" and enhancer is not None:
            guidance = build_release_guidance(enhancer, embedding_shape(sam)[1])
            guidance = guidance.to(model_device) if not meta else guidance
        return {
            "sam": sam.to(model_device) if not meta else sam,
            "transform": SamImageTransform(cfg),
            "enhancer": enhancer.to(model_device) if enhancer is not None and not meta else enhancer,
            "multimask_output": s.MULTIMASK_OUTPUT,
            "mask_threshold": s.MASK_THRESHOLD,
            "stage": g.STAGE,
            "stage1_loss": g.STAGE1_LOSS,
            "degradation": degradation,
            "dice_weight": g.DICE_WEIGHT,
            "focal_weight": g.FOCAL_WEIGHT,
            "guidance": guidance,
            "gen_update_ratio": g.GEN_UPDATE_RATIO,
            "seed": cfg.SEED,
            "return_intermediates": s.RETURN_INTERMEDIATES,
        }

    @property
    def device(self) -> torch.device:
        return self.sam.mask_decoder.iou_token.weight.device

    def plain_sam(self) -> "PromptableSAM":
        """Plain SAM sharing this model's SAM (same weights, prompts and output rule; no enhancement),
        in eval mode, for comparing SAM and GleSAM."""
        return PromptableSAM(sam=self.sam, transform=self.transform, enhancer=None,
                             multimask_output=self.multimask_output, mask_threshold=self.mask_threshold,
                             return_intermediates=self.return_intermediates).eval()

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        parts = {"sam_image_encoder": ["sam.vision_encoder"], "sam_prompt_encoder": ["sam.prompt_encoder"],
                 "sam_mask_decoder": ["sam.mask_decoder"]}
        if self.enhancer is not None:
            parts["gle_unet"] = ["enhancer.unet"]
        if self.guidance is not None:
            parts["gle_guidance"] = ["guidance"]
        return parts

    # ---------------------------------------------------------------- forward
    def encode(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """SAM image embeddings z (not enhanced) of RGB images (uint8 or float, 0..255).

        Args:
            images: 3 x h x w tensors (any sizes).

        Returns:
            (B x 256 x 64 x 64 embeddings, the resized (unpadded) size of each image in SAM's frame).
        """
        pixels, valid = [], []
        for image in images:
            x, hw = self.transform(image.to(self.device))
            pixels.append(x)
            valid.append(hw)
        return sam_image_embeddings(self.sam, torch.cat(pixels)), valid

    def image_embeddings(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, List[Tuple[int, int]]]:
        """SAM image embeddings (enhanced with MODEL.GLESAM.ENHANCE) of uint8 RGB images.

        Args:
            images: 3 x h x w tensors (any sizes).

        Returns:
            (B x 256 x 64 x 64 embeddings, the resized (unpadded) size of each image in SAM's frame).
        """
        z, valid = self.encode(images)
        if self.enhancer is not None:
            z = self.enhancer(z)
        return z, valid

    def _prompts(self, inp: Dict, hw: Tuple[int, int]) -> Dict[str, Optional[torch.Tensor]]:
        coords, labels, boxes = inp.get("point_coords"), inp.get("point_labels"), inp.get("boxes")
        if coords is None and boxes is None:
            raise ValueError(f"{inp.get('file_name', 'input')}: no prompt (expected 'point_coords'/'point_labels' "
                             f"and/or 'boxes')")
        out: Dict[str, Optional[torch.Tensor]] = {"point_coords": None, "point_labels": None, "boxes": None}
        if coords is not None:
            if labels is None:
                raise ValueError(f"{inp.get('file_name', 'input')}: 'point_coords' without 'point_labels'")
            out["point_coords"] = self.transform.apply_coords(torch.as_tensor(coords), hw)[None]
            out["point_labels"] = torch.as_tensor(labels)[None]
        if boxes is not None:
            out["boxes"] = self.transform.apply_boxes(torch.as_tensor(boxes), hw)[None]
        return out

    def to_output_size(self, low_res: torch.Tensor, valid_hw: Tuple[int, int], out_hw: Tuple[int, int]) -> torch.Tensor:
        """Decoder logits [..., 256, 256] -> [..., H, W] (see the module doc for the rule)."""
        target = self.transform.target
        if tuple(valid_hw) == (target, target):
            return resize_mask_logits(low_res, out_hw)
        return self.transform.postprocess_masks(low_res, valid_hw, out_hw)

    def _iteration(self) -> int:
        """The trainer's iteration (restored on resume); outside a trainer, the number of training calls."""
        try:
            return int(get_event_storage().iter)
        except AssertionError:  # no EventStorage: called outside a trainer
            self._calls += 1
            return self._calls - 1

    def _release_rng(self) -> torch.Generator:
        if self._rng is None:
            self._rng = torch.Generator(self.device).manual_seed(derive_seed("glesam-dmd", self.seed, comm.get_rank()))
        return self._rng

    def training_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """The loss dict of MODEL.GLESAM.STAGE on a batch of the "promptable" mapper (is_train=True).

        Args:
            batched_inputs: dicts with "image" (clean, uint8 3 x h x w) and, for "decoder", "gt_mask"
                (bool H x W) and the prompts.

        Returns:
            "denoise": {"loss_mse"} ("paper") or the release recipe's terms (`stage1_release_losses`);
            "decoder": {"loss_dice", "loss_focal"} (weighted).
        """
        clean = [x["image"].to(self.device, torch.float32) for x in batched_inputs]
        low = self.degradation(clean)
        if self.stage == "denoise":
            with torch.no_grad():  # SAM is frozen: z_H (clean) and z_L (degraded) in one encoder pass
                z, _ = self.encode(clean + low)
            if self.guidance is None:
                return stage1_paper_loss(self.enhancer, z[len(clean):], z[:len(clean)])
            return stage1_release_losses(self.enhancer, self.guidance, z[len(clean):], z[:len(clean)],
                                         self._iteration() % self.gen_update_ratio == 0, self._release_rng())
        with torch.no_grad():
            z, valid = self.image_embeddings(low)  # enhanced (UNet + LoRA frozen) when ENHANCE
        logits, masks = [], []
        for i, inp in enumerate(batched_inputs):
            if "gt_mask" not in inp:
                raise KeyError(f"{inp.get('file_name', 'input')}: stage 'decoder' needs 'gt_mask' (the promptable "
                               f"mapper with is_train=True gives it); got keys {sorted(inp)}")
            hw = tuple(int(v) for v in inp["image"].shape[-2:])
            low_res, _ = sam_predict(self.sam, z[i:i + 1], multimask_output=False, **self._prompts(inp, hw))
            logits.append(self.to_output_size(low_res[0, :, 0], valid[i], hw))  # P x h x w
            masks.append(inp["gt_mask"].to(self.device))
        return stage2_loss(logits, masks, self.dice_weight, self.focal_weight)

    def forward(self, batched_inputs: List[Dict], return_intermediates: Optional[bool] = None) -> List[Dict]:
        """Masks for the prompts of each image (see the module doc for the dict keys); in training mode
        the loss dict of MODEL.GLESAM.STAGE (`training_losses`).

        Args:
            batched_inputs: the input dicts (see the module doc).
            return_intermediates: add "intermediates" to each output; None: MODEL.SAM.RETURN_INTERMEDIATES.
        """
        if self.training:
            if self.stage == "none":
                raise NotImplementedError("PromptableSAM with MODEL.GLESAM.STAGE 'none' is inference only: call "
                                          "model.eval() for predictions, or set MODEL.GLESAM.STAGE to 'denoise' "
                                          "(stage 1) or 'decoder' (stage 2) to train")
            return self.training_losses(batched_inputs)
        want = self.return_intermediates if return_intermediates is None else bool(return_intermediates)
        with torch.no_grad():
            z_low, valid = self.encode([x["image"] for x in batched_inputs])
            z = self.enhancer(z_low) if self.enhancer is not None else z_low
            outs = []
            for i, inp in enumerate(batched_inputs):
                out = self.decode(inp, z[i:i + 1], valid[i], return_intermediates=want)
                if want:
                    out["intermediates"].update(self.embedding_intermediates(z_low[i:i + 1], z[i:i + 1]))
                outs.append(out)
            return outs

    def embedding_intermediates(self, z_low: torch.Tensor, z: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"z_low": z_L} and, with the enhancement, {"z_enhanced": ẑ} (the embedding that was decoded)."""
        return {"z_low": z_low} if self.enhancer is None else {"z_low": z_low, "z_enhanced": z}

    def decode(self, inp: Dict, embedding: torch.Tensor, valid_hw: Tuple[int, int],
               return_intermediates: bool = False) -> Dict:
        """The masks of one input's prompts from its image embedding (the second half of `forward`,
        so that an interactive caller can embed an image once and decode many prompts).

        Args:
            inp: one input dict of `forward` (its "image" gives the prompts' frame: only its size is read).
            embedding: 1 x 256 x 64 x 64, from `image_embeddings` of that image.
            valid_hw: the image's resized size in SAM's frame (from `image_embeddings`).
            return_intermediates: add "intermediates": the decoder's "low_res_logits" [P, M, 4h, 4w] and
                "iou_predictions" [P, M] the returned mask was picked from (M = 3 with MULTIMASK_OUTPUT, else
                1), "chosen" [P] (its index), and SAM's three multimask outputs "multimask_logits"
                [P, 3, 4h, 4w] with "multimask_iou" [P, 3] (the same tensors with MULTIMASK_OUTPUT).

        Returns:
            {"mask_logits": P x H x W, "masks": P x H x W bool, "iou_pred": P}, P prompts per image.
        """
        h, w = (int(v) for v in inp["image"].shape[-2:])
        out_hw = (int(inp.get("height", h)), int(inp.get("width", w)))
        prompts = self._prompts(inp, (h, w))
        all_low_res, all_iou = sam_predict(self.sam, embedding, multimask_output=self.multimask_output, **prompts)
        all_low_res, all_iou = all_low_res[0], all_iou[0]  # P x M x 256 x 256, P x M
        low_res, iou, best = pick_best_mask(all_low_res, all_iou)
        logits = self.to_output_size(low_res, valid_hw, out_hw)
        out: Dict = {"mask_logits": logits, "masks": logits > self.mask_threshold, "iou_pred": iou}
        if return_intermediates:
            if self.multimask_output:
                multi, multi_iou = all_low_res, all_iou
            else:
                multi, multi_iou = (t[0] for t in sam_predict(self.sam, embedding, multimask_output=True, **prompts))
            out["intermediates"] = {"low_res_logits": all_low_res, "iou_predictions": all_iou, "chosen": best,
                                    "multimask_logits": multi, "multimask_iou": multi_iou}
        return out
