"""Building SAM 2.1 from transformers' Sam2* classes: the four released sizes name by name and shape by shape
against the published code's own key lists, the configurable parts (FPN interpolation, global-attention blocks,
multimask count, object-score head, high-resolution skips), any input size, seeded initialisation, and parity
with transformers' own `Sam2Model` on a tiny configuration."""
import json
import os

import pytest
import torch
from torch import nn
from transformers import Sam2Config, Sam2Model

from rass.checkpoint.sam2_keys import is_ignored_sam2_key, project_to_original
from rass.modeling.sam2 import (
    SAM2_VARIANTS, build_sam2, build_sam2_image_encoder, build_sam2_mask_decoder, build_sam2_prompt_encoder,
    sam2_variant, trunk_block_dims,
)
from rass.utils.errors import UserValueError
from tests.conftest import load_manifest

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "sam2_keys")
RELEASED = ["tiny", "small", "base_plus", "large"]


def reference_keys(variant):
    with open(os.path.join(REFERENCE, f"sam2.1_hiera_{variant}.json")) as f:
        return json.load(f)["keys"]


@pytest.fixture(scope="module")
def tiny():
    return build_sam2("test", generator=torch.Generator().manual_seed(0))


def _points(seed, batch=1, prompts=2, n=2, size=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, prompts, n, 2, generator=g) * size, torch.ones(batch, prompts, n, dtype=torch.long)


@pytest.mark.parametrize("variant", RELEASED)
def test_released_sizes_match_the_published_key_lists_name_by_name_and_shape_by_shape(variant):
    model = build_sam2(variant, device="meta")
    ours = {project_to_original(n): list(v.shape) for n, v in model.state_dict().items()}
    assert None not in ours
    ref = reference_keys(variant)
    image_model = {n: s for n, s in ref.items() if not is_ignored_sam2_key(n)}
    assert ours == image_model
    # what the image model leaves out is exactly the video model's memory parts
    left_out = sorted(set(ref) - set(image_model))
    memory = {"memory_attention", "memory_encoder", "mask_downsample", "obj_ptr_proj", "obj_ptr_tpos_proj",
              "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"}
    assert left_out and all(n.split(".")[0] in memory for n in left_out)


def test_base_plus_reference_list_is_the_manifests_checkpoint_key_set():
    manifest = load_manifest("mgd_sam2_manifest.json")["sam2.1_hiera_base_plus"]["entries"]
    assert reference_keys("base_plus") == {n: list(s) for n, s in manifest.items()}
    assert len(manifest) == 615


def test_variant_hyper_parameters_are_the_official_ones():
    b = sam2_variant("base_plus")
    assert (b.embed_dim, b.num_heads, b.stages, b.global_attn_blocks, b.window_spec, b.bkg_size) == \
        (112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), 14)
    large = sam2_variant("large")
    assert (large.stage_dims, large.global_attn_blocks, large.window_spec) == ([144, 288, 576, 1152], (23, 33, 43),
                                                                               (8, 4, 16, 8))
    assert [sam2_variant(v).depth for v in RELEASED] == [12, 16, 24, 48]
    with torch.device("meta"):
        encoder = build_sam2_image_encoder("base_plus", global_attn_blocks=[12, 16, 10])
    assert trunk_block_dims(encoder) == [112] * 3 + [224] * 3 + [448] * 16 + [896] * 2
    windows = [block.window_size for block in encoder.trunk.blocks]
    assert [i for i, w in enumerate(windows) if w == 0] == [10, 12, 16]  # MGD-SAM2's global blocks
    assert windows[20] == 14 and windows[2] == 8 and windows[23] == 7


def test_test_size_is_small(tiny):
    assert 1e5 < sum(p.numel() for p in tiny.parameters()) < 5e5


@pytest.mark.parametrize("size", [64, 96, 128])
def test_image_encoder_gives_strides_4_8_16_for_any_size(tiny, size):
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    features, pos = tiny.image_encoder(pixels)
    hidden = SAM2_VARIANTS["test"].hidden_dim
    assert [tuple(f.shape) for f in features] == [(2, hidden, size // s, size // s) for s in (4, 8, 16)]
    assert [tuple(p.shape) for p in pos] == [tuple(f.shape) for f in features]
    low, iou, obj = tiny.predict(tiny.image_features(pixels), *_points(0, batch=2, size=size), multimask_output=True)
    assert tuple(low.shape) == (2, 2, 3, size // 4, size // 4) and tuple(iou.shape) == (2, 2, 3)
    assert tuple(obj.shape) == (2, 2, 1)


def test_bad_sizes_and_names_are_one_line_user_errors(tiny):
    with pytest.raises(UserValueError, match=r"MODEL.SAM2.IMAGE_SIZE 100: expected a positive multiple of 32"):
        build_sam2("base_plus", image_size=100, device="meta")
    with pytest.raises(UserValueError, match=r"unknown SAM2 variant 'huge'"):
        sam2_variant("huge")
    with pytest.raises(UserValueError, match=r"GLOBAL_ATTN_BLOCKS \[3, 24\]: expected distinct block indexes in 0..23"):
        build_sam2("base_plus", global_attn_blocks=[3, 24], device="meta")
    with pytest.raises(UserValueError, match=r"blocks \[5\] pool their queries \(first blocks of stages 2-4: "
                                             r"\[2, 5, 21\]\) and must stay windowed"):
        build_sam2("base_plus", global_attn_blocks=[5, 12], device="meta")
    with pytest.raises(UserValueError, match=r"FPN_INTERP 'bicubic'"):
        build_sam2("test", fpn_interp="bicubic", device="meta")
    with pytest.raises(UserValueError, match=r"OBJ_SCORE_HEAD 'conv'"):
        build_sam2_mask_decoder(obj_score_head="conv")
    with pytest.raises(ValueError, match=r"expected pixels \[N, 3, S, S\] with S a multiple of 32"):
        tiny.image_encoder(torch.zeros(1, 3, 48, 48))


def test_fpn_interpolation_changes_only_the_top_down_level():
    encoders = [build_sam2_image_encoder("test", fpn_interp=mode, generator=torch.Generator().manual_seed(3))
                for mode in ("nearest", "bilinear")]
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    nearest, bilinear = (e(pixels)[0] for e in encoders)
    torch.testing.assert_close(nearest[0], bilinear[0], rtol=0, atol=0)  # stride 4 and 8: no top-down path
    torch.testing.assert_close(nearest[1], bilinear[1], rtol=0, atol=0)
    assert (nearest[2] - bilinear[2]).abs().max() > 1e-3  # stride 16 = lateral + upsampled stride 32
    # closed form: the nearest top-down term is the stride-32 map repeated 2 x 2
    e = encoders[0]
    stages = e.trunk(pixel_values=pixels).intermediate_hidden_states
    lateral16 = e.neck.convs[1](stages[2].permute(0, 3, 1, 2))
    top32 = e.neck.convs[0](stages[3].permute(0, 3, 1, 2))
    expected = lateral16 + top32.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(nearest[2], expected)


def test_decoder_options_multimask_count_object_head_and_skips():
    mgd = build_sam2_mask_decoder(num_multimask_outputs=1, obj_score_head="linear", variant="test",
                                  generator=torch.Generator().manual_seed(0))
    assert tuple(mgd.mask_tokens.weight.shape) == (2, 64) and isinstance(mgd.pred_obj_score_head, nn.Linear)
    assert mgd.iou_prediction_head.proj_out.out_features == 2
    assert isinstance(mgd.transformer, nn.Module) and len(mgd.transformer.layers) == 2
    plain = build_sam2_mask_decoder(use_high_res_features=False, variant="test")
    assert not hasattr(plain, "conv_s0") and not hasattr(plain, "conv_s1")
    prompt = build_sam2_prompt_encoder(64, variant="test", generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    embed = torch.randn(1, 64, 4, 4, generator=g)
    feats = [torch.randn(1, 8, 16, 16, generator=g), torch.randn(1, 16, 8, 8, generator=g)]
    sparse, _ = prompt(input_points=_points(0)[0], input_labels=_points(0)[1], input_boxes=None, input_masks=None)
    args = dict(image_embeddings=embed, image_positional_embeddings=prompt.dense_pe((4, 4)),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=prompt.no_mask_dense(1, (4, 4)))
    masks, iou, _, obj = mgd(multimask_output=True, high_resolution_features=feats, **args)
    assert tuple(masks.shape) == (1, 2, 1, 16, 16) and tuple(obj.shape) == (1, 2, 1)  # token 1 only
    single, _, _, _ = mgd(multimask_output=False, high_resolution_features=feats, **args)
    assert (single - masks).abs().max() > 0  # token 0 is another mask
    masks, _, _, _ = plain(multimask_output=False, **args)
    assert tuple(masks.shape) == (1, 2, 1, 16, 16)
    with pytest.raises(ValueError, match="required with use_high_res_features=True"):
        mgd(multimask_output=True, **args)


def test_dense_pe_is_sam2s_grid_encoding():
    prompt = build_sam2_prompt_encoder(64, variant="test", generator=torch.Generator().manual_seed(5))
    pe = prompt.dense_pe((3, 5))
    gauss = prompt.shared_embedding.positional_embedding
    y, x = 1, 4  # cell centre (x + 0.5) / w, (y + 0.5) / h, mapped to [-1, 1], then sin / cos of 2 pi (c @ G)
    c = torch.tensor([(x + 0.5) / 5, (y + 0.5) / 3]) * 2 - 1
    proj = 2 * torch.pi * (c @ gauss)
    torch.testing.assert_close(pe[0, :, y, x], torch.cat([proj.sin(), proj.cos()]))


def test_initialisation_is_seeded_by_the_generator_and_leaves_the_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_sam2("test", generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_sam2("test", generator=torch.Generator().manual_seed(7))
    c = build_sam2("test", generator=torch.Generator().manual_seed(8))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["mask_decoder.iou_token.weight"], sc["mask_decoder.iou_token.weight"])
    assert 0.01 < float(sa["no_memory_embedding"].std()) < 0.03  # SAM2: trunc_normal_(std=0.02)
    assert not sa["image_encoder.trunk.pos_embed"].any()  # SAM2: zeros


def test_outputs_depend_on_the_image_and_the_prompts(tiny):
    g = torch.Generator().manual_seed(9)
    images = torch.randn(2, 3, 64, 64, generator=g)
    feats = tiny.image_features(images)
    coords, labels = _points(1, batch=2)
    low, _, _ = tiny.predict(feats, coords, labels, False)
    assert (low[0] - low[1]).abs().max() > 1e-3  # same prompts, other image
    moved, _, _ = tiny.predict(feats, coords.flip(-1), labels, False)
    assert (moved - low).abs().max() > 1e-3
    negative, _, _ = tiny.predict(feats, coords, torch.zeros_like(labels), False)
    assert (negative - low).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"point labels must be in \(-1, 0, 1, 2, 3\), got \[5\]"):
        tiny.predict(feats, coords, torch.full_like(labels, 5), False)


def test_parity_with_transformers_sam2model_on_a_tiny_config(tiny):
    v = SAM2_VARIANTS["test"]
    trunk = tiny.image_encoder.trunk.config.to_dict()
    config = Sam2Config(
        vision_config=dict(backbone_config=trunk, backbone_channel_list=v.stage_dims[::-1],
                           backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]], fpn_hidden_size=v.hidden_dim),
        prompt_encoder_config=dict(hidden_size=v.hidden_dim, image_size=64, patch_size=16,
                                   mask_input_channels=v.mask_in_chans),
        mask_decoder_config=dict(hidden_size=v.hidden_dim, mlp_dim=v.decoder_mlp_dim,
                                 iou_head_hidden_dim=v.iou_head_hidden_dim, dynamic_multimask_via_stability=False))
    hf = Sam2Model(config).eval()
    state = {}
    for name, value in tiny.state_dict().items():
        name = name.replace("image_encoder.trunk.", "vision_encoder.backbone.")
        name = name.replace("image_encoder.neck.", "vision_encoder.neck.")
        state[name] = value
    state["prompt_encoder.point_embed.weight"] = tiny.prompt_encoder.point_embed.weight.detach()
    for i in range(4):
        del state[f"prompt_encoder.point_embed.{i}.weight"]
    state["shared_image_embedding.positional_embedding"] = state["prompt_encoder.shared_embedding.positional_embedding"]
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    g = torch.Generator().manual_seed(11)
    pixels = torch.randn(1, 3, 64, 64, generator=g)
    coords = torch.rand(1, 2, 3, 2, generator=g) * 64
    labels = torch.tensor([[[1, 0, 1], [2, 3, 1]]])  # a box (corners 2 / 3) with a point in the second prompt
    with torch.no_grad():
        ours = tiny.predict(tiny.image_features(pixels), coords, labels, True)
        theirs = hf(pixel_values=pixels, input_points=coords, input_labels=labels, multimask_output=True)
    assert (ours[0] - theirs.pred_masks).abs().max() < 1e-5 and ours[0].abs().max() > 1e-2
    torch.testing.assert_close(ours[1], theirs.iou_scores, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[2], theirs.object_score_logits, rtol=0, atol=1e-5)
