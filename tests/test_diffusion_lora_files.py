"""Diffusers-format LoRA files (GleSAM's pytorch_lora_weights.safetensors): write -> read round trip on
the tiny CRE UNet, every key style, the exact size of the released SD-2.1 r8 file, strict-load errors."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from rass.checkpoint import CheckpointFileError
from rass.modeling.diffusion.lora_files import canonical_lora_key, read_lora_file, write_lora_file
from rass.modeling.enhancement import (
    add_glesam_lora, build_cre_unet, glesam_lora_state_dict, load_glesam_lora, read_glesam_lora, save_glesam_lora)
from rass.utils.errors import UserValueError
from tests.conftest import load_manifest


def tiny_lora_unet(seed: int, rank: int = 8):
    torch.manual_seed(seed)
    unet = build_cre_unet("", "tiny", 256)
    add_glesam_lora(unet, rank=rank, alpha=8)
    return unet


def randomise_lora(unet, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def unet_output(unet, x):
    with torch.no_grad():
        return unet(x, torch.tensor([1]), encoder_hidden_states=torch.ones(1, 77, 32)).sample


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    unet = tiny_lora_unet(0)
    randomise_lora(unet, 1)
    path = str(tmp_path_factory.mktemp("lora") / "pytorch_lora_weights.safetensors")
    size = save_glesam_lora(unet, path)
    return unet, path, size


def test_written_file_is_the_release_format(saved):
    unet, path, size = saved
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == size
    header = json.loads(data[8: 8 + struct.unpack("<Q", data[:8])[0]])
    assert header["__metadata__"] == {"format": "pt"}
    keys = [k for k in header if k != "__metadata__"]
    assert all(header[k]["dtype"] == "F32" for k in keys)
    attn = [k for k in keys if ".to_q." in k or ".to_k." in k or ".to_v." in k or ".to_out.0." in k]
    assert attn and all(k.endswith((".lora.down.weight", ".lora.up.weight")) for k in attn)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys if k not in attn)
    assert all(k.startswith("unet.") for k in keys)
    assert "unet.conv_in.lora_A.weight" in keys and "unet.conv_out.lora_B.weight" in keys
    n_layers = sum(1 for n, _ in unet.named_modules() if n.endswith(".base_layer"))
    assert len(keys) == 2 * n_layers


def test_round_trip_gives_identical_tensors_and_outputs(saved):
    unet, path, _ = saved
    fresh = tiny_lora_unet(0)  # same base weights (same seed), LoRA B = 0
    x = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(unet_output(fresh, x), unet_output(unet, x))
    report = load_glesam_lora(fresh, path)
    assert report.tensors == len(glesam_lora_state_dict(unet)) and report.rank == 8
    assert "loaded" in str(report) and path in str(report)
    a, b = glesam_lora_state_dict(unet), glesam_lora_state_dict(fresh)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(unet_output(fresh, x), unet_output(unet, x))


@pytest.mark.parametrize("style", ["peft_default", "all_lora_AB", "no_prefix_diffusers", "pth"])
def test_every_key_style_loads(saved, tmp_path, style):
    unet, path, _ = saved
    ref = glesam_lora_state_dict(unet)
    canonical = read_glesam_lora(path)
    if style == "peft_default":  # a peft model's own names
        state = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                 for k, v in canonical.items()}
    elif style == "all_lora_AB":  # unet.<m>.lora_A.weight for the attention layers too
        state = {"unet." + k: v for k, v in canonical.items()}
    else:
        state = {k[len("unet."):]: v for k, v in ref.items()}
    if style == "pth":
        target = str(tmp_path / "lora.pth")
        torch.save(state, target)
    else:
        target = str(tmp_path / "lora.safetensors")
        save_file(state, target)
    fresh = tiny_lora_unet(0)
    load_glesam_lora(fresh, target)
    got = glesam_lora_state_dict(fresh)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_canonical_key_of_each_style():
    m = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    styles = (f"unet.{m}.lora.down.weight", f"unet.{m}.lora_A.weight", f"{m}.lora_A.default.weight", f"{m}.lora.down.weight")
    for key in styles:
        assert canonical_lora_key(key) == f"{m}.lora_A.weight"
    assert canonical_lora_key("unet.conv_in.lora.up.weight") == "conv_in.lora_B.weight"
    assert canonical_lora_key("unet.conv_in.weight") is None


def test_sd21_r8_file_size_is_predicted_exactly(tmp_path):
    """The file written for the full SD-2.1(-base) CRE UNet at rank 8 is the released 34,149,184 bytes."""
    unet = build_cre_unet("", "sd21_base", 256, device="meta")
    add_glesam_lora(unet, rank=8, alpha=8)
    zeros = {k: torch.zeros(v.shape) for k, v in glesam_lora_state_dict(unet).items()}
    size = write_lora_file(zeros, str(tmp_path / "sd21.safetensors"))
    assert size == (tmp_path / "sd21.safetensors").stat().st_size
    assert size == load_manifest("glesam_unet_lora_manifest.json")["sd21_base_r8"]["safetensors_bytes"] == 34_149_184


@pytest.fixture(scope="module")
def sd15_file_and_sd21_unet(tmp_path_factory):
    """An SD-1.5 rank-8 LoRA file made from the manifest, and the SD-2.1 CRE UNet + LoRA on meta."""
    ref = load_manifest("glesam_unet_lora_manifest.json")["sd15_r8"]
    path = str(tmp_path_factory.mktemp("sd15") / "pytorch_lora_weights.safetensors")
    save_file({k: torch.zeros(v[:-1]) for k, v in ref["keys"].items()}, path, metadata={"format": "pt"})
    unet = build_cre_unet("", "sd21_base", 256, device="meta")
    add_glesam_lora(unet, rank=8, alpha=8)
    return path, unet


def test_sd15_file_into_sd21_unet_names_the_tensors(sd15_file_and_sd21_unet):
    path, unet = sd15_file_and_sd21_unet
    assert len(read_lora_file(path)) == 560
    with pytest.raises(ValueError) as info:
        load_glesam_lora(unet, path)
    msg = str(info.value)
    assert path in msg
    assert "attn2.to_k.lora_A: file [8, 768] vs model [8, 1024] (16 tensors" in msg
    assert "attn2.to_v.lora_A: file [8, 768] vs model [8, 1024] (16 tensors" in msg
    assert "e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight" in msg
    assert "proj_in.lora_A: file [8, 320, 1, 1] vs model [8, 320]" in msg  # SD-1.5 uses 1x1 conv projections
    assert "cross-attention dim 768 (SD-1.x), this UNet has 1024 (SD-2.x)" in msg


def test_missing_unexpected_rank_and_junk_are_named(saved, tmp_path):
    unet, path, _ = saved
    state = dict(read_glesam_lora(path))
    dropped = next(iter(state))
    del state[dropped]
    fresh = tiny_lora_unet(0)
    before = {k: v.clone() for k, v in glesam_lora_state_dict(fresh).items()}
    with pytest.raises(ValueError, match=rf"1 missing, e.g. \['{dropped}'\]"):
        load_glesam_lora(fresh, state)
    assert all(torch.equal(before[k], v) for k, v in glesam_lora_state_dict(fresh).items())  # nothing copied
    extra = dict(read_glesam_lora(path), **{"mid_block.foo.lora_A.weight": torch.zeros(8, 4)})
    with pytest.raises(ValueError, match=r"1 unexpected, e.g. \['mid_block.foo.lora_A.weight'\]"):
        load_glesam_lora(fresh, extra)
    with pytest.raises(ValueError, match="the file has rank 8, the model rank 4: set LORA_RANK 8") as rank_error:
        load_glesam_lora(tiny_lora_unet(0, rank=4), path)
    # only the rank differs: no hint about the cross-attention dim (the same 32 in file and UNet)
    assert "attn2.to_k.lora_A: file [8, 32] vs model [4, 32]" in str(rank_error.value)
    assert "cross-attention" not in str(rank_error.value)
    junk = str(tmp_path / "junk.safetensors")
    save_file({"unet.conv_in.weight": torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match=r"junk\.safetensors: 1 entries are not LoRA matrices.*unet\.conv_in\.weight"):
        read_glesam_lora(junk)
    both = {"unet.conv_in.lora_A.weight": torch.zeros(1), "conv_in.lora_A.default.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="same LoRA tensor .*two key styles"):
        load_glesam_lora(fresh, both)
    for name in ("broken.safetensors", "notes.txt"):  # a text file: safetensors / torch.load path
        broken = tmp_path / name
        broken.write_bytes(b"not a safetensors file")
        with pytest.raises(CheckpointFileError) as e:
            read_glesam_lora(str(broken))
        assert str(e.value).startswith(f"MODEL.GLESAM.LORA_PATH: cannot read {broken}: it is a text file (22 bytes, "
                                       "starts with 'not a safetensors file'); expected a diffusers LoRA file such as "
                                       "pytorch_lora_weights.safetensors")
    with pytest.raises(UserValueError, match=f"MODEL.GLESAM.LORA_PATH: {tmp_path} is a folder; expected a weight file"):
        read_glesam_lora(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"MODEL.GLESAM.LORA_PATH: .*nope.safetensors' does not exist"):
        read_glesam_lora(str(tmp_path / "nope.safetensors"))
