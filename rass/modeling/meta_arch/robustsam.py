"""RobustSAM (CVPR 2024) as a promptable model next to SAM and GleSAM (META_ARCHITECTURE "RobustSAM").

A `PromptableSAM` (same preprocessing, prompts, output sizes, input and output dicts, evaluator) whose
decoder is RobustSAM's (`rass.modeling.robustsam`): SAM's image encoder also hands over the output of its
first global-attention block (a forward hook), and every prompt is decoded on the robust path
(robust output token, AOTG, AMFG features), all prompts of an image in one forward, each exactly as
alone (the release decodes one prompt per forward). Output: mask 0 of the release's 16-mask layout
(MODEL.SAM.MULTIMASK_OUTPUT: masks 1-3 with the IoU head's scores 1-3, the best one returned; the release
would return 15 masks for 3 scores there). "iou_pred" is SAM's IoU head on the robust tokens' pass.

Weights: MODEL.ROBUSTSAM.CHECKPOINT (a released `robustsam_checkpoint_{b,l,h}.pth`, strict), or
MODEL.SAM.CHECKPOINT (plain SAM) with random robust modules (for training; logged as such).

Training (MODEL.ROBUSTSAM.TRAIN, the release's `engine.py`): the "promptable" mapper's clean image and a
degraded copy made on the model side (INPUT.DEGRADATION, DEVICE "model"); SAM's image and prompt encoders
frozen (`no_grad`); trainable = SAM's whole mask decoder + the robust modules. Per image, the clean copy
runs the clear (teacher) path, the degraded copy the robust path:
    L = FOCAL_WEIGHT·Focal + DICE_WEIGHT·Dice (robust single mask vs GT, at the image's size)
        + TOKEN_WEIGHT·MSE(robust tokens, clear mask tokens) + EMBEDDING_WEIGHT·MSE(robust features, clear ones)
(20, 1, 2, 100 as released; the teacher is not detached, as released). NaN gradients are zeroed
(MODEL.ROBUSTSAM.ZERO_NAN_GRADS), clipping and Adam are SOLVER keys (configs/lqseg/robustsam_*.yaml).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from rass.checkpoint.robustsam_loader import load_robustsam_checkpoint
from rass.checkpoint.sam_loader import load_sam_checkpoint
from rass.modeling.enhancement.losses import release_dice_loss, release_focal_loss, release_mask_target
from rass.modeling.robustsam import RobustDecoderAdditions, prompt_embeddings, robust_decode
from rass.modeling.sam import SamImageTransform, build_sam, sam_variant
from rass.utils.errors import UserValueError

from .early_features import EarlyFeaturePrompting
from .promptable_sam import PromptableSAM, pick_best_mask

__all__ = ["RobustSAM", "LOSS_TERMS", "RELEASE_LOSS_WEIGHTS"]

logger = logging.getLogger(__name__)

# Loss terms (dict keys) and their MODEL.ROBUSTSAM weight keys.
LOSS_TERMS = {"loss_focal": "FOCAL_WEIGHT", "loss_dice": "DICE_WEIGHT", "loss_token": "TOKEN_WEIGHT",
              "loss_embedding": "EMBEDDING_WEIGHT"}
# The release's weights (`engine.py`).
RELEASE_LOSS_WEIGHTS = {"loss_focal": 20.0, "loss_dice": 1.0, "loss_token": 2.0, "loss_embedding": 100.0}


def _zero_nan(grad: torch.Tensor) -> torch.Tensor:
    """The release's gradient rule: NaN entries set to 0 (a module-level function: hooks stay picklable)."""
    return torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)


@META_ARCH_REGISTRY.register()
class RobustSAM(EarlyFeaturePrompting, PromptableSAM):
    """SAM with RobustSAM's decoder additions (see the module doc).

    Args:
        sam: the SAM model.
        transform: SAM's pre/postprocessing.
        robust: the added decoder modules (`RobustDecoderAdditions`, the ViT width of `sam`).
        multimask_output: decode masks 1-3 of the robust layout and return the best-scored one (False: mask 0).
        mask_threshold: logit threshold of the binary masks.
        train: train with the release's losses (False: inference only, every parameter frozen).
        degradation: callable (list of 3 x H x W float 0..255 images) -> degraded list; required to train.
        loss_weights: weight of each term of `LOSS_TERMS` (keys "loss_focal", ...; a term left out keeps the
            release's weight, `RELEASE_LOSS_WEIGHTS`).
        zero_nan_grads: set NaN gradient entries to 0 (training; the release does).
        return_intermediates: add "intermediates" to every inference output (see `decode_robust`).
    """

    @configurable
    def __init__(self, *, sam: nn.Module, transform: SamImageTransform, robust: RobustDecoderAdditions,
                 multimask_output: bool = False, mask_threshold: float = 0.0, train: bool = False,
                 degradation=None, loss_weights: Optional[Dict[str, float]] = None, zero_nan_grads: bool = True,
                 return_intermediates: bool = False) -> None:
        super().__init__(sam=sam, transform=transform, enhancer=None, multimask_output=multimask_output,
                         mask_threshold=mask_threshold, return_intermediates=return_intermediates)
        glob = list(sam.config.vision_config.global_attn_indexes)
        if not glob:
            raise UserValueError("RobustSAM reads the first global-attention block of SAM's encoder, but "
                                 "MODEL.SAM.GLOBAL_ATTN_INDEXES is empty")
        width = int(sam.config.vision_config.hidden_size)
        in_ch = robust.fourier_first_layer_features.upsample_layer[0].in_channels
        if in_ch != width:
            raise UserValueError(f"RobustSAM modules built for a ViT width of {in_ch}, SAM's is {width}")
        if train and degradation is None:
            raise UserValueError("MODEL.ROBUSTSAM.TRAIN makes the degraded training copies on the model side: set "
                                 "INPUT.DEGRADATION.ENABLED True and INPUT.DEGRADATION.DEVICE 'model'")
        self.robust = robust
        self.early_block = int(glob[0])
        self.train_robust = bool(train)
        self.degradation = degradation
        weights = dict(loss_weights or {})
        unknown = sorted(set(weights) - set(LOSS_TERMS))
        if unknown:
            raise ValueError(f"RobustSAM loss_weights: unknown terms {unknown}; expected {sorted(LOSS_TERMS)}")
        self.loss_weights = {k: float(weights.get(k, RELEASE_LOSS_WEIGHTS[k])) for k in LOSS_TERMS}
        robust.requires_grad_(False)
        self.trainable_names: List[str] = []
        if self.train_robust:  # as released: every decoder parameter is in the optimiser
            for prefix, module in (("sam.mask_decoder", sam.mask_decoder), ("robust", robust)):
                for n, p in module.named_parameters():
                    p.requires_grad_(True)
                    self.trainable_names.append(f"{prefix}.{n}")
        self.zero_nan_grads = bool(zero_nan_grads)
        self._hooked_for: Optional[int] = None
        self._ensure_nan_hooks()
        # DDP: the IoU head and SAM's hypernetwork MLPs get no gradient from these losses
        self.has_unused_parameters = self.train_robust

    def _ensure_nan_hooks(self) -> None:
        """Gradient hooks zeroing NaN entries of the trainable parameters (once per model object: a deep copy
        does not carry tensor hooks, so it registers its own on its first training call)."""
        if not (self.train_robust and self.zero_nan_grads) or self._hooked_for == id(self):
            return
        for p in self.parameters():
            if p.requires_grad:
                p.register_hook(_zero_nan)
        self._hooked_for = id(self)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s, r = cfg.MODEL.SAM, cfg.MODEL.ROBUSTSAM
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        device = torch.device("meta" if meta else "cpu")
        if r.CHECKPOINT and s.CHECKPOINT:
            raise UserValueError(f"MODEL.ROBUSTSAM.CHECKPOINT {r.CHECKPOINT!r} already holds SAM's weights: leave "
                                 f"MODEL.SAM.CHECKPOINT ({s.CHECKPOINT!r}) empty")
        variant = sam_variant(s.VARIANT, s.EMBED_DIM, s.DEPTH, s.NUM_HEADS, s.GLOBAL_ATTN_INDEXES, s.WINDOW_SIZE)
        # one draw from torch's global RNG seeds both random inits (the caller seeds or forks it)
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        has_file = bool(r.CHECKPOINT or s.CHECKPOINT)
        sam = build_sam(variant, s.IMAGE_SIZE, device, init=not has_file,
                        generator=torch.Generator().manual_seed(init_seed))
        with torch.device(device):
            robust = RobustDecoderAdditions(variant.embed_dim, int(sam.config.mask_decoder_config.hidden_size))
        if not meta:
            robust.init_weights(torch.Generator().manual_seed(init_seed + 1))
        if meta:
            logger.info("meta device: RobustSAM / SAM checkpoints not read (shapes only)")
        elif r.CHECKPOINT:
            load_robustsam_checkpoint(sam, robust, r.CHECKPOINT)
        elif s.CHECKPOINT:
            load_sam_checkpoint(sam, s.CHECKPOINT, base_path=s.BASE_CHECKPOINT)
            logger.warning("RobustSAM: SAM weights from %s, the robust modules are RANDOM (train them, or set "
                           "MODEL.ROBUSTSAM.CHECKPOINT to a released robustsam_checkpoint_*.pth)", s.CHECKPOINT)
        else:
            logger.warning("MODEL.ROBUSTSAM.CHECKPOINT and MODEL.SAM.CHECKPOINT are empty: RobustSAM %s has RANDOM "
                           "weights (fine for tests, not for real use)", s.VARIANT)
        degradation = None
        if r.TRAIN:
            from rass.data.degradation import model_side_degradation

            degradation = model_side_degradation(cfg)
        model_device = torch.device(cfg.MODEL.DEVICE) if not meta else device
        return {
            "sam": sam.to(model_device) if not meta else sam,
            "transform": SamImageTransform(cfg),
            "robust": robust.to(model_device) if not meta else robust,
            "multimask_output": s.MULTIMASK_OUTPUT,
            "mask_threshold": s.MASK_THRESHOLD,
            "train": r.TRAIN,
            "degradation": degradation,
            "loss_weights": {k: getattr(r, key) for k, key in LOSS_TERMS.items()},
            "zero_nan_grads": r.ZERO_NAN_GRADS,
            "return_intermediates": s.RETURN_INTERMEDIATES,
        }

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        return {**super().analysis_parts(), "robust_modules": ["robust"]}

    # ---------------------------------------------------------------- forward
    def encode_robust(self, images: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, List[Tuple[int, int]]]:
        """SAM image embeddings and the first global block's output of RGB images (0..255).

        Args:
            images: 3 x h x w tensors (any sizes).

        Returns:
            (B x 256 x h' x w' embeddings, B x C_vit x h' x w' early features, each image's resized size).
        """
        seen: List[torch.Tensor] = []
        block = self.sam.vision_encoder.layers[self.early_block]
        handle = block.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            z, valid = self.encode(images)
        finally:
            handle.remove()
        return z, seen[-1].permute(0, 3, 1, 2), valid

    def decode_robust(self, inp: Dict, embedding: torch.Tensor, early: torch.Tensor, valid_hw: Tuple[int, int],
                      return_intermediates: bool = False) -> Dict:
        """The masks of one input's prompts (the second half of `forward`; an interactive caller embeds an
        image once with `encode_robust` and decodes many prompts).

        Args:
            inp: one input dict of `forward` (its "image" gives the prompts' frame: only its size is read).
            embedding: 1 x 256 x h' x w', early: 1 x C_vit x h' x w' (from `encode_robust` of that image).
            valid_hw: the image's resized size in SAM's frame.
            return_intermediates: add "intermediates": "robust_logits" [P, 16, 4h', 4w'] (the release's layout),
                "iou_predictions" [P, 4] and "chosen" [P] (index into the 16).

        Returns:
            {"mask_logits": P x H x W, "masks": P x H x W bool, "iou_pred": P}.
        """
        h, w = (int(v) for v in inp["image"].shape[-2:])
        out_hw = (int(inp.get("height", h)), int(inp.get("width", w)))
        sparse, dense, pe = prompt_embeddings(self.sam, **self._prompts(inp, (h, w)))
        dec = robust_decode(self.sam, self.robust, embedding, early, sparse, dense, pe, clear=False)
        if self.multimask_output:  # masks 1-3 (tokens 1-3, AOTG chunk 0) with the IoU head's scores 1-3
            low_res, iou, best = pick_best_mask(dec["masks"][:, 1:4], dec["iou"][:, 1:4])
            best = best + 1
        else:
            low_res, iou = dec["masks"][:, 0], dec["iou"][:, 0]
            best = torch.zeros(low_res.shape[0], dtype=torch.long, device=low_res.device)
        logits = self.to_output_size(low_res, valid_hw, out_hw)
        out: Dict = {"mask_logits": logits, "masks": logits > self.mask_threshold, "iou_pred": iou}
        if return_intermediates:
            out["intermediates"] = {"robust_logits": dec["masks"], "iou_predictions": dec["iou"], "chosen": best}
        return out

    # the encode / decode pair of `EarlyFeaturePrompting` (predictor, page, robustness matrix)
    method_label = "RobustSAM"
    encode_early = encode_robust
    decode_early = decode_robust

    def training_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """The release's four weighted loss terms (`LOSS_TERMS`) on a batch of the "promptable" mapper
        (is_train=True: "image" clean uint8, "gt_mask", prompts), averaged over the images."""
        self._ensure_nan_hooks()
        clean = [x["image"].to(self.device, torch.float32) for x in batched_inputs]
        low = self.degradation(clean)
        n = len(clean)
        with torch.no_grad():  # SAM's image encoder is frozen (clean and degraded copies in one pass)
            z, early, valid = self.encode_robust(clean + low)
        terms: Dict[str, List[torch.Tensor]] = {k: [] for k in LOSS_TERMS}
        for i, inp in enumerate(batched_inputs):
            if "gt_mask" not in inp:
                raise KeyError(f"{inp.get('file_name', 'input')}: RobustSAM training needs 'gt_mask' (the promptable "
                               f"mapper with is_train=True gives it); got keys {sorted(inp)}")
            hw = tuple(int(v) for v in inp["image"].shape[-2:])
            with torch.no_grad():  # the prompt encoder is frozen too
                sparse, dense, pe = prompt_embeddings(self.sam, **self._prompts(inp, hw))
            teacher = robust_decode(self.sam, self.robust, z[i:i + 1], early[i:i + 1], sparse, dense, pe, clear=True)
            student = robust_decode(self.sam, self.robust, z[n + i:n + i + 1], early[n + i:n + i + 1], sparse, dense,
                                    pe, clear=False)
            logits = self.transform.postprocess_masks(student["masks"][:, :1], valid[n + i], hw)  # P x 1 x h x w
            target = release_mask_target(inp["gt_mask"].to(self.device), hw).expand_as(logits)
            terms["loss_focal"].append(release_focal_loss(logits, target))
            terms["loss_dice"].append(release_dice_loss(logits, target))
            terms["loss_token"].append(F.mse_loss(student["robust_tokens"], teacher["robust_tokens"]))
            terms["loss_embedding"].append(F.mse_loss(student["robust_embeddings"], teacher["robust_embeddings"]))
        return {k: self.loss_weights[k] * torch.stack(v).mean() for k, v in terms.items()}

    def forward(self, batched_inputs: List[Dict], return_intermediates: Optional[bool] = None) -> List[Dict]:
        """Masks for the prompts of each image (dicts as `PromptableSAM`); in training mode the loss dict.

        Args:
            batched_inputs: the input dicts.
            return_intermediates: add "intermediates" (see `decode_robust`); None: MODEL.SAM.RETURN_INTERMEDIATES.
        """
        if self.training:
            if not self.train_robust:
                raise NotImplementedError("RobustSAM with MODEL.ROBUSTSAM.TRAIN False is inference only: call "
                                          "model.eval(), or set MODEL.ROBUSTSAM.TRAIN True to train")
            return self.training_losses(batched_inputs)
        want = self.return_intermediates if return_intermediates is None else bool(return_intermediates)
        with torch.no_grad():
            z, early, valid = self.encode_robust([x["image"] for x in batched_inputs])
            return [self.decode_robust(inp, z[i:i + 1], early[i:i + 1], valid[i], return_intermediates=want)
                    for i, inp in enumerate(batched_inputs)]
