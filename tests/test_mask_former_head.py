"""Checkpoint compatibility of the Mask2Former head and its building blocks' conventions."""
from __future__ import annotations

import math
import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from rass.config import setup_cfg
from tests.conftest import load_manifest
from rass.modeling.criterion import SetCriterion
from rass.modeling.pixel_decoder import MSDeformAttn, build_pixel_decoder
from rass.modeling.transformer_decoder import PositionEmbeddingSine, build_transformer_decoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50 = os.path.join(ROOT, "configs", "ade20k", "semantic-segmentation", "maskformer2_R50_bs16_160k.yaml")
# The RASS backbone's outputs: res2..res5, 512 channels each, strides 4..32.
RASS_SHAPES = {f"res{i}": ShapeSpec(channels=512, stride=2**i) for i in range(2, 6)}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("rass_full_manifest.json")


def test_head_and_criterion_names_and_shapes_match_released_model(manifest):
    cfg = setup_cfg(R50)
    with torch.device("meta"):
        head = build_sem_seg_head(cfg, RASS_SHAPES)
        criterion = SetCriterion(cfg, num_classes=head.num_classes)
    ours = {f"sem_seg_head.{k}": [*v.shape, str(v.dtype).replace("torch.", "")] for k, v in head.state_dict().items()}
    ours.update({f"criterion.{k}": [*v.shape, str(v.dtype).replace("torch.", "")] for k, v in criterion.state_dict().items()})
    ref = {k: v for k, v in manifest.items() if k.startswith(("sem_seg_head.", "criterion."))}
    assert len(ref) == 293
    assert sorted(set(ref) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(ref)) == [], "unexpected keys"
    assert {k: v for k, v in ours.items() if ref[k] != v} == {}
    # 20.07M head parameters, as in the released model's trainable manifest.
    assert sum(p.numel() for p in head.parameters()) == sum(math.prod(v[:-1]) for k, v in ref.items() if k.startswith("sem_seg_head."))


def test_released_state_dict_loads_strictly(manifest):
    """A state dict with the released names/shapes loads with no missing or unexpected key."""
    cfg = setup_cfg(R50)
    with torch.device("meta"):
        head = build_sem_seg_head(cfg, RASS_SHAPES)
        state = {
            k[len("sem_seg_head."):]: torch.empty(v[:-1], dtype=getattr(torch, v[-1]))
            for k, v in manifest.items() if k.startswith("sem_seg_head.")
        }
    result = head.load_state_dict(state, strict=True, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


def test_registries_name_unknown_components():
    cfg = setup_cfg(R50, ["MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "NoSuchDecoder"])
    with pytest.raises(KeyError, match="PIXEL_DECODER_NAME: 'NoSuchDecoder' is not registered.*MSDeformAttnPixel"):
        build_pixel_decoder(cfg, RASS_SHAPES)
    cfg = setup_cfg(R50, ["MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "Nope"])
    with pytest.raises(KeyError, match="TRANSFORMER_DECODER_NAME: 'Nope' is not registered.*MultiScaleMasked"):
        build_transformer_decoder(cfg, 256)
    cfg = setup_cfg(R50, ["MODEL.SEM_SEG_HEAD.IN_FEATURES", "['res2', 'res3', 'res4', 'p6']"])
    with pytest.raises(ValueError, match=r"IN_FEATURES \['p6'\]"):
        build_pixel_decoder(cfg, RASS_SHAPES)


def test_position_encoding_closed_form():
    pe = PositionEmbeddingSine(4, temperature=100.0, normalize=True)
    out = pe(torch.zeros(1, 3, 2, 5))
    assert out.shape == (1, 8, 2, 5)
    scale = 2 * math.pi
    y = (torch.arange(2, dtype=torch.float32) + 1) / (2 + 1e-6) * scale
    x = (torch.arange(5, dtype=torch.float32) + 1) / (5 + 1e-6) * scale
    # channels: y: sin(y), cos(y), sin(y/100^(2/4)), cos(...); then the same for x.
    torch.testing.assert_close(out[0, 0, :, 0], y.sin())
    torch.testing.assert_close(out[0, 1, :, 0], y.cos())
    torch.testing.assert_close(out[0, 3, :, 2], (y / 10.0).cos())
    torch.testing.assert_close(out[0, 4, 0, :], x.sin())
    torch.testing.assert_close(out[0, 6, 1, :], (x / 10.0).sin())


def test_deformable_attention_initial_sampling_pattern():
    """At initialisation each head looks along its own direction, 1..P pixels away, with uniform weights."""
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    expected_dirs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    for k in range(3):
        torch.testing.assert_close(bias[:, 0, k], expected_dirs * (k + 1), atol=1e-6, rtol=0)
        torch.testing.assert_close(bias[:, 1, k], expected_dirs * (k + 1), atol=1e-6, rtol=0)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
