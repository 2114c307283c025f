"""GleSAM's stage-1 "release" recipe: DMD2 distribution matching + a diffusion-GAN classifier
(facts: reference/glesam_method.md §5; the release's `models/sd_guidance_model_CRE_addlora.py`).

The generator (the LoRA'd CRE UNet of `LatentEnhancer`) predicts x0 (γ-scaled space). The guidance
model holds a frozen "real" CRE UNet, a "fake" CRE UNet with its own LoRA, and a classifier head on
the fake UNet's bottleneck (down blocks + mid block output):

    L_dm       = 0.5·mse(x0, (x0 − grad).detach()),  grad = (p_real − p_fake) / mean|p_real| (per sample),
                 p = x0 − x0_pred(UNet(x0_t, t)), x0_t = noised x0, t ~ U{min_step..max_step} (20..980)
    D(x)       = head(bottleneck_fake(x_s, s)), x_s = noised x, s ~ U{0..gan_max_timestep−1} (0..999)
    L_gen_cls  = softplus(−D(x0)).mean()
    L_G        = L_mse + 1.0·L_dm + 5e-3·L_gen_cls                      (generator, every 5th step)
    L_guidance = mean((ε_fake(x0_t, t) − ε)²) + 1e-2·[softplus(D(fake)).mean() + softplus(−D(real)).mean()],
                 t ~ U{0..999}, real = γ·z_H, fake = x0.detach()       (fake LoRA + head, every step)

Differences from the release (on purpose):
- no classifier-free guidance: the release's real-UNet CFG (scale 8) mixes a conditional and an
  unconditional prediction whose embeddings are both the "" embedding, so
  ε_u + 8·(ε_c − ε_u) = ε_u: it costs a second (batched) UNet pass and changes nothing;
- `real_unet=None` uses the fake UNet with its adapter switched off as the real UNet (the same
  weights when both come from the same SD folder), saving one full UNet;
- all random draws use the torch.Generator passed in (the release uses the global RNG);
- the bottleneck is taken with a forward hook on `mid_block` that stops the forward there (the
  release patches the UNet's forward with a copy of diffusers' code that returns early).
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .gle import x0_from_eps
from .losses import reconstruction_loss

__all__ = ["ClassifierHead", "DistributionMatchingLoss", "add_noise", "unet_bottleneck", "bottleneck_size"]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The forward process: sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε (as diffusers' `add_noise`), in x0's dtype.

    Args:
        x0: B x C x H x W clean sample.
        noise: ε, same shape.
        alphas_cumprod: ᾱ (1-D).
        t: B timesteps.
    """
    a = alphas_cumprod.to(torch.float64)[t.to(alphas_cumprod.device)].reshape(-1, 1, 1, 1)
    a = a.to(device=x0.device, dtype=x0.dtype if x0.is_floating_point() else torch.float32)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise.to(x0.dtype)


def _randint(low: int, high_inclusive: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    t = torch.randint(low, high_inclusive + 1, (n,), generator=generator, device=generator.device)
    return t.to(device)


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32).to(x.device, x.dtype)


class _Stop(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("bottleneck reached")
        self.output = output


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _context(context: torch.Tensor, batch: int, module: nn.Module) -> torch.Tensor:
    if context.dim() != 3 or context.shape[0] not in (1, batch):
        raise ValueError(f"DistributionMatchingLoss: text embedding must be 1 x L x D or {batch} x L x D, got "
                         f"{tuple(context.shape)}")
    return context.expand(batch, -1, -1).to(_dtype(module))


def unet_bottleneck(unet: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The UNet's encoder output (down blocks + mid block), B x C_mid x h x w.

    A forward hook on `unet.mid_block` stops the stock forward there (the up blocks never run).

    Args:
        unet: a diffusers `UNet2DConditionModel` (with or without adapters).
        x: B x C x H x W input.
        t: B timesteps.
        context: B x L x D text embedding.
    """
    if getattr(unet, "mid_block", None) is None:
        raise ValueError(f"unet_bottleneck: {type(unet).__name__} has no mid_block")

    def stop(_module, _inputs, output):
        raise _Stop(output)

    handle = unet.mid_block.register_forward_hook(stop)
    try:
        unet(x.to(_dtype(unet)), t, encoder_hidden_states=context)
    except _Stop as s:
        return s.output
    finally:
        handle.remove()
    raise RuntimeError("unet_bottleneck: the UNet's forward did not call mid_block")


def bottleneck_size(unet: nn.Module, latent_size: int) -> int:
    """Side of the bottleneck for a square latent (each down block but the last halves it).

    Args:
        unet: a diffusers `UNet2DConditionModel`.
        latent_size: side of its input (64 for SAM's 1024-px embedding).
    """
    return int(math.ceil(latent_size / 2 ** (len(unet.config.down_block_types) - 1)))


class ClassifierHead(nn.Sequential):
    """The release's `cls_pred_branch` on the fake UNet's bottleneck:
    Conv(c→c, k4 s2 p1), GN32, SiLU, Conv(c→c, k4 s4), GN32, SiLU, Conv(c→1, k1).

    At c = 1280 (SD) and an 8×8 bottleneck (64×64 SAM embedding) this is the release's head
    (52,437,761 parameters), 8×8 → 4×4 → 1×1. For smaller bottlenecks (tiny test models) the second
    conv's kernel and stride shrink to what is left after the first (2×2 → 1×1: k1), and for larger
    ones the logits are averaged over the remaining positions. GroupNorm has 32 groups when there
    are at least 8 channels per group (1280: 40), else fewer (gcd(32, c // 8)): at 1×1 a group of one
    channel would normalise every input to the same value.

    Args:
        channels: the bottleneck's channels (`unet.config.block_out_channels[-1]`).
        bottleneck: side of the bottleneck (`bottleneck_size`; 8 as released).
    """

    def __init__(self, channels: int = 1280, bottleneck: int = 8) -> None:
        if channels <= 0 or bottleneck < 2:
            raise ValueError(f"ClassifierHead: channels must be > 0 and the bottleneck at least 2x2, got "
                             f"channels={channels}, bottleneck={bottleneck}")
        k2 = max(1, min(4, bottleneck // 2))
        groups = math.gcd(32, max(1, channels // 8))
        super().__init__(
            nn.Conv2d(channels, channels, kernel_size=4, stride=2, padding=1),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, kernel_size=k2, stride=k2, padding=0),
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, kernel_size=1, stride=1, padding=0),
        )

    def forward(self, rep: torch.Tensor) -> torch.Tensor:
        """B x c x h x w bottleneck -> B x 1 realism logits (float32)."""
        return super().forward(rep.float()).mean(dim=(2, 3))


@contextlib.contextmanager
def _no_param_grad(*modules: Optional[nn.Module]) -> Iterator[None]:
    """Temporarily freeze every parameter of `modules` (gradients then reach only the inputs)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def _adapters_off(unet: nn.Module) -> Iterator[None]:
    """Run `unet` without its peft adapters; restores the adapters and every requires_grad flag."""
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    flags = [(p, p.requires_grad) for p in unet.parameters()]
    try:
        for m in layers:
            m.enable_adapters(False)
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, f in flags:
            p.requires_grad_(f)


class DistributionMatchingLoss(nn.Module):
    """The guidance model of the release recipe and its three losses (see the module doc).

    Trainable here: the fake UNet's LoRA and the classifier head (the fake UNet's base weights and
    the real UNet are frozen by the caller, e.g. `add_glesam_lora`).

    Args:
        fake_unet: CRE UNet with its own trainable LoRA (not the generator's).
        alphas_cumprod: ᾱ of the noise schedule (1-D, e.g. `rass.modeling.diffusion.alphas_cumprod`).
        real_unet: frozen CRE UNet; None = `fake_unet` with its adapters switched off.
        head: the classifier head; None = a `ClassifierHead` sized for `latent_size`.
        latent_size: side of the (square) latent, used to size a default head (64 = SAM ViT at 1024 px).
        min_step: lowest t of the distribution-matching loss (0.02·1000 = 20 as released).
        max_step: highest t, inclusive (0.98·1000 = 980 as released).
        gan_max_timestep: D's input noise t ~ U{0..gan_max_timestep−1} (1000 as released).
        dm_weight: weight of L_dm in L_G (1.0).
        gen_cls_weight: weight of L_gen_cls in L_G (5e-3).
        guidance_cls_weight: weight of the classifier loss in L_guidance (1e-2).
    """

    def __init__(self, fake_unet: nn.Module, alphas_cumprod: torch.Tensor, real_unet: Optional[nn.Module] = None,
                 head: Optional[nn.Module] = None, latent_size: int = 64, min_step: int = 20, max_step: int = 980,
                 gan_max_timestep: int = 1000, dm_weight: float = 1.0, gen_cls_weight: float = 5e-3,
                 guidance_cls_weight: float = 1e-2) -> None:
        super().__init__()
        n = len(alphas_cumprod)
        if not 0 <= min_step <= max_step < n:
            raise ValueError(f"DistributionMatchingLoss: need 0 <= min_step <= max_step < {n}, got "
                             f"min_step={min_step}, max_step={max_step}")
        if not 0 < gan_max_timestep <= n:
            raise ValueError(f"DistributionMatchingLoss: gan_max_timestep must be in 1..{n}, got {gan_max_timestep}")
        if real_unet is None and not any(isinstance(m, BaseTunerLayer) for m in fake_unet.modules()):
            raise ValueError("DistributionMatchingLoss: real_unet=None needs a fake_unet with a LoRA adapter "
                             "(add_glesam_lora), whose base weights then serve as the real UNet")
        self.fake_unet = fake_unet
        self.real_unet = real_unet
        if head is None:
            head = ClassifierHead(int(fake_unet.config.block_out_channels[-1]), bottleneck_size(fake_unet, latent_size))
        self.head = head
        self.alphas_cumprod = alphas_cumprod.detach().to("cpu", torch.float64)
        self.min_step, self.max_step, self.gan_max_timestep = int(min_step), int(max_step), int(gan_max_timestep)
        self.num_train_timesteps = n
        self.dm_weight, self.gen_cls_weight = float(dm_weight), float(gen_cls_weight)
        self.guidance_cls_weight = float(guidance_cls_weight)

    def _eps(self, unet: nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return unet(x.to(_dtype(unet)), t, encoder_hidden_states=_context(context, x.shape[0], unet)).sample

    def _real_eps(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.real_unet is not None:
            return self._eps(self.real_unet, x, t, context)
        with _adapters_off(self.fake_unet):
            return self._eps(self.fake_unet, x, t, context)

    def distribution_matching_loss(self, x0: torch.Tensor, context: torch.Tensor,
                                   generator: torch.Generator) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """L_dm = 0.5·mse(x0, (x0 − grad).detach()); gradient only through x0.

        Args:
            x0: the generator's prediction (B x C x H x W, γ-scaled space).
            context: the "" text embedding, 1 x L x D or B x L x D.
            generator: seeded torch.Generator for t and ε.

        Returns:
            (loss, {"timesteps", "grad", "x0_real", "x0_fake"}) (detached logs).
        """
        with torch.no_grad():
            t = _randint(self.min_step, self.max_step, x0.shape[0], generator, x0.device)
            noisy = add_noise(x0.detach().float(), _randn_like(x0.float(), generator), self.alphas_cumprod, t)
            x0_fake = x0_from_eps(noisy, self._eps(self.fake_unet, noisy, t, context), self.alphas_cumprod, t)
            x0_real = x0_from_eps(noisy, self._real_eps(noisy, t, context), self.alphas_cumprod, t)
            ref = x0.detach().to(torch.float64)
            p_real, p_fake = ref - x0_real, ref - x0_fake
            grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True))
        loss = 0.5 * F.mse_loss(x0.float(), (x0.detach().to(torch.float64) - grad).float())
        return loss, {"timesteps": t, "grad": grad.float(), "x0_real": x0_real.float(), "x0_fake": x0_fake.float()}

    def discriminator_logits(self, x: torch.Tensor, context: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """D(x): the head on the fake UNet's bottleneck of x noised at t ~ U{0..gan_max_timestep−1}; B x 1."""
        t = _randint(0, self.gan_max_timestep - 1, x.shape[0], generator, x.device)
        noisy = add_noise(x.float(), _randn_like(x.float(), generator), self.alphas_cumprod, t)
        rep = unet_bottleneck(self.fake_unet, noisy, t, _context(context, x.shape[0], self.fake_unet))
        return self.head(rep)

    def generator_gan_loss(self, x0: torch.Tensor, context: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """L_gen_cls = softplus(−D(x0)).mean(); the guidance model's parameters get no gradient."""
        with _no_param_grad(self.fake_unet, self.head):
            return F.softplus(-self.discriminator_logits(x0, context, generator)).mean()

    def generator_loss(self, x0: torch.Tensor, z_clean: torch.Tensor, feat_weight: float, context: torch.Tensor,
                       generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """L_G = L_mse + dm_weight·L_dm + gen_cls_weight·L_gen_cls (gradients reach the generator only).

        Args:
            x0: the generator's prediction in the γ-scaled space, with gradient.
            z_clean: z_H, SAM's embedding of the clean image.
            feat_weight: γ.
            context: the "" text embedding.
            generator: seeded torch.Generator.

        Returns:
            {"loss_mse", "loss_dm", "loss_gen_cls", "loss_G"} (unweighted terms and the weighted total).
        """
        mse = reconstruction_loss(x0, z_clean, feat_weight)
        dm, _ = self.distribution_matching_loss(x0, context, generator)
        gen_cls = self.generator_gan_loss(x0, context, generator)
        total = mse + self.dm_weight * dm + self.gen_cls_weight * gen_cls
        return {"loss_mse": mse, "loss_dm": dm, "loss_gen_cls": gen_cls, "loss_G": total}

    def guidance_loss(self, x0: torch.Tensor, z_clean: torch.Tensor, feat_weight: float, context: torch.Tensor,
                      generator: torch.Generator) -> Dict[str, torch.Tensor]:
        """L_guidance = ε-MSE of the fake UNet on fake = x0.detach() + guidance_cls_weight·(D loss), real = γ·z_H.

        Args:
            x0: the generator's prediction (detached here).
            z_clean: z_H, SAM's embedding of the clean image.
            feat_weight: γ.
            context: the "" text embedding.
            generator: seeded torch.Generator.

        Returns:
            {"loss_fake_mean", "loss_guidance_cls", "loss_guidance"} (the two terms and the weighted total).
        """
        fake = x0.detach().float()
        real = feat_weight * z_clean.detach().float()
        t = _randint(0, self.num_train_timesteps - 1, fake.shape[0], generator, fake.device)
        noise = _randn_like(fake, generator)
        eps = self._eps(self.fake_unet, add_noise(fake, noise, self.alphas_cumprod, t), t, context)
        loss_fake = torch.mean((eps.float() - noise) ** 2)
        d_real = self.discriminator_logits(real, context, generator)
        d_fake = self.discriminator_logits(fake, context, generator)
        cls = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        return {"loss_fake_mean": loss_fake, "loss_guidance_cls": cls,
                "loss_guidance": loss_fake + self.guidance_cls_weight * cls}
