"""SAM on transformers' SamModel: variant configs, the original-name map against the published
manifest (vit_b/l/h built on meta), tiny CPU forward with every prompt kind, SAM's preprocessing."""
import pytest
import torch

from rass.checkpoint.sam_keys import (
    TIED_HF_KEY, hf_to_original_keys, hf_to_original_name, original_to_hf_keys, original_to_hf_name,
)
from rass.modeling.sam import SamImageTransform, build_sam, sam_config, sam_image_embeddings, sam_predict
from tests.conftest import load_manifest

VARIANTS = {"vit_b": (768, 12, 12, [2, 5, 8, 11], 314), "vit_l": (1024, 24, 16, [5, 11, 17, 23], 482),
            "vit_h": (1280, 32, 16, [7, 15, 23, 31], 594)}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("sam_vit_manifest.json")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sam_config_facts(variant):
    dim, depth, heads, global_idx, _ = VARIANTS[variant]
    cfg = sam_config(variant)
    v = cfg.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (dim, depth, heads)
    assert list(v.global_attn_indexes) == global_idx
    assert (v.window_size, v.patch_size, v.image_size, v.mlp_dim, v.output_channels) == (14, 16, 1024, 4 * dim, 256)
    assert v.layer_norm_eps == 1e-6
    assert cfg.prompt_encoder_config.hidden_size == 256 and cfg.prompt_encoder_config.image_embedding_size == 64
    d = cfg.mask_decoder_config
    assert (d.hidden_size, d.num_hidden_layers, d.num_attention_heads, d.mlp_dim, d.attention_downsample_rate) == \
        (256, 2, 8, 2048, 2)
    # segment-anything: TwoWayTransformer's nn.LayerNorm (1e-5); mask_downscaling's LayerNorm2d (1e-6)
    assert d.layer_norm_eps == 1e-5 and cfg.prompt_encoder_config.layer_norm_eps == 1e-6


def test_sam_config_errors():
    from rass.utils.errors import UserValueError

    with pytest.raises(UserValueError, match=r"MODEL.SAM.VARIANT.*'vit_x'.*vit_b"):
        sam_config("vit_x")
    with pytest.raises(UserValueError, match=r"IMAGE_SIZE.*1000.*16"):
        sam_config("vit_b", 1000)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_meta_built_sam_matches_manifest_name_by_name(variant, manifest):
    ref = manifest[f"sam_{variant}"]
    original = {k: v[:-1] for k, v in ref["keys"].items()}
    assert len(original) == ref["num_keys"] == VARIANTS[variant][4]
    model = build_sam(variant, device="meta")
    own = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(own) == ref["num_keys"] + 1  # + the tied shared_image_embedding copy
    for name, shape in original.items():
        hf = original_to_hf_name(name)
        assert hf in own, (name, hf)
        assert own[hf] == shape, (name, own[hf], shape)
        assert hf_to_original_name(hf) == name
    back = hf_to_original_keys(own)
    assert back == original  # every model entry has an original name with the manifest's shape, none extra
    assert original_to_hf_keys(original) == own
    numel = {part: 0 for part in ("image_encoder", "prompt_encoder", "mask_decoder")}
    for name, shape in back.items():
        numel[name.split(".")[0]] += torch.Size(shape).numel()
    assert numel == dict(ref["numel_by_part"]) and sum(numel.values()) == ref["numel"]


def test_vit_b_name_table_equals_manifest_hf_keys(manifest):
    table = manifest["sam_vit_b"]["hf_key"]
    assert len(table) == 314 and manifest["sam_vit_b"]["hf_num_keys"] == 315
    assert {k: original_to_hf_name(k) for k in table} == table
    assert {v: hf_to_original_name(v) for v in table.values()} == {v: k for k, v in table.items()}
    assert hf_to_original_name(TIED_HF_KEY) is None


def test_glesam_trainable_decoder_subset_counts(manifest):
    """GleSAM trains mask-decoder params whose (original) name lacks 'iou': 113 tensors, 3,925,472 values."""
    model = build_sam("vit_l", device="meta")
    names = {hf_to_original_name(n): p.numel() for n, p in model.mask_decoder.named_parameters(prefix="mask_decoder")}
    chosen = {n: c for n, c in names.items() if "iou" not in n}
    ref = manifest["sam_vit_l"]
    assert len(chosen) == ref["glesam_trainable_keys"] == 113
    assert sum(chosen.values()) == ref["glesam_trainable_numel"] == 3925472


def test_name_map_strips_module_drops_pixel_stats_and_keeps_unknown():
    sd = {"module.image_encoder.neck.2.weight": 1, "module.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": 2,
          "pixel_mean": 3, "module.pixel_std": 4, "mask_decoder.robust_mlp.weight": 5}
    hf = original_to_hf_keys(sd)
    assert hf == {"vision_encoder.neck.conv2.weight": 1, "prompt_encoder.shared_embedding.positional_embedding": 2,
                  TIED_HF_KEY: 2, "mask_decoder.robust_mlp.weight": 5}
    back = hf_to_original_keys({"module." + k: v for k, v in hf.items()})
    assert back == {"image_encoder.neck.2.weight": 1, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": 2,
                    "mask_decoder.robust_mlp.weight": 5}
    # only the tied copy present: it becomes the prompt encoder's matrix
    assert hf_to_original_keys({TIED_HF_KEY: 7}) == {"prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": 7}


# ----------------------------------------------------------------------------------------------- tiny forward
@pytest.fixture(scope="module")
def tiny():
    model = build_sam("tiny")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture(scope="module")
def embeddings(tiny):
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 256, 256, generator=g)
    with torch.no_grad():
        return sam_image_embeddings(tiny, pixels)


def _points(b=2, p=3, n=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, p, n, 2, generator=g) * 255, torch.ones(b, p, n, dtype=torch.long)


def _boxes(b=2, p=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, p, 2, generator=g) * 128
    return torch.cat([xy, xy + 64 + torch.rand(b, p, 2, generator=g) * 60], dim=-1)


def test_tiny_sam_is_small_and_keeps_256_channels(tiny, embeddings):
    assert sum(p.numel() for p in tiny.parameters()) < 4_000_000
    assert embeddings.shape == (2, 256, 16, 16)


@pytest.mark.parametrize("prompt", ["points", "boxes", "points+boxes"])
@pytest.mark.parametrize("multimask", [False, True])
def test_tiny_sam_prompted_output_shapes(tiny, embeddings, prompt, multimask):
    coords, labels = _points() if "points" in prompt else (None, None)
    boxes = _boxes() if "boxes" in prompt else None
    with torch.no_grad():
        logits, iou = sam_predict(tiny, embeddings, coords, labels, boxes, multimask_output=multimask)
    m = 3 if multimask else 1
    assert logits.shape == (2, 3, m, 64, 64) and iou.shape == (2, 3, m)
    assert torch.isfinite(logits).all() and torch.isfinite(iou).all()


def test_padding_point_position_is_ignored_and_labels_matter(tiny, embeddings):
    coords, labels = _points(n=2)
    labels[..., 1] = -1  # second point is "not a point": its coordinates must not matter
    moved = coords.clone()
    moved[..., 1, :] = torch.tensor([3.0, 250.0])
    with torch.no_grad():
        a, ia = sam_predict(tiny, embeddings, coords, labels)
        b, ib = sam_predict(tiny, embeddings, moved, labels)
        neg = labels.clone()
        neg[..., 0] = 0
        c, _ = sam_predict(tiny, embeddings, coords, neg)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert (a - c).abs().max() > 1e-3


def test_prediction_is_per_image(tiny, embeddings):
    coords, labels = _points()
    boxes = _boxes()
    with torch.no_grad():
        both, iou_both = sam_predict(tiny, embeddings, coords, labels, boxes, multimask_output=True)
        one, iou_one = sam_predict(tiny, embeddings[1:], coords[1:], labels[1:], boxes[1:], multimask_output=True)
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou_both[1:], iou_one, atol=1e-5, rtol=1e-5)


def test_sam_predict_input_errors(tiny, embeddings):
    coords, labels = _points()
    with pytest.raises(ValueError, match=r"image_embeddings must be \[B, 256, 16, 16\].*\(2, 256, 8, 8\)"):
        sam_predict(tiny, embeddings[..., :8, :8], coords, labels)
    with pytest.raises(ValueError, match="point_labels must be 1"):
        sam_predict(tiny, embeddings, coords, labels * 2)
    with pytest.raises(ValueError, match="together"):
        sam_predict(tiny, embeddings, coords, None)
    with pytest.raises(ValueError, match=r"same number of prompts P, got 3 and 2"):
        sam_predict(tiny, embeddings, coords, labels, _boxes(p=2))
    with pytest.raises(ValueError, match=r"boxes must be \[B, P, 4\]"):
        sam_predict(tiny, embeddings, boxes=_boxes()[..., :3])
    with pytest.raises(ValueError, match=r"pixel values \[B, 3, 256, 256\]"):
        sam_image_embeddings(tiny, torch.zeros(1, 3, 128, 128))


# --------------------------------------------------------------------------------------------- preprocessing
def test_resize_rounding_and_zero_padding():
    t = SamImageTransform(1024)
    assert t.get_preprocess_shape(300, 200) == (1024, 683)  # 200 * 1024 / 300 = 682.67 -> 683
    assert t.get_preprocess_shape(200, 300) == (683, 1024)
    assert t.get_preprocess_shape(1500, 1000) == (1024, 683)
    color = torch.tensor([200.0, 10.0, 90.0])
    image = color.view(3, 1, 1).expand(3, 300, 200).to(torch.uint8)
    pixels, hw = t(image)
    assert hw == (1024, 683) and pixels.shape == (1, 3, 1024, 1024) and pixels.dtype == torch.float32
    want = (color - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor([58.395, 57.12, 57.375])
    torch.testing.assert_close(pixels[0, :, :, :683], want.view(3, 1, 1).expand(3, 1024, 683), atol=1e-5, rtol=0)
    assert torch.count_nonzero(pixels[..., 683:]) == 0
    wide, hw2 = t(image.permute(0, 2, 1).float()[None].repeat(2, 1, 1, 1))
    assert hw2 == (683, 1024) and wide.shape == (2, 3, 1024, 1024) and torch.count_nonzero(wide[:, :, 683:]) == 0


def test_resize_is_antialiased_bilinear():
    """Downscaling a 1-pixel checkerboard by 4 with antialias averages it to its mean (127.5)."""
    t = SamImageTransform(64)
    yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    board = (((yy + xx) % 2) * 255).to(torch.uint8).expand(3, 256, 256)
    resized = t.resize(board)
    assert resized.shape == (1, 3, 64, 64)
    torch.testing.assert_close(resized[..., 2:-2, 2:-2], torch.full((1, 3, 60, 60), 127.5), atol=1e-3, rtol=0)


def test_coords_and_boxes_scaled_like_sam():
    t = SamImageTransform(1024)
    pts = torch.tensor([[[0.0, 0.0], [199.0, 299.0], [100.0, 150.0]]])
    out = t.apply_coords(pts, (300, 200))
    want = torch.tensor([[[0.0, 0.0], [199 * 683 / 200, 299 * 1024 / 300], [100 * 683 / 200, 150 * 1024 / 300]]])
    torch.testing.assert_close(out, want)
    assert torch.equal(pts, torch.tensor([[[0.0, 0.0], [199.0, 299.0], [100.0, 150.0]]]))  # input untouched
    boxes = torch.tensor([[[10.0, 20.0, 110.0, 220.0]]])
    torch.testing.assert_close(t.apply_boxes(boxes, (300, 200)),
                               torch.tensor([[[10 * 3.415, 20 * 1024 / 300, 110 * 3.415, 220 * 1024 / 300]]]))
    corner = t.apply_coords(torch.tensor([[200.0, 300.0]]), (300, 200))  # the far corner maps to the valid region's
    torch.testing.assert_close(corner, torch.tensor([[683.0, 1024.0]]))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        t.apply_coords(torch.zeros(3, 3), (300, 200))
    with pytest.raises(ValueError, match=r"RGB image \[3, H, W\].*\(1, 300, 200\)"):
        t(torch.zeros(1, 300, 200))


def test_transform_from_config():
    from detectron2.config import get_cfg

    from rass.config import add_rass_config

    cfg = get_cfg()
    add_rass_config(cfg)
    cfg.MODEL.SAM.IMAGE_SIZE = 256
    t = SamImageTransform(cfg)
    assert t.target == 256 and t.pixel_mean == (123.675, 116.28, 103.53) and t.pixel_std == (58.395, 57.12, 57.375)
    assert cfg.MODEL.SAM.VARIANT == "vit_l" and cfg.MODEL.SAM.MASK_THRESHOLD == 0.0 and not cfg.MODEL.SAM.MULTIMASK_OUTPUT


def test_postprocess_constant_map_stays_constant():
    t = SamImageTransform(1024)
    logits = torch.full((2, 3, 1, 256, 256), 2.5)
    out = t.postprocess_masks(logits, (1024, 683), (300, 200))
    assert out.shape == (2, 3, 1, 300, 200)
    torch.testing.assert_close(out, torch.full_like(out, 2.5))


@pytest.mark.parametrize("axis", ["x", "y"])
def test_postprocess_half_plane_boundary_within_a_pixel(axis):
    """Low-res logits linear in x (or y) with the zero at 400 px of the 1024 frame: after postprocessing the
    mask's boundary in the 300x200 image is at 400 * 200/683 (x) or 400 * 300/1024 (y), within one pixel."""
    t = SamImageTransform(1024)
    centres = (torch.arange(256, dtype=torch.float32) + 0.5) * 4  # low-res pixel centres in the 1024 frame
    ramp = 400.0 - centres
    logits = ramp.view(1, 256).expand(256, 256) if axis == "x" else ramp.view(256, 1).expand(256, 256)
    mask = t.postprocess_masks(logits.clone(), (1024, 683), (300, 200)) > 0
    assert mask.shape == (300, 200)
    if axis == "x":
        expected = 400 * 200 / 683
        counts = mask.sum(dim=1).float()
        assert torch.equal(mask, mask[:1].expand_as(mask))  # every row the same
    else:
        expected = 400 * 300 / 1024
        counts = mask.sum(dim=0).float()
        assert torch.equal(mask, mask[:, :1].expand_as(mask))
    assert (counts - expected).abs().max() <= 1.0


def test_image_to_mask_pipeline_on_tiny(tiny):
    """A 300x200 photo through transform -> encoder -> prompted decoder -> postprocess: masks at 300x200."""
    t = SamImageTransform(256)
    g = torch.Generator().manual_seed(4)
    image = (torch.rand(3, 300, 200, generator=g) * 255).to(torch.uint8)
    pixels, resized_hw = t(image)
    assert resized_hw == (256, 171)  # 200 * 256 / 300 = 170.67 -> 171
    points = t.apply_coords(torch.tensor([[[[50.0, 80.0], [120.0, 200.0]]]]), (300, 200))
    box = t.apply_boxes(torch.tensor([[[20.0, 30.0, 180.0, 290.0]]]), (300, 200))
    with torch.no_grad():
        emb = sam_image_embeddings(tiny, pixels)
        logits, iou = sam_predict(tiny, emb, points, torch.ones(1, 1, 2, dtype=torch.long), box)
    masks = t.postprocess_masks(logits[0, :, 0], resized_hw, (300, 200)) > 0.0
    assert masks.shape == (1, 300, 200) and masks.dtype == torch.bool and iou.shape == (1, 1, 1)
