"""The restoration-adapted diffusion backbone, registered as `RASS` in detectron2's BACKBONE_REGISTRY.

Input: the low-quality image in [-1, 1], B x 3 x H x W with H, W multiples of 8 (the VAE's
down-sampling factor), as released (its config pads to 8; `size_divisibility` reports the release's
preferred 64 for MODEL.MASK_FORMER.SIZE_DIVISIBILITY -1). Taps of a size that is not a multiple of
their stride are resized (nearest) to floor(H / stride) x floor(W / stride), as released.
  1. prompts: a tagger reads the image (the clean one in training or the LQ one, configurable) and
     returns one prompt per image; CLIP text embeddings of the prompts are cached;
  2. the frozen VAE encoder gives the latent (posterior sample or mean) x scaling factor, and its
     down_blocks 1 and 3 are tapped (256 ch / stride 4, 512 ch / stride 8 for SD-2.1);
  3. one UNet pass at timestep 1 (restoration LoRA merged, trainable rank-4 adapter, conv_in
     trainable), up_blocks 0-3 tapped (1280/32, 1280/16, 640/8, 320/8);
  4. `FeatureProjection` maps the six taps to res2..res5 (512 channels each).
At test time the features are computed in sliding windows (see `sliding_window.py`).

Posterior samples (MODEL.RASS.LATENT "sample") come from two generators, never the global RNG:
- training: a generator per training forward, seeded from (MODEL.RASS.SEED, process rank, trainer
  iteration, call index within that iteration) — ranks draw different noise, an evaluation in between
  changes nothing, and a resumed run (whose iteration is restored) draws exactly what an
  uninterrupted run would have drawn. Outside a trainer the iteration is the number of training
  forwards of this module;
- evaluation: re-seeded from MODEL.RASS.SEED alone at every forward (the same image gives the same
  features whatever the rank or the images before it).

Module tree (state-dict prefixes): `vae`, `unet`, `text_encoder`, `tagger`, `projection`.
`rass.checkpoint.release_to_project_keys` maps the release's names onto it.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from rass.data.degradation.online import derive_seed
from rass.modeling.diffusion.lora import (
    TRAINABLE_ADAPTER, add_trainable_lora, merge_osediff_lora, read_osediff_lora, select_lora_targets)
from rass.modeling.diffusion.sd_components import SDParts, build_sd_parts
from rass.modeling.tagging import build_tagger
from rass.utils.errors import UserValueError

from .feature_projection import FeatureProjection
from .feature_taps import capture_outputs, resolve_taps, tap_shape
from .prompt_embedding import PromptEmbeddingCache
from .sliding_window import sliding_window_features

__all__ = ["RASS", "TAGGER_INPUTS"]

logger = logging.getLogger(__name__)

TAGGER_INPUTS = ("clean_train_lq_test", "lq")
SIZE_DIVISIBILITY = 64
# Input sides must be multiples of this: the VAE encoder's down-sampling factor (the release pads to 8).
MIN_DIVISIBILITY = 8


def _infer(parts: SDParts, taps: Sequence[str], given: Sequence[int], what: str, index: int) -> List[int]:
    """FEATURE_DIMS / FEATURE_STRIDES: inferred from the SD configs when empty, else checked."""
    inferred = [tap_shape(parts, t) for t in taps]
    if not given:
        unknown = [t for t, s in zip(taps, inferred) if s is None]
        if unknown:
            raise UserValueError(f"MODEL.FEATURE_PROJECTION.{what} is empty and cannot be inferred for taps {unknown}; "
                                 "give it explicitly")
        return [s[index] for s in inferred]
    if len(given) != len(taps):
        raise UserValueError(f"MODEL.FEATURE_PROJECTION.{what} has {len(given)} entries for {len(taps)} "
                             f"MODEL.RASS.FEATURE_TAPS {list(taps)}")
    for i, (t, g, s) in enumerate(zip(taps, given, inferred)):
        if s is not None and int(g) != s[index]:
            raise UserValueError(f"MODEL.FEATURE_PROJECTION.{what}[{i}]={g} but tap {t!r} of this architecture has "
                                 f"{s[index]}; set it to {s[index]} or leave {what} empty to infer it")
    return [int(g) for g in given]


def _clear_prompt_cache(module: "RASS", *args, **kwargs) -> None:
    module.prompt_cache.clear()


@BACKBONE_REGISTRY.register()
class RASS(Backbone):
    """Stable Diffusion 2.1 features (VAE encoder + one UNet pass) projected to res2..res5.

    Args:
        parts: the VAE, UNet (adapters already set up), text encoder and tokenizer.
        tagger: prompt provider (images in [0, 1] -> list of strings).
        projection: the feature projection.
        feature_taps: module paths (inside this backbone) whose outputs are the projected features.
        timestep: UNet timestep.
        latent: "sample" or "mean" of the VAE posterior.
        seed: seed of the posterior samples (see the module docstring: mixed with rank and
            iteration in training, alone at every forward in eval mode).
        tagger_input: "clean_train_lq_test" or "lq".
        prompt_cache: the text-embedding cache.
        sliding_window: (enabled, size, stride, batch_size) for eval mode.
        train_conv_in: UNet conv_in weights trainable.
        gradient_checkpointing: enable diffusers gradient checkpointing in the UNet.
        tagger_name: registry name of the tagger (selects the release's tagger copy when loading).
    """

    @configurable
    def __init__(self, *, parts: SDParts, tagger: nn.Module, projection: FeatureProjection,
                 feature_taps: Sequence[str], timestep: int = 1, latent: str = "sample", seed: int = 0,
                 tagger_input: str = "clean_train_lq_test", prompt_cache: Optional[PromptEmbeddingCache] = None,
                 sliding_window: Sequence = (True, 0, 0, 4), train_conv_in: bool = True,
                 gradient_checkpointing: bool = False, tagger_name: str = "none") -> None:
        super().__init__()
        if latent not in ("sample", "mean"):
            raise UserValueError(f"MODEL.RASS.LATENT must be 'sample' or 'mean', got {latent!r}")
        if tagger_input not in TAGGER_INPUTS:
            raise UserValueError(f"MODEL.TAGGER.INPUT must be one of {TAGGER_INPUTS}, got {tagger_input!r}")
        self.vae = parts.vae
        self.unet = parts.unet
        self.text_encoder = parts.text_encoder
        self.tokenizer = parts.tokenizer
        self.tagger = tagger
        self.tagger_name = tagger_name
        self.projection = projection
        self.feature_taps = list(feature_taps)
        resolve_taps(self, self.feature_taps)
        self.timestep = int(timestep)
        self.latent = latent
        self.seed = int(seed)
        self.tagger_input = tagger_input
        # (an empty cache is falsy: test for None, or the configured size/suffix would be replaced)
        self.prompt_cache = PromptEmbeddingCache() if prompt_cache is None else prompt_cache
        self.sliding_window_enabled, self.window_size, self.window_stride, self.window_batch = sliding_window
        self._eval_generator: Optional[torch.Generator] = None
        self._train_calls = 0  # training forwards outside a trainer (no EventStorage)
        self._train_step: Optional[tuple] = None  # (iteration, call index) of the last training draw
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self._set_trainable(train_conv_in)
        self.register_load_state_dict_pre_hook(_clear_prompt_cache)  # new text-encoder weights: re-encode
        shapes = projection.output_shapes()
        self._out_features = list(shapes)
        self._out_feature_channels = {k: c for k, (c, _) in shapes.items()}
        self._out_feature_strides = {k: s for k, (_, s) in shapes.items()}

    @classmethod
    def from_config(cls, cfg, input_shape=None) -> dict:
        r, fp = cfg.MODEL.RASS, cfg.MODEL.FEATURE_PROJECTION
        # Build on "meta" when asked (MODEL.DEVICE or an enclosing `with torch.device("meta")`), else on the CPU.
        meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
        device = torch.device("meta" if meta else "cpu")
        parts = build_sd_parts(r.SD_PATH, r.ARCH, device, r.FROZEN_DTYPE)
        if r.RESTORATION_LORA_PATH:
            if device.type == "meta":
                logger.info("meta device: restoration LoRA %s not read (it changes values, not names)",
                            r.RESTORATION_LORA_PATH)
            else:
                merge_osediff_lora(parts.unet, read_osediff_lora(r.RESTORATION_LORA_PATH), r.RESTORATION_LORA_ALPHA,
                                   r.RESTORATION_LORA_PATH)
        if r.LORA_RANK > 0:
            with torch.device(device):
                info = add_trainable_lora(parts.unet, select_lora_targets(parts.unet, r.LORA_TARGETS), r.LORA_RANK,
                                          r.LORA_ALPHA)
            logger.info("UNet LoRA adapter %r: rank %d on %d layers (%d values)", TRAINABLE_ADAPTER, r.LORA_RANK,
                        info["layers"], info["params"])
        taps = list(r.FEATURE_TAPS)
        dims = _infer(parts, taps, fp.FEATURE_DIMS, "FEATURE_DIMS", 0)
        strides = _infer(parts, taps, fp.FEATURE_STRIDES, "FEATURE_STRIDES", 1)
        ctx = torch.device(device) if device.type == "meta" else contextlib.nullcontext()
        with ctx:
            tagger = build_tagger(cfg)
            projection = FeatureProjection(dims, strides, fp.GROUPED_INDICES, fp.OUT_FEATURES, fp.PROJECTION_DIM,
                                           fp.NUM_BLOCKS, fp.NORM, fp.MIN_STRIDE, fp.MAX_STRIDE)
        sw = r.SLIDING_WINDOW
        return {
            "parts": parts,
            "tagger": tagger,
            "projection": projection,
            "feature_taps": taps,
            "timestep": r.TIMESTEP,
            "latent": r.LATENT,
            "seed": r.SEED,
            "tagger_input": cfg.MODEL.TAGGER.INPUT,
            "prompt_cache": PromptEmbeddingCache(r.PROMPT_CACHE_SIZE, r.PROMPT_SUFFIX),
            "sliding_window": (sw.ENABLED, sw.SIZE, sw.STRIDE, sw.BATCH_SIZE),
            "train_conv_in": r.TRAIN_CONV_IN,
            "gradient_checkpointing": r.GRADIENT_CHECKPOINTING,
            "tagger_name": cfg.MODEL.TAGGER.NAME,
        }

    # ------------------------------------------------------------------ setup
    def _set_trainable(self, train_conv_in: bool) -> None:
        """Only the UNet adapter, (optionally) UNet conv_in and the projections learn."""
        self.requires_grad_(False)
        for name, p in self.unet.named_parameters():
            if f".{TRAINABLE_ADAPTER}." in name and "lora_" in name:
                p.requires_grad_(True)
            elif train_conv_in and name.startswith("conv_in.") and "lora_" not in name:
                p.requires_grad_(True)
        self.projection.requires_grad_(True)

    def train(self, mode: bool = True) -> "RASS":
        """Frozen networks (VAE, text encoder) always stay in eval mode; the tagger is told the mode
        (its network stays in eval mode; it caches tags per image only outside training)."""
        super().train(mode)
        for frozen in (self.vae, self.text_encoder):
            frozen.eval()
        self.tagger.train(mode)
        return self

    def analysis_parts(self) -> Dict[str, List[str]]:
        """Parts reported by tools/analyze_model.py (names of child modules)."""
        return {
            "vae_encoder": ["vae.encoder", "vae.quant_conv"],
            "vae_decoder (unused)": ["vae.decoder", "vae.post_quant_conv"],
            "unet": ["unet"],
            "text_encoder": ["text_encoder"],
            "tagger": ["tagger"],
            "projection": ["projection"],
        }

    @property
    def size_divisibility(self) -> int:
        return SIZE_DIVISIBILITY

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": SIZE_DIVISIBILITY}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
                for k in self._out_features}

    # ---------------------------------------------------------------- forward
    def prompts_for(self, images: torch.Tensor, clean_images: Optional[torch.Tensor] = None) -> List[str]:
        """Tagger prompts for a batch.

        Args:
            images: LQ backbone input in [-1, 1].
            clean_images: clean images in [0, 1] (used in training when MODEL.TAGGER.INPUT is
                "clean_train_lq_test").
        """
        if self.training and self.tagger_input == "clean_train_lq_test" and clean_images is not None:
            tag_in = clean_images
        else:
            tag_in = ((images.detach().float() + 1) / 2).clamp(0, 1)
        with torch.no_grad():
            return list(self.tagger(tag_in))

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Cached CLIP embeddings of the prompts (B x 77 x D)."""
        return self.prompt_cache.encode(prompts, self.tokenizer, self.text_encoder)

    def _training_step(self) -> tuple:
        """(iteration, call index within it) of this training draw: the trainer's iteration (restored
        on resume); outside a trainer, the number of earlier training draws."""
        try:
            iteration = int(get_event_storage().iter)
        except AssertionError:  # no EventStorage: not inside a trainer
            iteration = self._train_calls
        self._train_calls += 1
        last = self._train_step
        self._train_step = (iteration, last[1] + 1 if last is not None and last[0] == iteration else 0)
        return self._train_step

    def _posterior_generator(self, device: torch.device) -> Optional[torch.Generator]:
        """The generator of the next posterior sample (see the module docstring)."""
        if device.type == "meta":  # shape-only runs: nothing to draw
            return None
        if self.training:
            iteration, call = self._training_step()
            if self._train_calls == 1:  # once, at the first training draw
                logger.info("RASS backbone: training posterior samples seeded from (MODEL.RASS.SEED=%d, rank %d, "
                            "iteration %d, ...): every iteration has its own seed, so a resumed run continues the "
                            "stream of an uninterrupted one", self.seed, comm.get_rank(), iteration)
            seed = derive_seed("rass-posterior", self.seed, comm.get_rank(), iteration, call)
            return torch.Generator(device=device).manual_seed(seed)
        if self._eval_generator is None or self._eval_generator.device != device:
            self._eval_generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._eval_generator

    def extract(self, images: torch.Tensor, cond: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One pass on whole images: VAE encoder + UNet with taps, then the projection.

        Args:
            images: B x 3 x H x W in [-1, 1].
            cond: B x L x D text embeddings.
        """
        taps = resolve_taps(self, self.feature_taps)
        with capture_outputs(taps) as store:
            with torch.no_grad():
                posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
                if self.latent == "sample":
                    z = posterior.sample(generator=self._posterior_generator(images.device))
                else:
                    z = posterior.mode()
                z = z * self.vae.config.scaling_factor
            t = torch.full((z.shape[0],), self.timestep, dtype=torch.long, device=z.device)
            self.unet(z.to(self.unet.dtype), t, encoder_hidden_states=cond.to(self.unet.dtype))
        missing = [k for k in self.feature_taps if k not in store]
        if missing:
            raise RuntimeError(f"feature taps {missing} did not run during the forward pass")
        return self.projection([store[k] for k in self.feature_taps], tuple(images.shape[-2:]))

    def forward(self, images: torch.Tensor, clean_images: Optional[torch.Tensor] = None,
                prompts: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Features res2..res5 of a batch.

        Args:
            images: B x 3 x H x W LQ input in [-1, 1], H and W multiples of 8.
            clean_images: optional clean images in [0, 1] for the tagger (training).
            prompts: optional prompts; when given the tagger is not run.

        Returns:
            name -> B x C x H/stride x W/stride.
        """
        h, w = images.shape[-2:]
        align = MIN_DIVISIBILITY
        if h % align or w % align:
            raise UserValueError(f"RASS backbone input {h}x{w} is not a multiple of {align} (the VAE's down-sampling "
                                 f"factor); pad it, e.g. MODEL.MASK_FORMER.SIZE_DIVISIBILITY {align} (as released)")
        if prompts is None:
            prompts = self.prompts_for(images, clean_images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"got {len(prompts)} prompts for {images.shape[0]} images")
        cond = self.text_embeddings(prompts)
        if not self.training:
            self._eval_generator = None  # eval: every forward starts from MODEL.RASS.SEED (reproducible)
        if self.training or not self.sliding_window_enabled:
            return self.extract(images, cond)
        return sliding_window_features(self.extract, images, cond, self._out_feature_strides, self.window_size,
                                       self.window_stride, self.window_batch, align)
