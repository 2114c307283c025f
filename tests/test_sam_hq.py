"""HQ-SAM ("PromptableSAMHQ" on transformers' `SamHQModel`): released names and sizes on `meta` name by name,
the name map both ways, strict loading of the released format (round trip, plain-SAM file, another size), the
output rules (SAM + HQ as the release predictor, HQ only, multimask), the early features, box prompts."""
from __future__ import annotations

import json
import os

import pytest
import torch
from detectron2.modeling import build_model
from transformers import SamModel

import rass  # noqa: F401  (registers PromptableSAMHQ)
from rass.checkpoint.fit import CheckpointMismatchError
from rass.checkpoint.sam_hq_keys import (
    HQ_HF_MODULES, HQ_ORIGINAL_MODULES, hf_to_original_hq_keys, hf_to_original_hq_name, original_to_hf_hq_keys,
    original_to_hf_hq_name,
)
from rass.checkpoint.sam_hq_loader import load_sam_hq_checkpoint, save_sam_hq_release
from rass.checkpoint.sam_keys import hf_to_original_keys
from rass.checkpoint.sam_loader import save_sam_original
from rass.config import setup_cfg
from rass.modeling.sam_hq import build_sam_hq, sam_config_of, sam_hq_image_embeddings, sam_hq_predict
from rass.utils.errors import UserValueError
from tests.conftest import REPO

TINY = os.path.join(REPO, "configs", "lqseg", "tiny_sam_hq.yaml")
KEYS = os.path.join(REPO, "tests", "reference", "sam_hq_keys")
BOX = torch.tensor([[[20.0, 30.0, 200.0, 180.0]]])  # SAM's 256-px frame (tiny)


def _reference(variant):
    with open(os.path.join(KEYS, f"sam_hq_{variant}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tiny():
    return build_sam_hq("tiny", generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(setup_cfg(TINY)).eval()


def _pixels(seed):
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_full_size_names_and_shapes_are_the_released_ones(variant):
    ref = _reference(variant)
    model = build_sam_hq(variant, device="meta")
    ours = {n: list(v.shape) for n, v in hf_to_original_hq_keys(model.state_dict()).items()}
    assert sorted(set(ref["keys"]) - set(ours)) == [] and sorted(set(ours) - set(ref["keys"])) == []
    assert {n: s for n, s in ours.items() if s != ref["keys"][n]} == {}
    assert len(ours) == ref["num_keys"] and sum(torch.Size(s).numel() for s in ours.values()) == ref["num_values"]
    # 25 HQ tensors on top of SAM's 314 / 482 / 594; the plain SAM part maps through SAM's own table
    hq = [n for n in ref["keys"] if n.split(".")[1] in HQ_ORIGINAL_MODULES]
    assert len(hq) == 25 and len(ref["keys"]) - 25 == {"vit_b": 314, "vit_l": 482, "vit_h": 594}[variant]
    assert {k for k in hf_to_original_keys(model.state_dict()) if k.split(".")[1] not in HQ_HF_MODULES} == \
        set(ref["keys"]) - set(hq)


def test_name_map_both_ways():
    assert original_to_hf_hq_name("module.mask_decoder.hf_mlp.layers.1.weight") == \
        "mask_decoder.hq_mask_mlp.layers.0.weight"
    assert original_to_hf_hq_name("mask_decoder.compress_vit_feat.3.bias") == "mask_decoder.compress_vit_conv2.bias"
    assert original_to_hf_hq_name("mask_decoder.embedding_maskfeature.1.weight") == "mask_decoder.mask_norm.weight"
    assert original_to_hf_hq_name("mask_decoder.embedding_encoder.2.weight") is None  # a GELU: no tensor
    assert hf_to_original_hq_name("mask_decoder.hq_token.weight") == "mask_decoder.hf_token.weight"
    ref = _reference("vit_b")["keys"]
    hf = original_to_hf_hq_keys(ref)
    assert set(hf) == set(build_sam_hq("vit_b", device="meta").state_dict())
    assert hf_to_original_hq_keys(hf) == ref


def _sam_reference(tiny, z, early, multimask):
    """HQ-SAM's masks composed from a plain `SamModel` with the same weights: the HQ token enters SAM's decoder as
    one more token right after the mask tokens (a sparse prompt placed first), so SAM's masks come out as
    HQ-SAM's; the HQ mask is the release's formula on that pass's HQ token output and upscaled features."""
    sam = SamModel(sam_config_of(tiny)).eval()
    missing, unexpected = sam.load_state_dict(tiny.state_dict(), strict=False)
    assert missing == [] and all(n.split(".")[1] in HQ_HF_MODULES for n in unexpected)
    d, act = tiny.mask_decoder, torch.nn.functional.gelu
    seen = {}
    hooks = [sam.mask_decoder.transformer.register_forward_hook(lambda m, i, o: seen.update(tokens=o[0])),
             sam.mask_decoder.upscale_conv2.register_forward_hook(lambda m, i, o: seen.update(up=act(o)))]
    sparse, dense = sam.prompt_encoder(input_points=None, input_labels=None, input_boxes=BOX, input_masks=None)
    sparse = torch.cat([d.hq_token.weight[None, None], sparse], dim=2)
    masks, iou = sam.mask_decoder(image_embeddings=z, sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                  image_positional_embeddings=sam.get_image_wide_positional_embeddings(),
                                  multimask_output=multimask)
    for h in hooks:
        h.remove()
    if multimask:
        best = int(iou[0, 0].argmax())
        masks, iou = masks[:, :, best:best + 1], iou[:, :, best:best + 1]
    feats = d.encoder_conv2(act(d.encoder_norm(d.encoder_conv1(z)))) + d.compress_vit_conv2(
        act(d.compress_vit_norm(d.compress_vit_conv1(early.permute(0, 3, 1, 2)))))
    up_hq = d.mask_conv2(act(d.mask_norm(d.mask_conv1(seen["up"])))) + feats
    hq = torch.einsum("c,chw->hw", d.hq_mask_mlp(seen["tokens"][0, 0, 5]), up_hq[0])
    return masks, hq[None, None, None], iou


def test_masks_are_the_releases_sam_plus_hq(tiny):
    """SAM + HQ (the release predictor's default), HQ only, multimask (SAM's best of masks 1-3 + HQ), against
    a composition from transformers' plain SamModel (transformers' own SamHQ decoder upscales the wrong tensor)."""
    with torch.no_grad():
        z, early = sam_hq_image_embeddings(tiny, _pixels(0))
        for multimask in (False, True):
            sam_masks, hq_mask, sam_iou = _sam_reference(tiny, z, early, multimask)
            both, iou = sam_hq_predict(tiny, z, early, boxes=BOX, multimask_output=multimask)
            hq, iou_hq = sam_hq_predict(tiny, z, early, boxes=BOX, multimask_output=multimask, hq_token_only=True)
            assert both.shape == hq.shape == (1, 1, 1, 64, 64)
            torch.testing.assert_close(hq, hq_mask, rtol=0, atol=1e-4)
            torch.testing.assert_close(both, sam_masks + hq_mask, rtol=0, atol=1e-4)
            torch.testing.assert_close(iou, sam_iou) and torch.testing.assert_close(iou_hq, sam_iou)
            assert (hq - both).abs().max() > 1e-2  # the SAM part is not zero


def test_early_features_are_the_first_global_block_and_shape_the_masks(tiny):
    seen = []
    glob = tiny.config.vision_config.global_attn_indexes[0]
    handle = tiny.vision_encoder.layers[glob].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        z, early = sam_hq_image_embeddings(tiny, _pixels(0))
    handle.remove()
    assert early.shape == (1, 16, 16, 32)
    torch.testing.assert_close(early, seen[0][0] if isinstance(seen[0], tuple) else seen[0])
    with torch.no_grad():
        a, _ = sam_hq_predict(tiny, z, early, boxes=BOX, hq_token_only=True)
        b, _ = sam_hq_predict(tiny, z, torch.zeros_like(early), boxes=BOX, hq_token_only=True)
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"early features must be \[B, h, w, C_vit\]"):
        sam_hq_predict(tiny, z, early.permute(0, 3, 1, 2), boxes=BOX)


def test_released_format_loads_strictly_and_round_trips(tiny, tmp_path):
    path = str(tmp_path / "sam_hq_vit_tiny.pth")
    names = save_sam_hq_release(tiny, path)
    state = torch.load(path, weights_only=True)
    assert set(names) == set(state) and "mask_decoder.hf_token.weight" in state and "pixel_mean" not in state
    assert not any(n.startswith("vision_encoder") or ".hq_" in n for n in state)
    other = build_sam_hq("tiny", generator=torch.Generator().manual_seed(5))
    assert not torch.equal(other.mask_decoder.hq_token.weight, tiny.mask_decoder.hq_token.weight)
    report = load_sam_hq_checkpoint(other, {"module." + k: v for k, v in state.items()})
    assert report.missing == [] and report.unexpected == []
    for (n, a), b in zip(tiny.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), n


def test_plain_sam_file_and_another_size_are_refused_with_hints(tiny, tmp_path):
    plain = {k: v for k, v in hf_to_original_hq_keys(tiny.state_dict()).items()
             if k.split(".")[1] not in HQ_ORIGINAL_MODULES}
    with pytest.raises(CheckpointMismatchError, match="holds no HQ-SAM modules.*a plain SAM file") as e:
        load_sam_hq_checkpoint(build_sam_hq("tiny"), plain)
    assert "MODEL.SAM.CHECKPOINT" in e.value.hint
    vit_l = {n: torch.zeros(1).expand(s) for n, s in _reference("vit_l")["keys"].items()}  # no memory allocated
    torch.save({}, str(tmp_path / "x.pth"))
    with pytest.raises(CheckpointMismatchError, match="do not fit this SAM.*looks like vit_l") as e:
        load_sam_hq_checkpoint(build_sam_hq("vit_b", device="meta"), vit_l)
    assert e.value.hint == "set MODEL.SAM.VARIANT 'vit_l'"
    missing_one = dict(hf_to_original_hq_keys(tiny.state_dict()))
    del missing_one["mask_decoder.hf_mlp.layers.2.bias"]
    with pytest.raises(CheckpointMismatchError, match="strict SAM load failed: 1 model tensors not in the file"):
        load_sam_hq_checkpoint(build_sam_hq("tiny"), missing_one)


def test_meta_architecture_box_prompts_depend_on_the_image(tiny_model):
    assert type(tiny_model).__name__ == "PromptableSAMHQ" and tiny_model.hq_token_only is False
    img0 = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    img1 = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[10.0, 12.0, 100.0, 80.0]])
    outs = tiny_model([{"image": img0, "boxes": box, "height": 48, "width": 64},
                       {"image": img1, "boxes": box, "height": 48, "width": 64}], return_intermediates=True)
    assert outs[0]["mask_logits"].shape == (1, 48, 64) and outs[0]["masks"].dtype == torch.bool
    assert (outs[0]["mask_logits"] - outs[1]["mask_logits"]).abs().max() > 1e-3
    torch.testing.assert_close(outs[0]["masks"], outs[0]["mask_logits"] > 0)
    inter = outs[0]["intermediates"]
    assert inter["early"].shape == (1, 16, 16, 32) and inter["low_res_logits"].shape == (1, 1, 64, 64)
    tiny_model.hq_token_only = True
    try:
        hq_only = tiny_model([{"image": img0, "boxes": box, "height": 48, "width": 64}])[0]["mask_logits"]
    finally:
        tiny_model.hq_token_only = False
    assert (hq_only - outs[0]["mask_logits"]).abs().max() > 1e-3


def test_config_refuses_two_weight_files():
    with pytest.raises(UserValueError, match="MODEL.SAM_HQ.CHECKPOINT .* already holds SAM's weights"):
        build_model(setup_cfg(TINY, ["MODEL.SAM_HQ.CHECKPOINT", "a.pth", "MODEL.SAM.CHECKPOINT", "b.pth"]))


def test_plain_sam_file_loads_with_random_hq_modules(tiny, tmp_path, caplog):
    sam = SamModel(sam_config_of(tiny)).eval()
    sam.load_state_dict(tiny.state_dict(), strict=False)
    path = str(tmp_path / "sam_tiny.pth")
    save_sam_original(sam, path)
    torch.manual_seed(3)
    with caplog.at_level("WARNING"):
        model = build_model(setup_cfg(TINY, ["MODEL.SAM.CHECKPOINT", path]))
    assert "the HQ modules are RANDOM" in caplog.text
    ours = model.sam.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in sam.state_dict().items())  # every SAM tensor from the file
    assert not torch.equal(ours["mask_decoder.hq_token.weight"], tiny.mask_decoder.hq_token.weight)
    with pytest.raises(CheckpointMismatchError, match="holds no HQ-SAM modules"):
        build_model(setup_cfg(TINY, ["MODEL.SAM_HQ.CHECKPOINT", path]))
