"""Stable-SAM (arXiv 2311.15776) as a promptable model next to SAM and GleSAM (META_ARCHITECTURE "StableSAM").

A `PromptableSAM` (same preprocessing, prompts, output sizes, input/output dicts and evaluator; optional
GleSAM enhancement with MODEL.GLESAM.ENHANCE: enhanced features, then the plugged decoder) whose mask
decoder carries Stable-SAM's DSP + DRP plugins (`rass.modeling.stable_sam`), hooked into SAM's second
two-way block. SAM's weights are unchanged and frozen; `plain_sam()` shares the same SAM without the
plugins. With MODEL.SAM.RETURN_INTERMEDIATES the outputs' "intermediates" also hold "routing" [P, 2]
(α1 deformable, α2 regular grid of each prompt).

Weights: MODEL.SAM.CHECKPOINT (any SAM of the size), MODEL.GLESAM.* for the enhancer, and
MODEL.STABLE_SAM.PLUGIN_WEIGHTS (a plugin file of `tools/export_stable_sam.py`, for that SAM size).

Training (MODEL.STABLE_SAM.STAGE "rts"; `rass.modeling.stable_sam.rts`): only the plugins train; per
sample a low-quality prompt (noisy box or 1-3 points) is drawn from the GT mask on the model side (the
mapper's prompts are not used); loss = HQ-SAM's point-sampled BCE + Dice of the single-mask output.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from torch import nn

from rass.data.degradation.online import derive_seed
from rass.modeling.point_sampling import SeededPointGenerator
from rass.modeling.sam import SamImageTransform, embedding_shape, sam_predict
from rass.modeling.stable_sam import RtsPromptSampler, StableSamPlugins, load_plugin_file, rts_mask_loss
from rass.utils.errors import UserValueError

from .promptable_sam import PromptableSAM

__all__ = ["StableSAM", "STABLE_SAM_STAGES", "build_stable_sam_plugins"]

logger = logging.getLogger(__name__)

STABLE_SAM_STAGES = ("none", "rts")


def build_stable_sam_plugins(cfg, sam: nn.Module, generator: Optional[torch.Generator] = None) -> StableSamPlugins:
    """The plugins of MODEL.STABLE_SAM for `sam` (initialised; on `sam`'s device; not yet attached).

    Args:
        cfg: the project config.
        sam: the `SamModel` (its decoder width and embedding grid shape the plugins).
        generator: source of the random init (None: torch's global RNG).
    """
    s = cfg.MODEL.STABLE_SAM
    channels, grid, _ = embedding_shape(sam)
    device = sam.mask_decoder.iou_token.weight.device
    with torch.device(device):
        plugins = StableSamPlugins(channels, s.DSP_KERNEL_SIZE, s.DSP_AMPLITUDES, s.DRP_HIDDEN_DIM, grid)
    if device.type != "meta":
        plugins.reset_parameters(generator)
    fixed = list(s.FIXED_ROUTING)
    if fixed:
        if len(fixed) != 2 or any(not 0.0 <= float(v) <= 1.0 for v in fixed):
            raise UserValueError(f"MODEL.STABLE_SAM.FIXED_ROUTING must be [] or two weights in [0, 1], got {fixed}")
        plugins.fixed_routing = (float(fixed[0]), float(fixed[1]))
    return plugins


@META_ARCH_REGISTRY.register()
class StableSAM(PromptableSAM):
    """SAM (+ optional GleSAM enhancer) with Stable-SAM's plugins (see the module doc).

    Args:
        sam: the SAM model (weights loaded).
        transform: SAM's pre/postprocessing.
        plugins: `StableSamPlugins` of `sam`'s width (attached here).
        enhancer: GleSAM's `LatentEnhancer`, or None.
        multimask_output: decode SAM's 3 masks and return the best-scored one (False: mask token 0).
        mask_threshold: logit threshold of the binary masks.
        stage: "none" (inference only) or "rts" (train the plugins).
        sampler: the RTS prompt sampler (required by "rts").
        loss_weights: {"loss_mask": BCE weight, "loss_dice": Dice weight}.
        num_points, oversample_ratio, importance_sample_ratio: the point-sampled loss (HQ-SAM's).
        seed: base seed of the loss's random points.
        return_intermediates: add "intermediates" to every inference output.
    """

    @configurable
    def __init__(self, *, sam: nn.Module, transform: SamImageTransform, plugins: StableSamPlugins,
                 enhancer: Optional[nn.Module] = None, multimask_output: bool = False, mask_threshold: float = 0.0,
                 stage: str = "none", sampler: Optional[RtsPromptSampler] = None,
                 loss_weights: Optional[Dict[str, float]] = None, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75, seed: int = 0,
                 return_intermediates: bool = False) -> None:
        super().__init__(sam=sam, transform=transform, enhancer=enhancer, multimask_output=multimask_output,
                         mask_threshold=mask_threshold, return_intermediates=return_intermediates)
        if stage not in STABLE_SAM_STAGES:
            raise UserValueError(f"MODEL.STABLE_SAM.STAGE must be one of {STABLE_SAM_STAGES}, got {stage!r}")
        if stage == "rts" and sampler is None:
            raise ValueError("StableSAM stage 'rts' needs an RtsPromptSampler")
        if int(num_points) < 1:
            raise UserValueError(f"MODEL.STABLE_SAM.RTS.NUM_POINTS must be >= 1, got {num_points}")
        self.plugins = plugins
        plugins.attach(sam)
        self.rts_stage = stage
        self.sampler = sampler
        self.loss_weights = {"loss_mask": 1.0, "loss_dice": 1.0, **(loss_weights or {})}
        self.num_points, self.oversample_ratio = int(num_points), float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.seed = int(seed)
        plugins.requires_grad_(stage == "rts")  # SAM and the enhancer stay frozen (PromptableSAM, stage "none")
        self.trainable_names = [f"plugins.{n}" for n, p in plugins.named_parameters() if p.requires_grad]
        # DDP: with a fixed routing the DRP gets no gradient
        self.has_unused_parameters = stage == "rts" and plugins.fixed_routing is not None

    @classmethod
    def from_config(cls, cfg) -> Dict:
        if cfg.MODEL.GLESAM.STAGE != "none":
            raise UserValueError(f"META_ARCHITECTURE 'StableSAM' trains with MODEL.STABLE_SAM.STAGE 'rts'; "
                                 f"MODEL.GLESAM.STAGE must stay 'none', got {cfg.MODEL.GLESAM.STAGE!r}")
        base = PromptableSAM.from_config(cfg)  # SAM (+ enhancer), one draw of torch's global RNG
        sam = base["sam"]
        init_seed = int(torch.randint(0, 2**62, (), device="cpu"))
        plugins = build_stable_sam_plugins(cfg, sam, torch.Generator().manual_seed(init_seed))
        s = cfg.MODEL.STABLE_SAM
        if s.PLUGIN_WEIGHTS and plugins.dsp.input_proj.weight.device.type != "meta":
            meta = load_plugin_file(s.PLUGIN_WEIGHTS, plugins, sam)
            logger.info("Stable-SAM plugins from %s (trained on SAM %s)", s.PLUGIN_WEIGHTS, meta.get("sam_size"))
        elif s.STAGE == "none" and not s.PLUGIN_WEIGHTS:
            logger.warning("MODEL.STABLE_SAM.PLUGIN_WEIGHTS is empty: untrained plugins (their init gives SAM's "
                           "outputs exactly)")
        r = s.RTS
        sampler = RtsPromptSampler(r.BOX_PROB, r.BOX_NOISE_RANGE, r.NUM_POINTS_RANGE, cfg.SEED) if s.STAGE == "rts" \
            else None
        return {
            "sam": sam, "transform": base["transform"], "plugins": plugins, "enhancer": base["enhancer"],
            "multimask_output": base["multimask_output"], "mask_threshold": base["mask_threshold"],
            "stage": s.STAGE, "sampler": sampler,
            "loss_weights": {"loss_mask": r.BCE_WEIGHT, "loss_dice": r.DICE_WEIGHT},
            "num_points": r.NUM_POINTS, "oversample_ratio": r.OVERSAMPLE_RATIO,
            "importance_sample_ratio": r.IMPORTANCE_SAMPLE_RATIO, "seed": cfg.SEED,
            "return_intermediates": base["return_intermediates"],
        }

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (SAM's, the enhancer's, and the two plugins)."""
        parts = super().analysis_parts()
        parts.update({"stable_sam_dsp": ["plugins.dsp"], "stable_sam_drp": ["plugins.drp"]})
        return parts

    # ---------------------------------------------------------------- inference
    def forward(self, batched_inputs: List[Dict], return_intermediates: Optional[bool] = None) -> List[Dict]:
        """Masks for each image's prompts (PromptableSAM's dicts), decoded with the plugins; in training
        mode with STAGE "rts", the RTS loss dict (`training_losses`)."""
        if self.training:
            if self.rts_stage != "rts":
                raise NotImplementedError("StableSAM with MODEL.STABLE_SAM.STAGE 'none' is inference only: call "
                                          "model.eval(), or set MODEL.STABLE_SAM.STAGE 'rts' to train the plugins")
            return self.training_losses(batched_inputs)
        return super().forward(batched_inputs, return_intermediates)

    def decode(self, inp: Dict, embedding: torch.Tensor, valid_hw: Tuple[int, int],
               return_intermediates: bool = False) -> Dict:
        """`PromptableSAM.decode` through the plugged decoder (intermediates add "routing" [P, 2])."""
        with self.plugins.active():
            out = super().decode(inp, embedding, valid_hw, return_intermediates)
            routing = self.plugins.last_routing
        if return_intermediates and routing is not None:
            out["intermediates"]["routing"] = routing
        return out

    # ---------------------------------------------------------------- training
    def training_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """The RTS loss of a batch of the "promptable" mapper (is_train=True).

        Args:
            batched_inputs: dicts with "image" (uint8 3 x h x w) and "gt_mask" (bool H x W).

        Returns:
            {"loss_mask", "loss_dice"} (weighted), averaged over the batch's masks.
        """
        for inp in batched_inputs:
            if "gt_mask" not in inp:
                raise KeyError(f"{inp.get('file_name', 'input')}: stage 'rts' needs 'gt_mask' (the promptable mapper "
                               f"with is_train=True gives it); got keys {sorted(inp)}")
        step, rank = self._iteration(), comm.get_rank()
        with torch.no_grad():  # SAM (and the enhancer) are frozen
            z, valid = self.image_embeddings([x["image"] for x in batched_inputs])
        logits, masks = [], []
        for i, inp in enumerate(batched_inputs):
            hw = tuple(int(v) for v in inp["image"].shape[-2:])
            prompt = self.sampler.draw(inp["gt_mask"], hw, self.sampler.rng(rank, step, inp.get("image_id", i)))
            with self.plugins.active():
                low_res, _ = sam_predict(self.sam, z[i:i + 1], multimask_output=False, **self._prompts(prompt, hw))
            logits.append(self.to_output_size(low_res[0, :, 0], valid[i], hw))  # P x h x w, the image frame
            masks.append(inp["gt_mask"])
        # the GT mask (its own size) and the logits (image frame) cover the same extent: points are normalised
        points = SeededPointGenerator(derive_seed("stable-sam-loss-points", self.seed, rank, step))
        losses = rts_mask_loss(logits, masks, self.num_points, self.oversample_ratio, self.importance_sample_ratio,
                               points)
        return {k: v * self.loss_weights[k] for k, v in losses.items()}
