"""The restoration LoRA (OSEDiff format) merges with peft to the same UNet as a merge by hand."""
from __future__ import annotations

import copy

import pytest
import torch
from detectron2.modeling import build_backbone
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

import rass.modeling.backbone  # noqa: F401
from rass.config import setup_cfg
from rass.modeling.diffusion.lora import merge_osediff_lora, read_osediff_lora, select_lora_targets
from rass.modeling.diffusion.sd_components import build_sd_parts

RANK, ALPHA = 2, 8.0  # peft's default alpha (8) as OSEDiff used it; scaling = 8 / 2 = 4
TINY = ["MODEL.BACKBONE.NAME", "RASS", "MODEL.DEVICE", "cpu", "MODEL.RASS.ARCH", "tiny", "MODEL.RASS.LORA_RANK", "0",
        "MODEL.FEATURE_PROJECTION.FEATURE_DIMS", "[]", "MODEL.FEATURE_PROJECTION.FEATURE_STRIDES", "[]",
        "MODEL.FEATURE_PROJECTION.PROJECTION_DIM", "128"]
OSEDIFF_PATTERNS = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                    "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]


def make_osediff_payload(unet: nn.Module, rank: int, seed: int = 0) -> dict:
    """A synthetic scr.pkl for `unet`: OSEDiff's three module lists and random (non-zero) A, B and conv_in."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    names = select_lora_targets(unet, OSEDIFF_PATTERNS)
    lists = {"default_encoder": [], "default_decoder": [], "default_others": []}
    for n in names:
        key = ("default_encoder" if ("down_blocks" in n or n == "conv_in")
               else "default_decoder" if "up_blocks" in n else "default_others")
        lists[key].append(n)
    state = {}
    for adapter, mods in lists.items():
        for n in mods:
            m = modules[n]
            if isinstance(m, nn.Conv2d):
                a_shape, b_shape = (rank, m.in_channels, *m.kernel_size), (m.out_channels, rank, 1, 1)
            else:
                a_shape, b_shape = (rank, m.in_features), (m.out_features, rank)
            state[f"{n}.lora_A.{adapter}.weight"] = torch.randn(a_shape, generator=g) * 0.2
            state[f"{n}.lora_B.{adapter}.weight"] = torch.randn(b_shape, generator=g) * 0.2
    state["conv_in.base_layer.weight"] = torch.randn(unet.conv_in.weight.shape, generator=g) * 0.1
    state["conv_in.base_layer.bias"] = torch.randn(unet.conv_in.bias.shape, generator=g) * 0.1
    return {"rank_unet": rank, "rank_vae": rank, "unet_lora_encoder_modules": lists["default_encoder"],
            "unet_lora_decoder_modules": lists["default_decoder"], "unet_lora_others_modules": lists["default_others"],
            "state_dict_unet": state, "vae_lora_encoder_modules": [], "state_dict_vae": {}}


def merge_by_hand(unet: nn.Module, payload: dict, alpha: float) -> None:
    """W <- W + (alpha / r) * B @ A (convolutions: B 1x1 after A k x k), conv_in replaced."""
    r = payload["rank_unet"]
    modules = dict(unet.named_modules())
    state = payload["state_dict_unet"]
    with torch.no_grad():
        for adapter, key in (("default_encoder", "unet_lora_encoder_modules"),
                             ("default_decoder", "unet_lora_decoder_modules"),
                             ("default_others", "unet_lora_others_modules")):
            for n in payload[key]:
                w = modules[n].weight
                if n == "conv_in":
                    w.copy_(state["conv_in.base_layer.weight"])
                    modules[n].bias.copy_(state["conv_in.base_layer.bias"])
                a = state[f"{n}.lora_A.{adapter}.weight"].flatten(1)
                b = state[f"{n}.lora_B.{adapter}.weight"].flatten(1)
                w.add_((alpha / r) * (b @ a).view_as(w))


def _unet_out(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 4, 8, 8, generator=g)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([1]), encoder_hidden_states=cond).sample


def test_osediff_lora_merges_like_the_hand_merge(tmp_path):
    torch.manual_seed(0)
    unet = build_sd_parts(arch="tiny").unet
    payload = make_osediff_payload(unet, RANK)
    ref = copy.deepcopy(unet)
    before = _unet_out(unet)
    path = tmp_path / "scr.pkl"
    torch.save(payload, path)
    merge_osediff_lora(unet, read_osediff_lora(str(path)), ALPHA, str(path))
    merge_by_hand(ref, payload, ALPHA)
    assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    assert not hasattr(unet, "peft_config")
    assert unet.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(unet.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)
    merged = _unet_out(unet)
    torch.testing.assert_close(merged, _unet_out(ref), rtol=1e-4, atol=1e-5)
    assert (merged - before).abs().max() > 1e-2  # the LoRA did change the UNet


def test_restoration_lora_through_the_config_then_new_adapter(tmp_path):
    torch.manual_seed(0)
    plain = build_backbone(setup_cfg(None, TINY))
    payload = make_osediff_payload(plain.unet, RANK, seed=5)
    path = tmp_path / "scr.pkl"
    torch.save(payload, path)
    torch.manual_seed(0)  # same random init as `plain`
    merged = build_backbone(setup_cfg(None, TINY + ["MODEL.RASS.RESTORATION_LORA_PATH", str(path),
                                                    "MODEL.RASS.LORA_RANK", "4"]))
    merge_by_hand(plain.unet, payload, ALPHA)
    got = merged.unet.state_dict()
    for k, v in plain.unet.state_dict().items():
        base = k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        torch.testing.assert_close(got[base] if base in got else got[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the new adapter starts as the identity (B = 0), so outputs equal the merged UNet's
    torch.testing.assert_close(_unet_out(merged.unet), _unet_out(plain.unet), rtol=1e-4, atol=1e-5)
    assert all(torch.count_nonzero(p) == 0 for n, p in merged.unet.named_parameters() if ".lora_B.rass." in n)


def test_lora_file_errors_name_the_problem(tmp_path):
    unet = build_sd_parts(arch="tiny").unet
    with pytest.raises(FileNotFoundError, match="RESTORATION_LORA_PATH.*nope.pkl.*rank_unet"):
        read_osediff_lora(str(tmp_path / "nope.pkl"))
    bad = tmp_path / "bad.pkl"
    torch.save({"rank_unet": 4, "state_dict_unet": {}}, bad)
    with pytest.raises(ValueError, match=r"bad\.pkl: not an OSEDiff-format LoRA file, missing keys \['unet_lora_encoder"):
        read_osediff_lora(str(bad))
    payload = make_osediff_payload(unet, RANK)
    payload["unet_lora_decoder_modules"] = payload["unet_lora_decoder_modules"] + ["up_blocks.7.resnets.0.conv1"]
    with pytest.raises(ValueError, match=r"unet_lora_decoder_modules: \['up_blocks.7.resnets.0.conv1'\]"):
        merge_osediff_lora(copy.deepcopy(unet), payload, ALPHA, "scr.pkl")
    payload = make_osediff_payload(unet, RANK)
    del payload["state_dict_unet"]["conv_in.lora_B.default_encoder.weight"]
    with pytest.raises(ValueError, match=r"lacks 1 entries .*conv_in\.lora_B\.default_encoder\.weight"):
        merge_osediff_lora(copy.deepcopy(unet), payload, ALPHA, "scr.pkl")
    payload = make_osediff_payload(unet, 3)
    payload["rank_unet"] = RANK
    with pytest.raises(ValueError, match=r"has shape \(3, .*expects \(2, "):
        merge_osediff_lora(copy.deepcopy(unet), payload, ALPHA, "scr.pkl")
