"""GleSAM's LoRA merged into the CRE UNet for inference (MODEL.GLESAM.MERGE_LORA): same outputs as
base + LoRA apart, unchanged export and state dict, gradients again after train(), and the rules of
when it merges. Tiny random UNet on CPU, one enhancer for the module."""
import pytest
import torch

from rass.config import setup_cfg
from rass.modeling.diffusion.lora import lora_layers, set_lora_merged, unmerged_base_weight
from rass.modeling.enhancement import LatentEnhancer, glesam_lora_state_dict, load_glesam_lora


def tiny_cfg(*opts):
    return setup_cfg(None, ["MODEL.DEVICE", "cpu", "MODEL.GLESAM.ARCH", "tiny", *opts])


def randomise_lora(unet, seed, std=0.05):
    """Give every LoRA B (zero at init) random values, so the adapter changes the UNet's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(unet):
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * std)


def base_weights(unet):
    return {n: p.detach().clone() for n, p in unet.named_parameters() if ".base_layer." in n}


@pytest.fixture(scope="module")
def enhancer():
    torch.manual_seed(11)
    e = LatentEnhancer(tiny_cfg())
    randomise_lora(e.unet, 12)
    return e


@pytest.fixture(scope="module")
def other():
    """A second enhancer (other random weights) to load states into."""
    torch.manual_seed(19)
    return LatentEnhancer(tiny_cfg()).eval()


@pytest.fixture
def fresh(enhancer):
    """The module's enhancer, unmerged, merging on, LoRA trainable and in train mode after the test."""
    yield enhancer
    enhancer.set_lora_merging(True)
    enhancer.unet.requires_grad_(False)
    for n, p in enhancer.unet.named_parameters():
        p.requires_grad_("lora_" in n)
    enhancer.train()
    set_lora_merged(enhancer.unet, False)


def unet_eps(e, x):
    t = torch.full((x.shape[0],), e.timestep)
    return e.unet(x, t, encoder_hidden_states=e.text_embedding.expand(x.shape[0], -1, -1)).sample


def test_merged_outputs_equal_unmerged_outputs(fresh):
    e = fresh
    x = 5.0 * torch.randn(2, 256, 8, 8, generator=torch.Generator().manual_seed(13))
    before = base_weights(e.unet)
    e.eval()
    with torch.no_grad():
        e.set_lora_merging(False)
        assert not e.lora_merged
        eps_apart, z_apart = unet_eps(e, x), e(x / 5.0)
        e.set_lora_merging(True)
        z_merged = e(x / 5.0)  # the forward merges (eval, no_grad, float32)
        assert e.lora_merged
        eps_merged = unet_eps(e, x)
        for layer in lora_layers(e.unet):
            layer.enable_adapters(False)  # the plain CRE UNet: the LoRA must matter for this test to mean anything
        set_lora_merged(e.unet, False)
        eps_plain = unet_eps(e, x)
        for layer in lora_layers(e.unet):
            layer.enable_adapters(True)
    # the merged weights really differ from the base weights ...
    e.set_lora_merging(True)
    with torch.no_grad():
        e(x / 5.0)
    merged_w = e.unet.conv_in.base_layer.weight.detach()
    assert (merged_w - before["conv_in.base_layer.weight"]).abs().max() > 1e-3
    # ... and give the same UNet output as base + LoRA computed apart, to float rounding
    scale = eps_apart.abs().max()
    assert (eps_apart - eps_plain).abs().max() > 0.05 * scale  # the adapter changes eps by > 5 %
    assert (eps_merged - eps_apart).abs().max() <= 1e-5 * scale
    assert (z_merged - z_apart).abs().max() <= 1e-5 * z_apart.abs().max()
    assert not torch.equal(eps_merged, unet_eps(e, x.flip(-1)))  # the output follows the input


def test_export_and_state_dict_unchanged_by_inference(fresh, other, tmp_path):
    e = fresh
    export_before = glesam_lora_state_dict(e.unet)
    state_before = {k: v.clone() for k, v in e.state_dict().items()}
    e.eval()
    with torch.no_grad():
        out = e(torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(14)))
    assert e.lora_merged
    export_after = glesam_lora_state_dict(e.unet)
    assert list(export_after) == list(export_before)  # the released key names, in order
    assert all(torch.equal(export_after[k], export_before[k]) for k in export_before)  # unmerged LoRA values
    assert "unet.conv_in.lora_A.weight" in export_after
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight" in export_after
    # the full state dict reports the unmerged base weights (to rounding), not W + delta
    state = e.state_dict()
    assert list(state) == list(state_before)
    key = "unet.conv_in.base_layer.weight"
    assert not torch.allclose(e.unet.conv_in.base_layer.weight, state_before[key], atol=1e-4)  # merged in place
    for k, v in state_before.items():
        assert torch.allclose(state[k], v, rtol=1e-6, atol=1e-7), k
    # a model saved while merged, loaded into a fresh (unmerged) enhancer, gives the same output
    torch.save(state, tmp_path / "merged.pth")
    other.eval().load_state_dict(torch.load(tmp_path / "merged.pth", weights_only=True))
    with torch.no_grad():
        got = other(torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(14)))
    assert torch.allclose(got, out, rtol=0, atol=1e-5 * out.abs().max())


def test_loading_a_lora_into_a_merged_unet(fresh, other):
    e = fresh
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(15))
    e.eval()
    with torch.no_grad():
        e(z)
    assert e.lora_merged
    ref = other.eval()
    ref.load_state_dict(e.state_dict())
    randomise_lora(ref.unet, 16)  # another LoRA
    new_lora = glesam_lora_state_dict(ref.unet)
    load_glesam_lora(e.unet, new_lora)  # the load unmerges first (no stale delta left in the base weights)
    assert not e.lora_merged
    with torch.no_grad():
        ref.set_lora_merging(False)
        expected = ref(z)
        got = e(z)
    assert e.lora_merged
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * expected.abs().max())


def test_train_after_eval_gives_lora_gradients_again(fresh):
    e = fresh
    before = base_weights(e.unet)
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(17))
    e.eval()
    with torch.no_grad():
        e(z)
    assert e.lora_merged
    e.train()
    assert not e.lora_merged  # unmerged at once: training code may call e.unet directly
    e.zero_grad(set_to_none=True)
    e(z).square().mean().backward()
    lora = [(n, p) for n, p in e.unet.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for _, p in lora)
    assert any(p.grad.abs().max() > 0 for n, p in lora if "lora_B" in n)
    assert all(p.grad is None for n, p in e.unet.named_parameters() if "lora_" not in n)  # base stays frozen
    # the merge/unmerge round trip left the frozen base weights as they were, to one unit in the last place
    for n, w in base_weights(e.unet).items():
        ulp = torch.finfo(w.dtype).eps * before[n].abs().clamp_min(1e-30)
        assert ((w - before[n]).abs() <= 2 * ulp + 1e-7 * before[n].abs().max()).all(), n


def test_when_the_lora_is_merged(fresh):
    e = fresh
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(18))
    e.eval()
    e(z).sum().backward()  # eval mode but gradients on: a trainable LoRA must stay apart
    assert not e.lora_merged and e.unet.conv_in.lora_B["default"].weight.grad is not None
    e.unet.requires_grad_(False)  # frozen LoRA (inference models, stage 2): merged even in train mode
    e.train()
    assert not e.lora_merged  # merging waits for the forward (weights may still be edited before it)
    e(z)
    assert e.lora_merged
    e.set_lora_merging(False)  # MODEL.GLESAM.MERGE_LORA False: never merged
    assert not e.lora_merged
    with torch.no_grad():
        e.eval()(z)
    assert not e.lora_merged
    assert not LatentEnhancer(tiny_cfg("MODEL.GLESAM.MERGE_LORA", "False")).merge_lora


def test_low_precision_trainable_lora_stays_apart_in_eval():
    e = LatentEnhancer(tiny_cfg("MODEL.GLESAM.DTYPE", "bfloat16")).eval()
    with torch.no_grad():
        e(torch.randn(1, 256, 8, 8))
    assert not e.lora_merged  # unmerging would round the bfloat16 base weights (0.4 %)
    e.requires_grad_(False)
    with torch.no_grad():
        e(torch.randn(1, 256, 8, 8))
    assert e.lora_merged  # a frozen LoRA is never unmerged by training: merged


def test_unmerged_base_weight_is_the_original(fresh):
    layer = fresh.unet.conv_in
    w0 = layer.get_base_layer().weight.detach().clone()
    set_lora_merged(fresh.unet, True)
    assert layer.merged and not torch.allclose(layer.get_base_layer().weight, w0, atol=1e-4)
    assert torch.allclose(unmerged_base_weight(layer), w0, rtol=1e-6, atol=1e-7)
    assert set_lora_merged(fresh.unet, True) == 0  # already merged: nothing changes


def test_lora_edited_in_place_after_the_merge(fresh, other):
    e = fresh
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(20))
    e.eval()
    with torch.no_grad():
        e(z)
        assert e.lora_merged
        base = {k: v.clone() for k, v in e.state_dict().items()}
        for n, p in e.unet.named_parameters():  # e.g. an optimizer step or a file copied into the parameters
            if ".lora_B." in n:
                p.add_(0.02)
        state = e.state_dict()  # base weights still the unmerged ones, LoRA the new values
        assert all(torch.allclose(state[k], base[k], rtol=1e-6, atol=1e-7) for k in base if ".base_layer." in k)
        assert not torch.equal(state["unet.conv_in.lora_B.default.weight"], base["unet.conv_in.lora_B.default.weight"])
        got = e(z)  # merged anew with the edited LoRA
        assert e.lora_merged
        other.load_state_dict(state)
        other.set_lora_merging(False)
        expected = other(z)
        other.set_lora_merging(True)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * expected.abs().max())
    set_lora_merged(e.unet, False)
    for n, w in base_weights(e.unet).items():  # unmerging subtracted what had been added
        assert torch.allclose(w, base["unet." + n], rtol=1e-6, atol=1e-7), n


def test_promptable_glesam_merges_for_inference_with_the_same_masks():
    import os

    from detectron2.modeling import build_model

    from rass.engine.model_build import seeded_init
    from tests.conftest import REPO

    tiny = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
    with seeded_init():
        model = build_model(setup_cfg(tiny)).eval()
    randomise_lora(model.enhancer.unet, 21)
    g = torch.Generator().manual_seed(22)
    inputs = [[{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=g),
                "point_coords": torch.tensor([[[40.0, 50.0], [60.0, 70.0]]]),
                "point_labels": torch.ones(1, 2, dtype=torch.long)}] for _ in range(2)]
    with torch.no_grad():
        merged = [model(x)[0]["mask_logits"] for x in inputs]
        assert model.enhancer.lora_merged  # inference model (MODEL.GLESAM.STAGE "none"): everything frozen
        model.enhancer.set_lora_merging(False)
        apart = [model(x)[0]["mask_logits"] for x in inputs]
    for m, a in zip(merged, apart):
        assert torch.allclose(m, a, rtol=0, atol=1e-4 * a.abs().max())
    assert not torch.allclose(merged[0], merged[1], atol=1e-3)  # other image, other logits


def test_merged_enhancer_can_be_cast(fresh):
    e = fresh
    z = torch.randn(1, 256, 8, 8, generator=torch.Generator().manual_seed(23))
    e.eval()
    with torch.no_grad():
        ref = e(z)
        assert e.lora_merged
        e.to(torch.float64)  # a cast after the merge: the record of the merged LoRA follows the parameters
        assert not e.wants_merged_lora()  # trainable LoRA in a non-float32 UNet: kept apart in eval
        out = e(z)
        assert not e.lora_merged
    e.to(torch.float32)
    assert torch.allclose(out.float(), ref, rtol=0, atol=1e-5 * ref.abs().max())
