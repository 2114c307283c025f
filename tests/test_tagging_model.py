"""RAM / DAPE networks: names and shapes vs the published manifest, Swin, BERT head, LoRA."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import BertConfig

from rass.modeling.tagging.bert import RAMBertLMHeadModel
from rass.modeling.tagging.lora import LoRALinear, MergedLoRALinear, is_lora_key, lora_state_dict
from rass.modeling.tagging.ram import RAM, tied_weight_groups
from rass.modeling.tagging.swin import PatchMerging, SwinBlock, SwinTransformer
from rass.modeling.tagging.tiny import TINY_BERT
from tests.conftest import load_manifest

TINY_SWIN = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=2)


def tiny_ram(lora_rank: int = 0, num_classes: int = 11, **kw) -> RAM:
    return RAM(num_classes=num_classes, image_size=32, swin=TINY_SWIN, text_config=BertConfig(**TINY_BERT),
               head_config=BertConfig(**dict(TINY_BERT, num_attention_heads=4)), embed_dim=16,
               lora_rank=lora_rank, **kw).eval()


def randomize(model: torch.nn.Module, std: float = 0.3) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-off costs on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("ram_swin_large_manifest.json")


def _entries(model: torch.nn.Module):
    return {k: [*v.shape, str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()}


@pytest.mark.parametrize("rank,key", [(0, "ram_swin_large_14m"), (8, "dape_ramlora_full")])
def test_full_size_matches_manifest(manifest, rank, key):
    with torch.device("meta"):
        model = RAM(lora_rank=rank)
    ref = manifest[key]
    entries = _entries(model)
    assert len(entries) == ref["num_keys"]
    assert list(entries) == list(ref["state_dict"])  # same names, same order
    assert entries == ref["state_dict"]  # same shapes and dtypes
    persistent = sorted(k for k, _ in model.named_buffers() if k in entries)
    assert persistent == sorted(ref["buffers"])
    assert sum(p.numel() for p in model.parameters()) == ref["unique_param_numel"]
    assert sum(math.prod(v[:-1]) for v in entries.values()) == ref["state_dict_numel"]


def test_full_size_tied_groups_and_lora_keys(manifest):
    with torch.device("meta"):
        ram, dape = RAM(), RAM(lora_rank=8)
    groups = sorted(sorted(g) for g in tied_weight_groups(ram))
    assert groups == sorted(sorted(g) for g in manifest["ram_swin_large_14m"]["shared_tensor_groups"])
    lora = manifest["dape_lora_keys"]["state_dict"]
    ours = {k: v for k, v in _entries(dape).items() if is_lora_key(k)}
    assert ours == lora and len(ours) == 248
    assert sorted(set(_entries(dape)) - set(_entries(ram))) == sorted(manifest["diff_ramlora_vs_ram"]["only_in_ramlora"])


def test_swin_output_and_mean_token():
    swin = SwinTransformer(image_size=32, **TINY_SWIN).eval()
    out = swin(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 1 + 1, 64)  # 32/4 = 8 -> 4 -> 2 -> 1 token, 8 * 2^3 channels
    swin64 = SwinTransformer(image_size=64, **TINY_SWIN).eval()
    out = swin64(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1 + 4, 64)
    torch.testing.assert_close(out[:, 0], out[:, 1:].mean(dim=1))
    with pytest.raises(ValueError, match="64x64"):
        swin64(torch.rand(1, 3, 32, 32))


def test_window_attention_matches_naive_relative_bias():
    """One unshifted window covering the grid = full attention with bias[dy + w - 1, dx + w - 1]."""
    torch.manual_seed(0)
    w, dim, heads = 3, 8, 2
    blk = SwinBlock(dim, (w, w), heads, window=w, shift=0).eval()
    randomize(blk.attn, 0.5)
    x = torch.randn(2, w * w, dim)
    attn = blk.attn
    table = attn.relative_position_bias_table.view(2 * w - 1, 2 * w - 1, heads)
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(2, w * w, 3, heads, dim // heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    expected = torch.zeros(2, w * w, heads, dim // heads)
    for i in range(w * w):
        yi, xi = divmod(i, w)
        scores = []
        for j in range(w * w):
            yj, xj = divmod(j, w)
            bias = table[yi - yj + w - 1, xi - xj + w - 1]
            scores.append((q[:, i] * k[:, j]).sum(-1) / math.sqrt(dim // heads) + bias)
        p = torch.softmax(torch.stack(scores, dim=-1), dim=-1)  # [B, heads, N]
        expected[:, i] = torch.einsum("bhn,bnhd->bhd", p, v)
    expected = F.linear(expected.reshape(2, w * w, dim), attn.proj.weight, attn.proj.bias)
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_shifted_window_mask_separates_regions():
    res, w, s = 8, 4, 2
    blk = SwinBlock(8, (res, res), 2, window=w, shift=s)
    mask = blk.attn_mask
    assert mask.shape == ((res // w) ** 2, w * w, w * w)

    def region(c):  # region of a coordinate of the rolled grid along one axis
        return 0 if c < res - w else (1 if c < res - s else 2)

    for win in range(mask.shape[0]):
        wy, wx = divmod(win, res // w)
        coords = [(wy * w + i // w, wx * w + i % w) for i in range(w * w)]
        for a, (ya, xa) in enumerate(coords):
            for b, (yb, xb) in enumerate(coords):
                same = (region(ya), region(xa)) == (region(yb), region(xb))
                assert mask[win, a, b].item() == (0.0 if same else -100.0)
    assert SwinBlock(8, (4, 4), 2, window=4, shift=2).attn_mask is None  # window >= resolution: no shift


def test_patch_merging_order():
    pm = PatchMerging(1, (2, 2))
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]]).view(1, 4, 1)  # row-major (y, x): (0,0) (0,1) (1,0) (1,1)
    with torch.no_grad():
        pm.norm.weight.fill_(1.0)
        pm.norm.bias.zero_()
        pm.reduction.weight.copy_(torch.eye(2, 4))
    gathered = x.view(1, 2, 2, 1)
    cat = torch.cat([gathered[:, 0::2, 0::2], gathered[:, 1::2, 0::2], gathered[:, 0::2, 1::2],
                     gathered[:, 1::2, 1::2]], -1).view(1, 1, 4)  # Swin's order x0, x1, x2, x3
    expected = F.layer_norm(cat, (4,), eps=1e-5)[..., :2]
    torch.testing.assert_close(pm(x), expected)


def test_lora_linear_closed_form():
    torch.manual_seed(0)
    lin = LoRALinear(6, 5, rank=2, alpha=4.0)
    assert lin.lora_A.shape == (2, 6) and lin.lora_B.shape == (5, 2)
    x = torch.randn(3, 6)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias))  # B = 0 at init
    with torch.no_grad():
        lin.lora_B.normal_()
    expected = F.linear(x, lin.weight, lin.bias) + 2.0 * x @ lin.lora_A.T @ lin.lora_B.T
    torch.testing.assert_close(lin(x), expected)


def test_merged_lora_changes_only_q_and_v():
    torch.manual_seed(0)
    c, r = 4, 3
    lin = MergedLoRALinear(c, 3 * c, rank=r, enable=(True, False, True))
    assert lin.lora_A.shape == (2 * r, c) and lin.lora_B.shape == (2 * c, r)
    with torch.no_grad():
        lin.lora_B.normal_()
    x = torch.randn(5, c)
    base = F.linear(x, lin.weight, lin.bias)
    out = lin(x)
    s = 1.0 / r
    torch.testing.assert_close(out[:, :c], base[:, :c] + s * x @ lin.lora_A[:r].T @ lin.lora_B[:c].T)
    torch.testing.assert_close(out[:, c:2 * c], base[:, c:2 * c])
    torch.testing.assert_close(out[:, 2 * c:], base[:, 2 * c:] + s * x @ lin.lora_A[r:].T @ lin.lora_B[c:].T)
    assert set(lora_state_dict(lin)) == {"lora_A", "lora_B"}
    assert set(lin.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}


def _naive_head_logits(model: RAM, images: torch.Tensor) -> torch.Tensor:
    """RAM's tagging path written out with explicit tensor algebra from the state dict."""
    sd = model.state_dict()
    tokens = F.linear(model.visual_encoder(images), sd["image_proj.weight"], sd["image_proj.bias"])
    h = torch.relu(F.linear(sd["label_embed"], sd["wordvec_proj.weight"], sd["wordvec_proj.bias"]))
    h = h.unsqueeze(0).expand(images.shape[0], -1, -1)
    heads = model.tagging_head.config.num_attention_heads
    for i in range(model.tagging_head.config.num_hidden_layers):
        p = f"tagging_head.encoder.layer.{i}."

        def lin(name, t, p=p):
            w = sd[p + name + ".weight"]
            if name.endswith(("query", "key")) and p + name + ".lora_A" in sd:
                m = model.get_submodule(p + name)
                w = m.effective_weight()
            return F.linear(t, w, sd[p + name + ".bias"])

        def ln(name, t, p=p):
            return F.layer_norm(t, t.shape[-1:], sd[p + name + ".weight"], sd[p + name + ".bias"], eps=1e-12)

        q = lin("crossattention.self.query", h)
        k = lin("crossattention.self.key", tokens)
        v = lin("crossattention.self.value", tokens)
        b, n, c = q.shape
        d = c // heads
        qh, kh, vh = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vh
        att = att.transpose(1, 2).reshape(b, n, c)
        h = ln("crossattention.output.LayerNorm", lin("crossattention.output.dense", att) + h)
        ff = F.gelu(lin("intermediate.dense", h))
        h = ln("output.LayerNorm", lin("output.dense", ff) + h)
    return F.linear(h, sd["fc.weight"], sd["fc.bias"]).squeeze(-1)


@pytest.mark.parametrize("rank", [0, 4])
def test_tag_logits_match_explicit_computation(rank):
    model = tiny_ram(lora_rank=rank)
    randomize(model)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model.tag_logits(images)
        expected = _naive_head_logits(model, images)
    assert logits.shape == (3, 11)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_tied_weights_and_lora_sharers():
    model = tiny_ram(lora_rank=4)
    head_q = model.tagging_head.encoder.layer[0].crossattention.self.query
    enc_q = model.tag_encoder.encoder.layer[0].crossattention.self.query
    assert head_q.weight is enc_q.weight and head_q.bias is enc_q.bias
    assert head_q.lora_A is not enc_q.lora_A  # adapters are not tied
    with torch.no_grad():
        head_q.lora_B.normal_()
        enc_q.lora_B.normal_()
    # loralib eval-mode semantics: the shared weight carries both sharers' updates.
    expected = head_q.weight + head_q.scaling * (head_q.lora_B @ head_q.lora_A + enc_q.lora_B @ enc_q.lora_A)
    torch.testing.assert_close(head_q.effective_weight(), expected)
    dec = model.text_decoder
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    assert dec.cls.predictions.decoder.bias is dec.cls.predictions.bias
    assert "tag_encoder.encoder.layer.1.output.dense.weight" in model.state_dict()


def test_text_modules_optional():
    model = tiny_ram(text_modules=False)
    assert not any(k.startswith(("tag_encoder.", "text_decoder.")) for k in model.state_dict())
    assert tied_weight_groups(model) == []
    assert model.tag_logits(torch.rand(1, 3, 32, 32)).shape == (1, 11)


def test_text_decoder_is_causal():
    torch.manual_seed(0)
    dec = RAMBertLMHeadModel(BertConfig(**TINY_BERT)).eval()
    ids = torch.randint(1, 64, (2, 6))
    ctx = torch.randn(2, 5, 32)
    logits = dec(ids, encoder_hidden_states=ctx)
    assert logits.shape == (2, 6, 64)
    changed = ids.clone()
    changed[:, 4:] = (changed[:, 4:] % 63) + 1
    torch.testing.assert_close(dec(changed, encoder_hidden_states=ctx)[:, :4], logits[:, :4])
    assert not torch.allclose(dec(changed, encoder_hidden_states=ctx)[:, 4:], logits[:, 4:])
