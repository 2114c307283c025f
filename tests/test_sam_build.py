"""Building SAM as segment-anything does: every LayerNorm epsilon (the two-way transformer's 1e-5 against a
hand-built reference), segment-anything's random initialisation (seeded, image-dependent), and "custom"
SAM shapes from config keys."""
import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamTwoWayAttentionBlock

from rass.modeling.sam import build_sam, init_sam_weights, sam_config, sam_image_embeddings, sam_predict, sam_variant
from rass.utils.errors import UserValueError

# segment-anything (modeling/image_encoder.py, prompt_encoder.py, mask_decoder.py, transformer.py, build_sam.py):
# ViT blocks partial(nn.LayerNorm, eps=1e-6), LayerNorm2d (neck, mask_downscaling, output_upscaling) 1e-6,
# TwoWayTransformer / TwoWayAttentionBlock nn.LayerNorm() = 1e-5.
SAM_EPS = [
    (r"vision_encoder\.layers\.\d+\.layer_norm[12]", 1e-6),
    (r"vision_encoder\.neck\.layer_norm[12]", 1e-6),
    (r"prompt_encoder\.mask_embed\.layer_norm[12]", 1e-6),
    (r"mask_decoder\.transformer\.layers\.\d+\.layer_norm[1234]", 1e-5),
    (r"mask_decoder\.transformer\.layer_norm_final_attn", 1e-5),
    (r"mask_decoder\.upscale_layer_norm", 1e-6),
]


@pytest.fixture(scope="module")
def tiny():
    return build_sam("tiny", generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", ["tiny", "vit_b", "vit_h"])
def test_every_layer_norm_has_segment_anythings_eps(variant):
    model = build_sam(variant, device="meta")
    norms = {n: m.eps for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    depth = model.config.vision_config.num_hidden_layers
    assert len(norms) == 2 * depth + 2 + 2 + 4 * 2 + 1 + 1  # every LayerNorm of SAM, none left out
    for name, eps in norms.items():
        want = [e for pattern, e in SAM_EPS if re.fullmatch(pattern, name)]
        assert len(want) == 1, name
        assert eps == want[0], (name, eps, want[0])
    assert sum(1 for e in norms.values() if e == 1e-5) == 9  # the two-way transformer's nine


def test_two_way_block_equals_a_block_with_plain_nn_layer_norms():
    """One decoder block built from the project's config against the same block with segment-anything's
    `nn.LayerNorm(embedding_dim)` (eps 1e-5): identical outputs; with transformers' default 1e-6 they differ
    (inputs of small variance, where eps matters)."""
    config = sam_config("tiny").mask_decoder_config
    torch.manual_seed(0)  # the block's own (PyTorch default) initialisation
    block = SamTwoWayAttentionBlock(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in block.modules():  # no bias: every LayerNorm input keeps the inputs' small variance
            if isinstance(m, nn.Linear):
                m.bias.zero_()
        for i in range(1, 5):
            norm = getattr(block, f"layer_norm{i}")
            norm.weight.copy_(1 + 0.1 * torch.randn(norm.weight.shape, generator=g))
            norm.bias.copy_(0.1 * torch.randn(norm.bias.shape, generator=g))
    queries = 1e-3 * torch.randn(1, 1, 5, 256, generator=g)
    keys = 1e-3 * torch.randn(1, 1, 64, 256, generator=g)
    query_pe, key_pe = 1e-3 * torch.randn_like(queries), 1e-3 * torch.randn_like(keys)

    def run(b):
        with torch.no_grad():
            return b(queries=queries, keys=keys, query_point_embedding=query_pe, key_point_embedding=key_pe,
                     attention_similarity=None)[:2]

    def with_eps(eps):
        ref = copy.deepcopy(block)
        for i in range(1, 5):
            old = getattr(ref, f"layer_norm{i}")
            new = nn.LayerNorm(256) if eps is None else nn.LayerNorm(256, eps=eps)
            new.load_state_dict(old.state_dict())
            setattr(ref, f"layer_norm{i}", new)
        return ref

    assert with_eps(None).layer_norm1.eps == 1e-5  # segment-anything's nn.LayerNorm(embedding_dim)
    got, want, old = run(block), run(with_eps(None)), run(with_eps(1e-6))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert max((a - b).abs().max() / b.abs().max() for a, b in zip(old, want)) > 1e-2  # the old eps is caught


def test_decoder_output_equals_a_decoder_with_plain_nn_layer_norms(tiny):
    ref = copy.deepcopy(tiny)
    t = ref.mask_decoder.transformer
    pairs = [(layer, f"layer_norm{i}") for layer in t.layers for i in range(1, 5)] + [(t, "layer_norm_final_attn")]
    for owner, name in pairs:
        new = nn.LayerNorm(256)
        new.load_state_dict(getattr(owner, name).state_dict())
        setattr(owner, name, new)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(1, 256, 16, 16, generator=g)
    coords, labels = torch.rand(1, 2, 3, 2, generator=g) * 255, torch.ones(1, 2, 3, dtype=torch.long)
    with torch.no_grad():
        for a, b in zip(sam_predict(tiny, z, coords, labels, multimask_output=True),
                        sam_predict(ref, z, coords, labels, multimask_output=True)):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ initialisation
def test_random_init_has_segment_anythings_scales(tiny):
    enc = tiny.vision_encoder
    assert torch.count_nonzero(enc.pos_embed) == 0
    assert all(torch.count_nonzero(layer.attn.rel_pos_h) == 0 == torch.count_nonzero(layer.attn.rel_pos_w)
               for layer in enc.layers)
    gauss = tiny.shared_image_embedding.positional_embedding  # PositionEmbeddingRandom: randn * scale 1.0
    assert gauss is tiny.prompt_encoder.shared_embedding.positional_embedding
    assert 0.85 < gauss.std().item() < 1.15
    for name, m in tiny.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            bound = 1 / math.sqrt(m.weight[0].numel())  # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))
            assert m.weight.abs().max() <= bound, name
            if m.weight.numel() >= 4096:
                assert abs(m.weight.std().item() - bound / math.sqrt(3)) < 0.05 * bound, name
            if m.bias is not None:
                assert m.bias.abs().max() <= bound and torch.count_nonzero(m.bias) == m.bias.numel(), name
        elif isinstance(m, nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
        elif isinstance(m, nn.Embedding):
            assert m.weight.abs().max() > 0.5, name  # N(0, 1), not transformers' 0.02
    assert 0.8 < tiny.mask_decoder.mask_tokens.weight.std().item() < 1.2


def test_random_init_is_seeded_by_the_callers_generator_or_global_rng():
    state = torch.get_rng_state()
    a = build_sam("tiny", generator=torch.Generator().manual_seed(3)).state_dict()
    assert torch.equal(torch.get_rng_state(), state)  # an explicit generator leaves the global RNG alone
    b = build_sam("tiny", generator=torch.Generator().manual_seed(3)).state_dict()
    c = build_sam("tiny", generator=torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mask_decoder.iou_token.weight"], c["mask_decoder.iou_token.weight"])
    torch.manual_seed(5)
    d = build_sam("tiny").state_dict()
    torch.manual_seed(5)
    e = build_sam("tiny").state_dict()
    assert all(torch.equal(d[k], e[k]) for k in d)
    assert not torch.equal(d["vision_encoder.layers.0.attn.qkv.weight"], a["vision_encoder.layers.0.attn.qkv.weight"])


def test_transformers_init_is_what_made_the_tiny_image_embedding_constant(tiny):
    """The regression: transformers' vision initializer_range (1e-10) gives an embedding that ignores the
    image; segment-anything's initialisation gives one that follows it (and masks that differ)."""
    g = torch.Generator().manual_seed(6)
    pixels = torch.randn(2, 3, 256, 256, generator=g)
    coords, labels = torch.full((2, 1, 1, 2), 100.0), torch.ones(2, 1, 1, dtype=torch.long)
    with torch.no_grad():
        old = sam_image_embeddings(build_sam("tiny", init=False), pixels)
        z = sam_image_embeddings(tiny, pixels)
        low, iou = sam_predict(tiny, z, coords, labels)
    assert old.std() < 1e-12
    assert 0.5 < z.std() < 2.0
    assert (z[0] - z[1]).abs().mean() > 0.3 * z.abs().mean()
    assert ((low[0] > 0) != (low[1] > 0)).float().mean() > 0.01 and not torch.equal(iou[0], iou[1])


def test_init_refuses_parameters_it_does_not_know(tiny):
    model = copy.deepcopy(tiny)
    model.mask_decoder.extra = nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"no segment-anything initialisation for \['mask_decoder.extra'\]"):
        init_sam_weights(model)


# ------------------------------------------------------------------------------------------ custom shapes
def test_custom_variant_from_keys_builds_that_encoder():
    v = sam_variant("custom", embed_dim=48, depth=3, num_heads=3, global_attn_indexes=[2], window_size=5)
    model = build_sam(v, image_size=128, generator=torch.Generator().manual_seed(0))
    c = model.config.vision_config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, list(c.global_attn_indexes), c.window_size,
            c.image_size) == (48, 3, 3, [2], 5, 128)
    assert model.mask_decoder.transformer.layers[0].mlp.lin1.out_features == 2048  # SAM's decoder
    assert model.vision_encoder.layers[0].attn.rel_pos_h.shape == (9, 16)  # window 5: 2*5-1; head dim 48/3
    assert model.vision_encoder.layers[2].attn.rel_pos_h.shape == (15, 16)  # global on the 8x8 grid
    with torch.no_grad():
        z = sam_image_embeddings(model, torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    assert z.shape == (1, 256, 8, 8)
    assert sam_variant("custom", 48, 3, 3).window_size == 14 and sam_variant("custom", 48, 3, 3).global_attn_indexes == ()


@pytest.mark.parametrize("variant,kwargs,message", [
    ("vit_l", {"depth": 4}, r"MODEL.SAM.DEPTH = 4 given with MODEL.SAM.VARIANT 'vit_l'.*'custom' SAM only"),
    ("custom", {"embed_dim": 48, "num_heads": 3}, r"MODEL.SAM.DEPTH = 0: MODEL.SAM.VARIANT 'custom' needs a positive depth"),
    ("custom", {"embed_dim": 50, "depth": 2, "num_heads": 3}, r"EMBED_DIM 50 is not divisible by MODEL.SAM.NUM_HEADS 3"),
    ("custom", {"embed_dim": 48, "depth": 2, "num_heads": 3, "global_attn_indexes": [2]},
     r"GLOBAL_ATTN_INDEXES \[2\]: expected distinct block indexes in 0..1 \(MODEL.SAM.DEPTH 2\)"),
    ("custom", {"embed_dim": 48, "depth": 2, "num_heads": 3, "window_size": -1}, r"WINDOW_SIZE -1"),
    ("vit_x", {}, r"unknown SAM variant 'vit_x'; expected one of \['tiny', 'vit_b', 'vit_h', 'vit_l', 'custom'\]"),
])
def test_variant_errors_name_the_key(variant, kwargs, message):
    with pytest.raises(UserValueError, match=message):
        sam_variant(variant, **kwargs)


def test_custom_promptable_sam_from_config_keys():
    from detectron2.modeling import build_model

    from rass.config import setup_cfg
    from tests.test_promptable_sam import TINY_SAM

    cfg = setup_cfg(TINY_SAM, ["MODEL.SAM.VARIANT", "custom", "MODEL.SAM.EMBED_DIM", "48", "MODEL.SAM.DEPTH", "3",
                               "MODEL.SAM.NUM_HEADS", "3", "MODEL.SAM.GLOBAL_ATTN_INDEXES", "[2]",
                               "MODEL.SAM.WINDOW_SIZE", "5", "MODEL.SAM.IMAGE_SIZE", "128"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    c = model.sam.config.vision_config
    assert (c.hidden_size, c.num_hidden_layers, list(c.global_attn_indexes), c.window_size, c.image_size) == \
        (48, 3, [2], 5, 128)
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    out = model([{"image": image, "boxes": torch.tensor([[5.0, 5.0, 60.0, 50.0]])}], return_intermediates=True)[0]
    assert out["mask_logits"].shape == (1, 64, 96) and out["intermediates"]["z_low"].shape == (1, 256, 8, 8)
    assert F.mse_loss(out["intermediates"]["z_low"], torch.zeros(1, 256, 8, 8)) > 0.1
