"""GleSAM's generative latent enhancement (GLE): one pass of the LoRA'd CRE UNet on SAM's image embedding.

    x   = γ · z_L                                  (FDA scaling, γ = MODEL.GLESAM.FEAT_WEIGHT)
    ε   = UNet(x, T, c)                            (T = MODEL.GLESAM.TIMESTEP, c = CLIP embedding of "")
    x0  = (x − sqrt(1 − ᾱ_T) · ε) / sqrt(ᾱ_T)      (float64, as released)
    ẑ_H = x0 / γ                                   (cast back to z_L's dtype)

Differences from the release (on purpose): one UNet is built (not three); the text embedding is
expanded to the batch (the release only works for batch 1); x is taken in float64 before the UNet's
input is rounded to the UNet's dtype (the release rounds γ·z_L to float32 first: ~1e-8 relative);
for inference the LoRA is merged into the UNet's weights (MODEL.GLESAM.MERGE_LORA; the release runs it
unmerged): same output to float rounding (~1e-6 relative); on a CPU 9% less time per UNet pass at 512 px
with 1 thread, no measurable change at 1024 px with 2 threads (tools/benchmarks/bench_glesam.py).

LoRA merging: the adapter is merged whenever no gradient can reach it — the LoRA is frozen (inference
models, stage-2 training), or the module is in eval mode under `torch.no_grad()` (evaluation during
stage-1 training; float32 only, since unmerging rounds the frozen base weights by one unit in the last
place, which bfloat16/float16 would make 0.4%/0.05%). `train()` and a forward that needs LoRA gradients
unmerge it. While merged, `state_dict()` reports the unmerged base weights and the LoRA export is
unchanged; a LoRA changed in place after the merge (a loaded file, an edit) is merged anew at the next
forward (`rass.modeling.diffusion.lora.set_lora_merged`). Edit base weights only while unmerged.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Union

import torch
from detectron2.config import configurable
from torch import nn

from rass.modeling.diffusion.lora import lora_is_merged, lora_requires_grad, set_lora_merged
from rass.modeling.diffusion.lora_files import LoRALoadReport
from rass.modeling.diffusion.sd_components import DTYPES, alphas_cumprod, build_text_parts
from rass.utils.errors import UserValueError

from .cre import build_cre_unet
from .lora import add_glesam_lora, load_glesam_lora, read_glesam_lora

__all__ = ["LatentEnhancer", "empty_prompt_embedding", "x0_from_eps"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def empty_prompt_embedding(tokenizer, text_encoder: nn.Module) -> torch.Tensor:
    """The text encoder's last hidden state for the prompt "" (padded to the tokenizer's length), 1 x L x D.

    Args:
        tokenizer: a CLIP tokenizer.
        text_encoder: a `CLIPTextModel`.
    """
    ids = tokenizer([""], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    ref = next(text_encoder.parameters())
    if ref.device.type == "meta":
        return torch.empty(1, ids.shape[1], text_encoder.config.hidden_size, device="meta", dtype=ref.dtype)
    return text_encoder(ids.to(ref.device))[0]


def x0_from_eps(x: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor,
                t: Union[int, torch.Tensor]) -> torch.Tensor:
    """The clean sample predicted from ε at timestep t, in float64: (x − sqrt(1−ᾱ_t) ε) / sqrt(ᾱ_t).

    Args:
        x: the noisy sample, B x C x H x W.
        eps: the predicted noise, same shape.
        alphas_cumprod: ᾱ of the schedule (1-D).
        t: one timestep or one per sample (B,).
    """
    where = x.device if x.device.type not in ("mps",) else torch.device("cpu")  # MPS has no float64
    t = torch.as_tensor(t, dtype=torch.long).to(alphas_cumprod.device)
    a = alphas_cumprod.to(torch.float64)[t].reshape(-1, 1, 1, 1).to(where)
    x64, eps64 = x.to(where, torch.float64), eps.to(where, torch.float64)
    return (x64 - (1.0 - a).sqrt() * eps64) / a.sqrt()


def _check_scalars(feat_weight: float, timestep: int, num_steps: int) -> None:
    if not feat_weight > 0:
        raise UserValueError(f"MODEL.GLESAM.FEAT_WEIGHT must be > 0, got {feat_weight}")
    if not 0 <= int(timestep) < num_steps:
        raise UserValueError(f"MODEL.GLESAM.TIMESTEP must be in [0, {num_steps - 1}], got {timestep}")


class LatentEnhancer(nn.Module):
    """SAM image embedding z_L -> enhanced ẑ_H (see the module doc).

    Args:
        unet: the CRE UNet with its LoRA (in/out channels = the embedding's channels).
        text_embedding: 1 x L x D embedding of "" (a buffer saved with the model: with a random text
            encoder, e.g. the tiny test configs, a checkpoint then reproduces the model exactly and
            every process of a multi-process run uses the same embedding).
        alphas_cumprod: ᾱ of the noise schedule (kept in float64 on the CPU; not a buffer, so
            `.to(dtype)` never rounds it).
        feat_weight: γ (> 0).
        timestep: T (0 <= T < len(alphas_cumprod)).
        lora_report: what was loaded from MODEL.GLESAM.LORA_PATH (None: nothing loaded).
        merge_lora: merge the LoRA into the UNet's weights whenever no gradient can reach it (module doc;
            MODEL.GLESAM.MERGE_LORA); False always runs base and LoRA apart, as the release does.
    """

    @configurable
    def __init__(self, *, unet: nn.Module, text_embedding: torch.Tensor, alphas_cumprod: torch.Tensor,
                 feat_weight: float = 5.0, timestep: int = 1, lora_report: Optional[LoRALoadReport] = None,
                 merge_lora: bool = True) -> None:
        super().__init__()
        _check_scalars(feat_weight, timestep, len(alphas_cumprod))
        cross = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        if cross is not None and int(text_embedding.shape[-1]) != int(cross):
            raise UserValueError(f"MODEL.GLESAM: the text encoder gives {text_embedding.shape[-1]}-dim embeddings but "
                                 f"the UNet's cross_attention_dim is {cross} (text encoder and UNet of different SD "
                                 "versions?)")
        self.unet = unet
        self.register_buffer("text_embedding", text_embedding.detach())
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.feat_weight = float(feat_weight)
        self.timestep = int(timestep)
        self.channels = int(unet.config.in_channels)
        self.lora_report = lora_report
        self.merge_lora = bool(merge_lora)

    @classmethod
    def from_config(cls, cfg, device: Optional[Union[str, torch.device]] = None) -> dict:
        """Build the parts from MODEL.GLESAM (on "meta" when MODEL.DEVICE is "meta", else on the CPU)."""
        g = cfg.MODEL.GLESAM
        if g.DTYPE not in DTYPES:
            raise UserValueError(f"MODEL.GLESAM.DTYPE: {g.DTYPE!r} is not one of {sorted(DTYPES)}")
        schedule = alphas_cumprod(g.SD_PATH)
        _check_scalars(float(g.FEAT_WEIGHT), int(g.TIMESTEP), len(schedule))
        if g.LORA_PATH and not os.path.isfile(g.LORA_PATH):  # fail before building anything
            read_glesam_lora(g.LORA_PATH)
        if device is None:
            meta = cfg.MODEL.DEVICE == "meta" or torch.get_default_device().type == "meta"
            device = "meta" if meta else "cpu"
        device = torch.device(device)
        unet = build_cre_unet(g.SD_PATH, g.ARCH, int(g.LATENT_CHANNELS), device)
        add_glesam_lora(unet, int(g.LORA_RANK), float(g.LORA_ALPHA), list(g.LORA_TARGETS))
        report = None
        if g.LORA_PATH and device.type == "meta":
            logger.info("meta device: GleSAM LoRA %s not read (shapes only)", g.LORA_PATH)
        elif g.LORA_PATH:
            report = load_glesam_lora(unet, g.LORA_PATH)
            logger.info("%s", report)
        elif device.type != "meta":
            logger.warning("MODEL.GLESAM.LORA_PATH is empty: the UNet LoRA is freshly initialised (B = 0), so the "
                           "enhancement is the plain CRE UNet%s", "" if g.SD_PATH else " with RANDOM weights")
        tokenizer, text_encoder = build_text_parts(g.SD_PATH, g.ARCH, device, key="MODEL.GLESAM")
        embedding = empty_prompt_embedding(tokenizer, text_encoder)
        del text_encoder  # only the embedding of "" is ever needed
        dtype = DTYPES[g.DTYPE]
        if dtype != torch.float32:
            unet.to(dtype=dtype)
        return {"unet": unet, "text_embedding": embedding.to(dtype), "alphas_cumprod": schedule,
                "feat_weight": float(g.FEAT_WEIGHT), "timestep": int(g.TIMESTEP), "lora_report": report,
                "merge_lora": bool(g.MERGE_LORA)}

    # ------------------------------------------------------------------ LoRA merging
    @property
    def lora_merged(self) -> bool:
        """Whether the UNet's LoRA is merged into its base weights now."""
        return lora_is_merged(self.unet)

    def wants_merged_lora(self) -> bool:
        """Whether the LoRA should be merged now: merging is on and no gradient can reach the LoRA
        (frozen, or eval mode under no_grad with a float32 UNet; see the module doc)."""
        if not self.merge_lora:
            return False
        if not lora_requires_grad(self.unet):
            return True
        return not self.training and not torch.is_grad_enabled() and self.unet.dtype == torch.float32

    def sync_lora_merge(self) -> int:
        """Merge or unmerge the UNet's LoRA as `wants_merged_lora()` says; returns the layers changed."""
        return set_lora_merged(self.unet, self.wants_merged_lora())

    def set_lora_merging(self, enabled: bool) -> None:
        """Switch merging on or off (MODEL.GLESAM.MERGE_LORA) and apply it now.

        Args:
            enabled: False runs base and LoRA apart from now on (the release's way).
        """
        self.merge_lora = bool(enabled)
        self.sync_lora_merge()

    def train(self, mode: bool = True) -> "LatentEnhancer":
        """Set the mode; a LoRA that should not stay merged (e.g. trainable, in train mode) is unmerged at
        once, as code may call `self.unet` directly. Merging itself waits for the next forward.

        Args:
            mode: True for training mode, False for eval mode.
        """
        super().train(mode)
        if not self.wants_merged_lora():
            set_lora_merged(self.unet, False)
        return self

    def x0_from_eps(self, x: torch.Tensor, eps: torch.Tensor, t: Union[int, torch.Tensor, None] = None) -> torch.Tensor:
        """x0 from ε in float64 with this enhancer's schedule (t defaults to MODEL.GLESAM.TIMESTEP)."""
        return x0_from_eps(x, eps, self.alphas_cumprod, self.timestep if t is None else t)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Enhance SAM image embeddings.

        Args:
            z: B x C x h x w (C = MODEL.GLESAM.LATENT_CHANNELS).

        Returns:
            ẑ_H with the shape and dtype of `z`.
        """
        if z.dim() != 4 or z.shape[1] != self.channels:
            raise ValueError(f"LatentEnhancer: expected a B x {self.channels} x h x w image embedding, got "
                             f"{tuple(z.shape)}")
        self.sync_lora_merge()
        # x = γ z in float64 where the device has it (MPS has no float64; meta is shapes only)
        exact = z.device.type in ("cpu", "cuda")
        x = z.to(torch.float64) * self.feat_weight if exact else z.float() * self.feat_weight
        t = torch.full((z.shape[0],), self.timestep, dtype=torch.long, device=z.device)
        context = self.text_embedding.expand(z.shape[0], -1, -1)
        eps = self.unet(x.to(self.text_embedding.dtype), t, encoder_hidden_states=context).sample
        if z.device.type == "meta":
            return torch.empty_like(z)
        return (self.x0_from_eps(x, eps, t) / self.feat_weight).to(device=z.device, dtype=z.dtype)
