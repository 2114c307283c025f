"""GleSAM's latent enhancement: CRE tiling, the full-size CRE UNet + LoRA on `meta` against the
manifest, the one-step x0 formula against closed-form values, and the enhancer (tiny models on CPU)."""
import math

import pytest
import torch
from transformers import CLIPTextModel

from rass.config import setup_cfg
from rass.modeling.diffusion.clip_tokenizer import write_clip_tokenizer
from rass.modeling.diffusion.sd_components import alphas_cumprod, build_text_parts, build_unet
from rass.modeling.enhancement import (
    GLESAM_LORA_TARGETS, LatentEnhancer, add_glesam_lora, build_cre_unet, expand_unet_channels,
    glesam_lora_state_dict, x0_from_eps)
from tests.conftest import load_manifest

MANIFEST_KEYS = {"sd21_base": "sd21_base_r8", "sd15": "sd15_r8"}


def tiny_cfg(*opts):
    return setup_cfg(None, ["MODEL.DEVICE", "cpu", "MODEL.GLESAM.ARCH", "tiny", *opts])


# ---------------------------------------------------------------------------------------------- CRE


def test_cre_tiling_closed_form():
    torch.manual_seed(1)
    unet = build_unet("", "tiny")
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    names = ("conv_in.weight", "conv_in.bias", "conv_out.weight", "conv_out.bias")
    w_in, b_in, w_out, b_out = (before[k] for k in names)
    cre = expand_unet_channels(unet, 256)
    after = cre.state_dict()
    assert cre.config.in_channels == cre.config.out_channels == 256
    assert after["conv_in.weight"].shape == (16, 256, 3, 3) and after["conv_out.weight"].shape == (256, 16, 3, 3)
    for c in (0, 1, 2, 3, 4, 5, 127, 254, 255):  # input channel c uses pretrained channel c mod 4: tiling
        assert torch.equal(after["conv_in.weight"][:, c], w_in[:, c % 4])
        assert torch.equal(after["conv_out.weight"][c], w_out[c % 4]) and after["conv_out.bias"][c] == b_out[c % 4]
    assert torch.equal(after["conv_in.weight"], w_in.repeat(1, 64, 1, 1))  # the release's expression
    assert torch.equal(after["conv_out.weight"], w_out.repeat(64, 1, 1, 1))
    assert torch.equal(after["conv_out.bias"], b_out.repeat(64))
    assert torch.equal(after["conv_in.bias"], b_in)  # unchanged, no 1/64 rescaling anywhere
    others = [k for k in before if not k.startswith(("conv_in.", "conv_out."))]
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in others)
    assert not any(p.device.type == "meta" for p in cre.parameters())
    # so conv_in of a 4-channel input tiled 64 times is 64 x the pretrained conv_in (bias once): no rescaling
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = cre.conv_in(x.repeat(1, 64, 1, 1))
    assert torch.allclose(got, 64 * torch.nn.functional.conv2d(x, w_in, padding=1) + b_in.view(1, -1, 1, 1), atol=1e-4)


def test_cre_unet_from_a_local_diffusers_folder(tmp_path):
    torch.manual_seed(2)
    ref = build_unet("", "tiny")
    ref.save_pretrained(str(tmp_path / "unet"))
    saved = {k: v.clone() for k, v in ref.state_dict().items()}
    cre = build_cre_unet(str(tmp_path), channels=256)
    got = cre.state_dict()
    assert torch.equal(got["conv_in.weight"], saved["conv_in.weight"].repeat(1, 64, 1, 1))
    assert torch.equal(got["conv_out.bias"], saved["conv_out.bias"].repeat(64))
    key = "down_blocks.0.attentions.0.proj_in.weight"
    assert torch.equal(got[key], saved[key])
    assert cre.dtype == torch.float32


def test_cre_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"MODEL\.GLESAM\.ARCH='sd3'.*sd15.*sd21_base.*tiny"):
        build_cre_unet("", "sd3")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.GLESAM\.SD_PATH.*does not exist.*unet/"):
        build_cre_unet(str(tmp_path / "nope"))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.GLESAM\.SD_PATH=.*unet/ has none of"):
        build_cre_unet(str(tmp_path))
    with pytest.raises(ValueError, match="LATENT_CHANNELS must be > 0"):
        expand_unet_channels(build_unet("", "tiny", device="meta"), 0)


# ----------------------------------------------------------------------------- full size on meta


@pytest.fixture(scope="module", params=["sd21_base", "sd15"])
def meta_cre(request):
    unet = build_cre_unet("", request.param, 256, device="meta")
    base = sum(p.numel() for p in unet.parameters())
    info = add_glesam_lora(unet, rank=8, alpha=8)
    return request.param, unet, base, info


def test_full_size_cre_unet_and_lora_match_the_manifest(meta_cre):
    arch, unet, base, info = meta_cre
    ref = load_manifest("glesam_unet_lora_manifest.json")[MANIFEST_KEYS[arch]]
    assert base == ref["cre_unet_base_numel"] == {"sd21_base": 867_362_496, "sd15": 860_972_736}[arch]
    assert info == {"layers": 280, "params": ref["numel"]}
    assert ref["numel"] == {"sd21_base": 8_518_144, "sd15": 8_452_608}[arch]
    names = {k: list(v.shape) for k, v in glesam_lora_state_dict(unet).items()}
    assert len(names) == ref["num_keys"] == 560
    assert names == {k: v[:-1] for k, v in ref["keys"].items()}  # names and shapes, diffusers style
    assert sum(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in names) == 256
    assert names["unet.conv_in.lora_A.weight"] == [8, 256, 3, 3]
    assert names["unet.conv_out.lora_B.weight"] == [256, 8, 1, 1]
    # no allocation; only LoRA is trainable
    assert all(p.device.type == "meta" for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters() if p.requires_grad) == ref["numel"]
    cre_layers = load_manifest("glesam_unet_lora_manifest.json")["cre_base_layers"]
    assert list(unet.conv_in.base_layer.weight.shape) == cre_layers["conv_in.weight"][:-1]
    assert list(unet.conv_out.base_layer.bias.shape) == cre_layers["conv_out.bias"][:-1]


@pytest.mark.parametrize("arch,dim", [("sd21_base", 1024), ("sd15", 768)])
def test_meta_enhancer_builds_without_allocation(arch, dim):
    e = LatentEnhancer(setup_cfg(None, ["MODEL.DEVICE", "meta", "MODEL.GLESAM.ARCH", arch]))
    assert all(p.device.type == "meta" for p in e.parameters())
    assert e.text_embedding.shape == (1, 77, dim) and e.text_embedding.device.type == "meta"
    assert e.unet.config.cross_attention_dim == dim
    if arch == "sd21_base":  # a shape-only pass of the full-size UNet on SAM's 64 x 64 embedding
        assert e(torch.empty(1, 256, 64, 64, device="meta")).shape == (1, 256, 64, 64)


# ------------------------------------------------------------------------------------ x0 formula


def test_x0_from_eps_closed_form():
    a = alphas_cumprod("")
    assert a.dtype == torch.float64 and a.shape == (1000,)
    assert round(float(a[1]), 6) == 0.998296 and round(float(a[0]), 6) == 0.999150
    assert round(math.sqrt(1 - float(a[1])), 6) == 0.041279 and round(1 / math.sqrt(float(a[1])), 6) == 1.000853
    # SD's scaled-linear schedule computed independently in float64 (the scheduler's float32 differs < 1e-6)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(a, torch.cumprod(1 - betas, 0), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    x0 = x0_from_eps(x, eps, a, 1)
    assert x0.dtype == torch.float64
    expected = (x.double() - 0.041279 * eps.double()) * 1.000853
    assert torch.allclose(x0, expected, atol=5e-6, rtol=0)
    exact = (x.double() - (1 - a[1]).sqrt() * eps.double()) / a[1].sqrt()
    assert torch.equal(x0, exact)
    per_sample = x0_from_eps(x, eps, a, torch.tensor([1, 999]))  # one timestep per sample
    assert torch.equal(per_sample[0], exact[0])
    assert torch.allclose(per_sample[1], (x[1].double() - (1 - a[999]).sqrt() * eps[1].double()) / a[999].sqrt())


def test_scheduler_config_of_the_folder_is_used(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        '{"_class_name": "DDIMScheduler", "beta_start": 0.001, "beta_end": 0.02, "beta_schedule": "linear", '
        '"num_train_timesteps": 500}')
    a = alphas_cumprod(str(tmp_path))
    assert a.shape == (500,) and abs(float(a[0]) - 0.999) < 1e-7
    assert torch.equal(alphas_cumprod(str(tmp_path / "nothing")), alphas_cumprod(""))


# ---------------------------------------------------------------------------------- the enhancer


@pytest.fixture(scope="module")
def tiny_enhancer():
    torch.manual_seed(3)
    return LatentEnhancer(tiny_cfg()).eval()


def test_enhancer_with_zero_eps_is_z_over_sqrt_alpha(tiny_enhancer):
    e = tiny_enhancer
    saved = {k: v.clone() for k, v in e.unet.conv_out.base_layer.state_dict().items()}
    try:
        with torch.no_grad():
            e.unet.conv_out.base_layer.weight.zero_()
            e.unet.conv_out.base_layer.bias.zero_()  # LoRA B is zero at init: eps == 0 exactly
            z = torch.randn(2, 256, 8, 8, generator=torch.Generator().manual_seed(4))
            out = e(z)
        assert out.dtype == z.dtype and out.shape == z.shape
        assert torch.equal(out, (z.double() / math.sqrt(float(e.alphas_cumprod[1]))).float())
        assert torch.allclose(out, z * 1.000853, atol=1e-5, rtol=0)
    finally:
        e.unet.conv_out.base_layer.load_state_dict(saved)


def test_enhancer_matches_the_gle_formula(tiny_enhancer):
    e = tiny_enhancer
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = e(z)
        eps = e.unet(5.0 * z, torch.tensor([1]), encoder_hidden_states=e.text_embedding).sample
    a = float(e.alphas_cumprod[1])
    expected = (5.0 * z.double() - math.sqrt(1 - a) * eps.double()) / (5.0 * math.sqrt(a))
    assert eps.abs().max() > 0.01  # a real UNet output, not zero
    assert torch.allclose(out.double(), expected, atol=1e-6, rtol=0)
    # batch > 1 works (the text embedding is expanded), each sample as if alone
    z2 = torch.cat([z, torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(6))])
    with torch.no_grad():
        assert torch.allclose(e(z2)[:1], out, atol=1e-6, rtol=0)


def test_empty_prompt_embedding_is_computed_once(monkeypatch):
    calls = []
    original = CLIPTextModel.forward

    def counting(self, *args, **kwargs):
        calls.append(args[0] if args else kwargs.get("input_ids"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPTextModel, "forward", counting)
    e = LatentEnhancer(tiny_cfg()).eval()
    with torch.no_grad():
        for _ in range(2):
            e(torch.randn(1, 256, 8, 8))
    assert len(calls) == 1 and calls[0].shape == (1, 77)
    tokenizer, _ = build_text_parts("", "tiny")
    assert calls[0].tolist() == tokenizer([""], padding="max_length", max_length=77).input_ids
    assert e.text_embedding.shape == (1, 77, 32)
    # saved with the model (so a checkpoint reproduces a random-text-encoder build), the encoder itself is not
    assert [k for k in e.state_dict() if "text" in k] == ["text_embedding"]
    assert not any(isinstance(m, CLIPTextModel) for m in e.modules())  # the text encoder is not kept


def test_enhancer_state_dict_and_trainable_part(tiny_enhancer):
    e = tiny_enhancer
    trainable = [n for n, p in e.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert len(trainable) == 2 * len({n.split(".lora_")[0] for n in trainable})


def test_enhancer_from_a_local_sd_folder(tmp_path):
    torch.manual_seed(7)
    unet = build_unet("", "tiny")
    unet.save_pretrained(str(tmp_path / "unet"))
    _, text_encoder = build_text_parts("", "tiny")
    text_encoder.save_pretrained(str(tmp_path / "text_encoder"))
    write_clip_tokenizer(str(tmp_path / "tokenizer"))
    e = LatentEnhancer(tiny_cfg("MODEL.GLESAM.SD_PATH", str(tmp_path)))
    assert torch.equal(e.unet.conv_in.base_layer.weight, unet.conv_in.weight.repeat(1, 64, 1, 1))
    tokenizer, te = build_text_parts(str(tmp_path), "tiny")
    with torch.no_grad():
        ref = te(tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    assert torch.equal(e.text_embedding, ref)


def test_enhancer_bad_input_and_config():
    e = LatentEnhancer(tiny_cfg())
    with pytest.raises(ValueError, match=r"expected a B x 256 x h x w image embedding, got \(1, 4, 8, 8\)"):
        e(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="MODEL.GLESAM.DTYPE: 'float8'"):
        LatentEnhancer(tiny_cfg("MODEL.GLESAM.DTYPE", "float8"))
    with pytest.raises(ValueError, match=r"MODEL.GLESAM.TIMESTEP must be in \[0, 999\], got 1000"):
        LatentEnhancer(tiny_cfg("MODEL.GLESAM.TIMESTEP", "1000"))
    with pytest.raises(ValueError, match="FEAT_WEIGHT must be > 0"):
        LatentEnhancer(tiny_cfg("MODEL.GLESAM.FEAT_WEIGHT", "0.0"))
    with pytest.raises(ValueError, match=r"MODEL.GLESAM.LORA_TARGETS: \['to_qq'\] match no"):
        LatentEnhancer(tiny_cfg("MODEL.GLESAM.LORA_TARGETS", "['to_q', 'to_qq']"))
    with pytest.raises(FileNotFoundError, match=r"MODEL.GLESAM.LORA_PATH: 'missing.safetensors' does not exist"):
        LatentEnhancer(tiny_cfg("MODEL.GLESAM.LORA_PATH", "missing.safetensors"))


def test_config_defaults_are_the_released_setting():
    g = setup_cfg(None).MODEL.GLESAM
    assert (g.ENHANCE, g.ARCH, g.LORA_RANK, g.LORA_ALPHA, g.FEAT_WEIGHT, g.TIMESTEP, g.LATENT_CHANNELS, g.DTYPE) == (
        True, "sd21_base", 8, 8.0, 5.0, 1, 256, "float32")
    assert tuple(g.LORA_TARGETS) == GLESAM_LORA_TARGETS and len(GLESAM_LORA_TARGETS) == 16


def test_bfloat16_unet_keeps_x0_in_float64():
    e = LatentEnhancer(tiny_cfg("MODEL.GLESAM.DTYPE", "bfloat16")).eval()
    assert e.unet.dtype == torch.bfloat16 and e.text_embedding.dtype == torch.bfloat16
    assert e.alphas_cumprod.dtype == torch.float64
    e.to(torch.float16)  # module casts never round the schedule
    assert e.alphas_cumprod.dtype == torch.float64
    z = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        out = e.to(torch.bfloat16)(z)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
