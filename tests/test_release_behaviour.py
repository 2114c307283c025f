"""Behaviour that must match the RASS release exactly (issue: "RASS evaluates exactly as released"):
padding to a multiple of 8 and the sliding windows that follow, the prompt suffix and cache size,
and the tagger's resize (tiny models on CPU)."""
from __future__ import annotations

import os

import pytest
import torch
from detectron2.modeling import build_backbone, build_model

import rass.modeling  # noqa: F401  (registers the backbone and meta-architectures)
from rass.config import setup_cfg
from rass.modeling.backbone import rass_backbone
from rass.modeling.backbone.sliding_window import window_boxes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASED = os.path.join(ROOT, "configs", "ade20k", "semantic-segmentation", "rass_sd21_bs16_160k.yaml")
TINY_RASS = os.path.join(ROOT, "configs", "quickstart", "tiny_rass.yaml")
TINY_BB = ["MODEL.BACKBONE.NAME", "RASS", "MODEL.DEVICE", "cpu", "MODEL.RASS.ARCH", "tiny",
           "MODEL.FEATURE_PROJECTION.FEATURE_DIMS", "[]", "MODEL.FEATURE_PROJECTION.FEATURE_STRIDES", "[]",
           "MODEL.FEATURE_PROJECTION.PROJECTION_DIM", "128"]


def test_released_config_pads_to_8():
    cfg = setup_cfg(RELEASED, ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 8
    assert setup_cfg(TINY_RASS).MODEL.MASK_FORMER.SIZE_DIVISIBILITY == 8


def test_release_windows_for_padded_sizes():
    # 512x683 -> padded to 512x688, 512-px windows at x = 0 and 176 (the release's slide_forward)
    assert window_boxes(512, 688, 512, 512) == [(0, 0, 512, 512), (0, 176, 512, 688)]
    # 120x180 -> 120x184, 120-px windows at x = 0 and 64
    assert window_boxes(120, 184, 120, 120) == [(0, 0, 120, 120), (0, 64, 120, 184)]


@pytest.mark.parametrize("hw, padded, starts", [((120, 180), (120, 184), [0, 64]),
                                                ((512, 683), (512, 688), [0, 176])])
def test_model_pads_to_8_and_slides_windows_of_any_multiple_of_8(monkeypatch, hw, padded, starts):
    torch.manual_seed(0)
    model = build_model(setup_cfg(TINY_RASS, ["MODEL.DEVICE", "cpu"])).eval()
    seen = {}
    real = rass_backbone.sliding_window_features

    def spy(extract, images, cond, strides, size, stride, batch, align):
        seen["input"] = tuple(images.shape[-2:])
        side = min(images.shape[-2:])
        seen["boxes"] = window_boxes(images.shape[-2], images.shape[-1], side, side)
        crops = []

        def extract_spy(x, c):
            crops.extend([tuple(x.shape[-2:])] * x.shape[0])
            feats = extract(x, c)
            for name, f in feats.items():  # taps resized to floor(side / stride), as released
                assert tuple(f.shape[-2:]) == (side // strides[name], side // strides[name])
            return feats

        out = real(extract_spy, images, cond, strides, size, stride, batch, align)
        seen["crops"] = crops
        return out

    monkeypatch.setattr(rass_backbone, "sliding_window_features", spy)
    h, w = hw
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": h, "width": w}])[0]["sem_seg"]
    assert seen["input"] == padded
    assert [x1 for (_, x1, _, _) in seen["boxes"]] == starts
    assert seen["crops"] == [(h, h)] * len(starts)
    assert tuple(out.shape[-2:]) == (h, w)


def test_window_features_narrower_than_their_slice_are_resized_not_dropped():
    # side 120 at stride 32 gives 3 columns; the window at x = 80 of a 200-wide input owns
    # columns 80 // 32 .. 200 // 32 = 2..6 (4 columns): the release fails here, we resize (nearest).
    from rass.modeling.backbone.sliding_window import sliding_window_features

    def extract(crops, cond):
        n = crops.shape[0]
        return {"res5": crops[:, :1, ::40, ::40][..., :3, :3] * 0 + cond.view(n, 1, 1, 1)}

    x = torch.zeros(1, 3, 120, 200)
    out = sliding_window_features(extract, x, torch.ones(1), {"res5": 32})
    assert tuple(out["res5"].shape) == (1, 1, 3, 6)
    torch.testing.assert_close(out["res5"], torch.ones(1, 1, 3, 6))


def test_backbone_rejects_sizes_that_are_not_multiples_of_8():
    bb = build_backbone(setup_cfg(None, TINY_BB)).eval()
    with pytest.raises(ValueError, match="not a multiple of 8"):
        bb(torch.zeros(1, 3, 60, 64))
    with torch.no_grad():  # 72 = 9 x 8, no multiple of 32: accepted (odd latent sizes)
        out = bb(torch.zeros(1, 3, 72, 72))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "res2": (18, 18), "res3": (9, 9), "res4": (4, 4), "res5": (2, 2)}


def test_prompt_suffix_reaches_the_text_encoder_and_cache_size_0_disables_the_cache():
    bb = build_backbone(setup_cfg(None, TINY_BB + ["MODEL.RASS.PROMPT_SUFFIX", "high quality",
                                                   "MODEL.RASS.PROMPT_CACHE_SIZE", "0"]))
    assert bb.prompt_cache.suffix == "high quality" and bb.prompt_cache.max_size == 0
    with torch.no_grad():
        with_suffix = bb.text_embeddings(["sky, tree"])
        assert len(bb.prompt_cache) == 0  # nothing cached
        bb.prompt_cache.suffix = ""
        plain = bb.text_embeddings(["sky, tree"])
    assert (with_suffix - plain).abs().max() > 1e-4
    cached = build_backbone(setup_cfg(None, TINY_BB + ["MODEL.RASS.PROMPT_CACHE_SIZE", "3"]))
    assert cached.prompt_cache.max_size == 3
    with torch.no_grad():
        cached.text_embeddings(["a", "b", "c", "d"])
    assert len(cached.prompt_cache) == 3
