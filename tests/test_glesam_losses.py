"""GleSAM's training losses: stage-2 Dice + Focal, stage-1 MSE, and the release's DMD2 + GAN terms."""
import copy
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer

from rass.modeling.diffusion.sd_components import alphas_cumprod
from rass.modeling.enhancement import (
    ClassifierHead, DistributionMatchingLoss, add_glesam_lora, build_cre_unet, reconstruction_loss, release_dice_loss,
    release_focal_loss, release_mask_target, segmentation_loss, x0_from_eps)
from rass.modeling.enhancement.dmd import add_noise, bottleneck_size, unet_bottleneck

EPS = 1e-6


# ---------------------------------------------------------------- stage 2: Dice / Focal
def test_dice_closed_form():
    logits = torch.stack([torch.zeros(2, 2), torch.full((2, 2), math.log(3.0))])[:, None]  # σ = 0.5 / 0.75
    target = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.ones(2, 2)])[:, None]
    # sample 0: Σσg = 0.5, Σσ = 2, Σg = 1; sample 1: Σσg = 3, Σσ = 3, Σg = 4
    d0 = 1 - (2 * 0.5 + EPS) / (2 + 1 + EPS)
    d1 = 1 - (2 * 3 + EPS) / (3 + 4 + EPS)
    assert release_dice_loss(logits, target).item() == pytest.approx((d0 + d1) / 2, rel=1e-6)
    # empty target and empty prediction: (0 + 1e-6)/(Σσ + 1e-6) -> loss 1 unless both empty
    both_empty = release_dice_loss(torch.full((1, 1, 2, 2), -1e4), torch.zeros(1, 1, 2, 2))
    assert both_empty.item() == pytest.approx(0.0, abs=1e-6)


def test_focal_closed_form_alpha_on_every_pixel():
    logits = torch.tensor([[0.0, 0.0, math.log(3.0), 0.0]])
    target = torch.tensor([[1.0, 0.0, 0.0, 0.5]])
    ln2, ln4 = math.log(2.0), math.log(4.0)
    # ce / pt per pixel: (ln2, .5), (ln2, .5), (ln4, .25), (ln2, .5) [soft target 0.5 at logit 0: ce = ln2]
    per_pixel = [0.25 * 0.25 * ln2, 0.25 * 0.25 * ln2, 0.25 * 0.75 ** 2 * ln4, 0.25 * 0.25 * ln2]
    assert release_focal_loss(logits, target).item() == pytest.approx(sum(per_pixel) / 4, rel=1e-6)
    # α multiplies every pixel: the loss is α times the unweighted focal loss
    assert release_focal_loss(logits, target, alpha=1.0).item() * 0.25 == pytest.approx(
        release_focal_loss(logits, target).item(), rel=1e-6)
    # ... and is not RetinaNet's α·g + (1 − α)·(1 − g) form (negatives weighted 0.75 there)
    g = target[:, :3]
    ce = F.binary_cross_entropy_with_logits(logits[:, :3], g, reduction="none")
    retina = ((0.25 * g + 0.75 * (1 - g)) * (1 - torch.exp(-ce)) ** 2 * ce).mean()
    release = release_focal_loss(logits[:, :3], g)
    assert retina.item() == pytest.approx((0.25 * 0.25 * ln2 + 0.75 * 0.25 * ln2 + 0.75 * 0.75 ** 2 * ln4) / 3)
    assert release.item() < 0.5 * retina.item()
    # gamma
    assert release_focal_loss(logits, target, gamma=0.0).item() == pytest.approx(0.25 * (3 * ln2 + ln4) / 4, rel=1e-6)


def test_losses_reject_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        release_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        release_focal_loss(torch.zeros(2, 4), torch.zeros(2, 5))


def test_release_mask_target_matches_cv2_and_stays_soft():
    rng = np.random.default_rng(0)
    mask = np.zeros((37, 53), np.uint8)
    mask[5:30, 10:41] = 255
    mask[rng.random(mask.shape) < 0.05] = 255
    for size in (16, 96):  # down- and up-sampling
        ref = cv2.resize(mask, (size, size)).astype(np.float32) / 255.0  # the release: cv2 bilinear, / 255
        ours = release_mask_target(torch.from_numpy(mask), size)
        assert ours.shape == (1, 1, size, size) and ours.dtype == torch.float32
        assert np.abs(ours[0, 0].numpy() - ref).max() <= 1.0 / 255 + 1e-6
        assert torch.allclose(ours * 255, torch.round(ours * 255), atol=1e-4)  # 1/255 steps
        soft = ((ours > 0) & (ours < 1)).float().mean().item()
        assert soft > 0.02  # not re-binarised
    # bool / B x H x W / float inputs give the same target
    t_bool = release_mask_target(torch.from_numpy(mask > 0)[None].expand(2, -1, -1), (20, 24))
    t_float = release_mask_target(torch.from_numpy(mask > 0).float(), (20, 24))
    assert t_bool.shape == (2, 1, 20, 24) and torch.equal(t_bool[1:], t_float)


def test_release_mask_target_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        release_mask_target(torch.full((4, 4), 255.0))
    with pytest.raises(ValueError, match="dtype"):
        release_mask_target(torch.zeros(4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        release_mask_target(torch.zeros(1, 3, 4, 4))


def test_segmentation_loss_upsamples_and_batches():
    gen = torch.Generator().manual_seed(0)
    low = torch.randn(3, 1, 4, 4, generator=gen)
    target = release_mask_target(torch.rand(3, 8, 8, generator=gen) > 0.5, 16)
    out = segmentation_loss(low, target)
    up = F.interpolate(low, size=(16, 16), mode="bilinear", align_corners=False)
    assert out["loss_dice"].item() == pytest.approx(release_dice_loss(up, target).item(), rel=1e-6)
    assert out["loss_focal"].item() == pytest.approx(release_focal_loss(up, target).item(), rel=1e-6)
    assert out["loss_mask"].item() == pytest.approx(out["loss_dice"].item() + out["loss_focal"].item(), rel=1e-6)
    # a batch is the mean of its samples (same-size targets): one mask per sample, none dropped
    singles = [segmentation_loss(low[i:i + 1], target[i:i + 1])["loss_mask"].item() for i in range(3)]
    assert out["loss_mask"].item() == pytest.approx(sum(singles) / 3, rel=1e-6)
    # constant logits upsample to the same constant: closed form for a full-foreground target
    const = segmentation_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 6, 6))
    assert const["loss_dice"].item() == pytest.approx(1 - (36 + EPS) / (18 + 36 + EPS), rel=1e-6)
    assert const["loss_focal"].item() == pytest.approx(0.25 * 0.25 * math.log(2.0), rel=1e-6)
    # gradient reaches the low-res logits
    low.requires_grad_(True)
    segmentation_loss(low, target)["loss_mask"].backward()
    assert low.grad is not None and low.grad.abs().sum() > 0


def test_segmentation_loss_errors():
    with pytest.raises(ValueError, match="one mask per sample"):
        segmentation_loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="same B"):
        segmentation_loss(torch.zeros(2, 1, 4, 4), torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="release_mask_target"):
        segmentation_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 8, 8, dtype=torch.bool))


# ---------------------------------------------------------------- stage 1: paper loss
def test_reconstruction_loss_closed_form():
    x0 = torch.ones(2, 3, 4, 4, requires_grad=True)
    z = torch.full((2, 3, 4, 4), 0.1)
    loss = reconstruction_loss(x0, z, 5.0)  # (1 − 5·0.1)² = 0.25
    assert loss.item() == pytest.approx(0.25, rel=1e-6)
    loss.backward()
    assert torch.allclose(x0.grad, torch.full_like(x0, 2 * 0.5 / x0.numel()))
    with pytest.raises(ValueError, match="FEAT_WEIGHT"):
        reconstruction_loss(x0, z, 0.0)
    with pytest.raises(ValueError, match="differ"):
        reconstruction_loss(x0, z[:1], 5.0)


# ---------------------------------------------------------------- release recipe: DMD2 + GAN
LATENT = 16  # tiny SAM (256 px) embedding side; the tiny UNet's bottleneck is then 2 x 2


@pytest.fixture(scope="module")
def unets():
    torch.manual_seed(0)
    generator = build_cre_unet("", "tiny", 256)
    add_glesam_lora(generator)
    fake = build_cre_unet("", "tiny", 256)
    real = copy.deepcopy(fake).requires_grad_(False)  # the same base weights, as both come from one SD folder
    add_glesam_lora(fake)
    return generator, real, fake


@pytest.fixture(scope="module")
def schedule():
    return alphas_cumprod("")


def _inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 256, LATENT, LATENT, generator=g), torch.randn(1, 77, 32, generator=g))


def _perturb_lora(unet, seed=1, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def test_dm_loss_zero_when_real_equals_fake(unets, schedule):
    _, real, fake = unets
    z, ctx = _inputs(batch=1)
    for real_unet in (real, None):  # a separate frozen UNet, or the fake one with its adapter off
        dm = DistributionMatchingLoss(fake, schedule, real_unet=real_unet, latent_size=LATENT)
        x0 = (5.0 * z).requires_grad_(True)
        loss, log = dm.distribution_matching_loss(x0, ctx, torch.Generator().manual_seed(3))
        assert loss.item() == 0.0 and log["grad"].abs().max().item() == 0.0
        loss.backward()
        assert torch.count_nonzero(x0.grad) == 0


def test_dm_loss_formula_sign_and_shape(unets, schedule):
    _, real, fake = unets
    fake = copy.deepcopy(fake)
    _perturb_lora(fake)
    dm = DistributionMatchingLoss(fake, schedule, real_unet=real, latent_size=LATENT)
    z, ctx = _inputs()
    x0 = (5.0 * z).requires_grad_(True)
    loss, log = dm.distribution_matching_loss(x0, ctx, torch.Generator().manual_seed(7))
    grad = log["grad"]
    assert grad.shape == x0.shape and loss.dim() == 0 and grad.abs().max() > 0
    # reference: the same draws (t then ε from the generator), the formula written out
    g = torch.Generator().manual_seed(7)
    t = torch.randint(20, 981, (2,), generator=g)
    assert torch.equal(log["timesteps"], t) and bool(((t >= 20) & (t <= 980)).all())
    noise = torch.randn(x0.shape, generator=g)
    a = schedule[t].reshape(-1, 1, 1, 1).float()
    noisy = a.sqrt() * x0.detach() + (1 - a).sqrt() * noise
    with torch.no_grad():
        e_fake = fake(noisy, t, encoder_hidden_states=ctx.expand(2, -1, -1)).sample
        e_real = real(noisy, t, encoder_hidden_states=ctx.expand(2, -1, -1)).sample
    p_real = x0.detach().double() - x0_from_eps(noisy, e_real, schedule, t)
    p_fake = x0.detach().double() - x0_from_eps(noisy, e_fake, schedule, t)
    ref = (p_real - p_fake) / p_real.abs().mean(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(grad.double(), ref, rtol=1e-5, atol=1e-7)
    # 0.5·mse(x0, x0 − grad) = 0.5·mean(grad²); d/dx0 = grad / N: descent moves x0 along −grad
    assert loss.item() == pytest.approx(0.5 * grad.double().pow(2).mean().item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(x0.grad, grad / x0.numel(), rtol=1e-4, atol=1e-11)  # fp32 x0 − (x0 − grad)


def test_classifier_head_full_size_on_meta():
    with torch.device("meta"):
        head = ClassifierHead(1280, 8)
    assert sum(p.numel() for p in head.parameters()) == 52_437_761
    assert head(torch.empty(2, 1280, 8, 8, device="meta")).shape == (2, 1)
    unet = build_cre_unet("", "sd21_base", 256, "meta")
    assert unet.config.block_out_channels[-1] == 1280 and bottleneck_size(unet, 64) == 8
    with torch.device("meta"):
        rep = unet_bottleneck(unet, torch.empty(1, 256, 64, 64), torch.ones(1, dtype=torch.long),
                              torch.empty(1, 77, 1024))
    assert rep.shape == (1, 1280, 8, 8)
    with pytest.raises(ValueError, match="bottleneck"):
        ClassifierHead(32, 1)


def test_classifier_head_tiny_sizes_depend_on_the_input():
    for side in (2, 4, 8, 16):  # 2x2 (tiny UNet on a 16 px latent) .. larger than released
        head = ClassifierHead(32, side)
        x = torch.randn(3, 32, side, side, generator=torch.Generator().manual_seed(side))
        out = head(x)
        assert out.shape == (3, 1) and out.std() > 0  # GroupNorm of one channel would make it constant
    assert head[1].num_groups == 4 and ClassifierHead(1280)[1].num_groups == 32
    assert ClassifierHead(1280)[3].kernel_size == (4, 4) and ClassifierHead(32, 2)[3].kernel_size == (1, 1)


def test_unet_bottleneck_is_the_mid_block_output_and_skips_the_decoder(unets):
    _, real, _ = unets
    z, ctx = _inputs(batch=1)
    t = torch.tensor([500])
    captured, up_calls = [], []
    h1 = real.mid_block.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        real(z, t, encoder_hidden_states=ctx)
    h1.remove()
    h2 = real.up_blocks[0].register_forward_hook(lambda m, i, o: up_calls.append(1))
    with torch.no_grad():
        rep = unet_bottleneck(real, z, t, ctx)
    h2.remove()
    assert rep.shape == (1, 32, 2, 2) and torch.equal(rep, captured[0]) and not up_calls
    assert not real.mid_block._forward_hooks  # the stopping hook is removed


def _grads(module):
    return {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_guidance_loss_trains_only_fake_lora_and_head(unets, schedule):
    generator, real, fake = unets
    generator, fake = copy.deepcopy(generator), copy.deepcopy(fake)
    dm = DistributionMatchingLoss(fake, schedule, real_unet=real, latent_size=LATENT)
    z, ctx = _inputs(batch=1)
    x0 = generator(5.0 * z, torch.ones(1, dtype=torch.long), encoder_hidden_states=ctx).sample
    out = dm.guidance_loss(x0, z, 5.0, ctx, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in out.values())
    assert out["loss_guidance"].item() == pytest.approx(
        out["loss_fake_mean"].item() + 1e-2 * out["loss_guidance_cls"].item(), rel=1e-6)
    out["loss_guidance"].backward()
    fake_grads = _grads(dm.fake_unet)
    assert fake_grads and all("lora_" in n for n in fake_grads)
    assert _grads(dm.head) == {n for n, _ in dm.head.named_parameters()}
    assert not _grads(real) and not _grads(generator)


def test_generator_loss_trains_only_generator_lora(unets, schedule):
    generator, _, fake = unets
    generator, fake = copy.deepcopy(generator), copy.deepcopy(fake)
    _perturb_lora(fake)
    dm = DistributionMatchingLoss(fake, schedule, real_unet=None, latent_size=LATENT)  # shared base weights
    trainable = {n for n, p in dm.named_parameters() if p.requires_grad}
    z, ctx = _inputs(batch=1)
    x0 = generator(5.0 * z, torch.ones(1, dtype=torch.long), encoder_hidden_states=ctx).sample
    out = dm.generator_loss(x0, z, 5.0, ctx, torch.Generator().manual_seed(0))
    assert out["loss_dm"].item() > 0 and out["loss_gen_cls"].item() > 0
    assert out["loss_G"].item() == pytest.approx(
        out["loss_mse"].item() + out["loss_dm"].item() + 5e-3 * out["loss_gen_cls"].item(), rel=1e-6)
    assert out["loss_mse"].item() == pytest.approx(reconstruction_loss(x0, z, 5.0).item(), rel=1e-6)
    out["loss_G"].backward()
    gen_grads = _grads(generator)
    assert gen_grads and all("lora_" in n for n in gen_grads)
    assert not _grads(dm)
    # the guidance model's trainable set is restored (adapter switched back on, LoRA + head trainable)
    assert {n for n, p in dm.named_parameters() if p.requires_grad} == trainable
    lora_layers = [m for m in fake.modules() if isinstance(m, BaseTunerLayer)]
    assert lora_layers and not any(m.disable_adapters for m in lora_layers)


def test_add_noise_closed_form(schedule):
    x0, eps = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), -1.0)
    t = torch.tensor([0, 999])
    out = add_noise(x0, eps, schedule, t)
    a = schedule[t].float()
    assert torch.allclose(out.flatten(), 2 * a.sqrt() - (1 - a).sqrt())


def test_distribution_matching_loss_errors(unets, schedule):
    _, real, fake = unets
    with pytest.raises(ValueError, match="min_step"):
        DistributionMatchingLoss(fake, schedule, real_unet=real, min_step=900, max_step=100, latent_size=LATENT)
    with pytest.raises(ValueError, match="LoRA adapter"):
        DistributionMatchingLoss(real, schedule, real_unet=None, latent_size=LATENT)
    dm = DistributionMatchingLoss(fake, schedule, real_unet=real, latent_size=LATENT)
    with pytest.raises(ValueError, match="text embedding"):
        dm.distribution_matching_loss(torch.zeros(2, 256, LATENT, LATENT), torch.zeros(3, 77, 32),
                                      torch.Generator().manual_seed(0))


def test_discriminator_trains_the_fake_encoder_only(unets, schedule):
    _, real, fake = unets
    fake = copy.deepcopy(fake)
    dm = DistributionMatchingLoss(fake, schedule, real_unet=real, latent_size=LATENT)
    z, ctx = _inputs(batch=1)
    logits = dm.discriminator_logits(5.0 * z, ctx, torch.Generator().manual_seed(0))
    assert logits.shape == (1, 1)
    F.softplus(-logits).mean().backward()
    grads = _grads(fake)
    assert any(n.startswith("down_blocks.") for n in grads) and any(n.startswith("mid_block.") for n in grads)
    assert not any(n.startswith(("up_blocks.", "conv_out", "conv_norm_out")) for n in grads)
