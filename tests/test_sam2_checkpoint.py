"""SAM 2.1 checkpoints: the original <-> project name map (a tested bijection), strict loading of a synthetic
`{"model": ...}` file with the memory modules ignored explicitly, and the errors for another size, an MGD-SAM2
model file, missing tensors and a SAM (v1) file."""
import json
import os

import pytest
import torch

from rass.checkpoint.fit import CheckpointMismatchError
from rass.checkpoint.sam2_keys import (
    SAM2_KEY_TABLE, Sam2KeyMap, is_ignored_sam2_key, original_to_project, project_to_original,
    project_to_original_keys,
)
from rass.checkpoint.sam2_loader import load_sam2_checkpoint, sam2_file_variant, save_sam2_original
from rass.modeling.sam2 import build_sam2

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference", "sam2_keys")
# a few memory-module names and shapes of the released files (sam2.1_hiera_base_plus.pt)
MEMORY = {"maskmem_tpos_enc": (7, 1, 1, 64), "no_mem_pos_enc": (1, 1, 256), "no_obj_ptr": (1, 256),
          "no_obj_embed_spatial": (1, 64), "mask_downsample.weight": (1, 1, 4, 4),
          "memory_attention.layers.0.self_attn.q_proj.weight": (256, 256), "memory_encoder.out_proj.bias": (64,),
          "obj_ptr_proj.layers.0.weight": (256, 256), "obj_ptr_tpos_proj.bias": (64,)}


def _reference(variant):
    with open(os.path.join(REFERENCE, f"sam2.1_hiera_{variant}.json")) as f:
        return json.load(f)["keys"]


@pytest.fixture(scope="module")
def models():
    return [build_sam2("test", generator=torch.Generator().manual_seed(s)) for s in (0, 1)]


def _original_file(model, tmp_path, extra=MEMORY, name="sam2.1_hiera_test.pt"):
    state, unknown = project_to_original_keys(model.state_dict())
    assert not unknown
    state.update({n: torch.full(s, 0.5) for n, s in extra.items()})
    path = str(tmp_path / name)
    torch.save({"model": state}, path)
    return path


def test_name_map_is_a_bijection_on_every_released_key_set():
    seen = {}
    for variant in ("tiny", "small", "base_plus", "large"):
        for name in _reference(variant):
            project = original_to_project(name)
            if is_ignored_sam2_key(name):
                assert project is None
                continue
            assert project is not None and project_to_original(project) == name
            assert seen.setdefault(project, name) == name  # injective
    assert original_to_project("sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight") == \
        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.o_proj.weight"
    assert original_to_project("sam_prompt_encoder.point_embeddings.3.weight") == "prompt_encoder.point_embed.3.weight"
    assert original_to_project("no_mem_embed") == "no_memory_embedding"
    assert original_to_project("image_encoder.neck.convs.2.conv.bias") == "image_encoder.neck.convs.2.bias"


def test_name_map_prefix_fallback_keeps_bijectivity():
    # names outside the table keep their tail (a model extending SAM2, e.g. MGD-SAM2's new decoder modules)
    assert original_to_project("sam_mask_decoder.new_fusion1.fuse1.weight") == "mask_decoder.new_fusion1.fuse1.weight"
    assert project_to_original("mask_decoder.new_fusion1.fuse1.weight") == "sam_mask_decoder.new_fusion1.fuse1.weight"
    # ...but never onto a name the table owns, and unknown prefixes stay unknown
    assert original_to_project("sam_mask_decoder.transformer.layers.0.self_attn.o_proj.weight") is None
    assert project_to_original("mask_decoder.transformer.layers.0.self_attn.out_proj.weight") is None
    assert original_to_project("detail_enhance.conv.weight") is None
    # a Linear object-score head (MGD-SAM2) maps too
    linear_head = "sam_mask_decoder.pred_obj_score_head.weight"
    assert original_to_project(linear_head) == "mask_decoder.pred_obj_score_head.weight"
    extended = Sam2KeyMap(SAM2_KEY_TABLE + (("detail_enhance.{rest}", "refiner.{rest}"),))
    assert extended.to_project("detail_enhance.conv.weight") == "refiner.conv.weight"
    assert extended.to_original("refiner.conv.weight") == "detail_enhance.conv.weight"


def test_strict_round_trip_of_a_released_style_file_ignores_the_memory_modules_by_name(models, tmp_path):
    source, target = models
    path = _original_file(source, tmp_path)
    assert not torch.equal(source.mask_decoder.iou_token.weight, target.mask_decoder.iou_token.weight)
    report = load_sam2_checkpoint(target, path)
    own, want = target.state_dict(), source.state_dict()
    assert all(torch.equal(own[n], want[n]) for n in want)
    assert report.dropped == sorted(MEMORY) and len(report.loaded) == len(want)
    assert not report.missing and not report.unexpected and report.converted
    assert "ignored on purpose (memory modules of the video model): 9 tensors" in report.summary()
    assert report.file_variant == "test"


def test_save_and_load_on_the_meta_device(models, tmp_path):
    path = str(tmp_path / "saved.pt")
    names = save_sam2_original(models[0], path)
    assert "no_mem_embed" in names and "sam_prompt_encoder.point_embeddings.0.weight" in names
    meta = build_sam2("test", device="meta")
    load_sam2_checkpoint(meta, path)
    assert torch.equal(meta.mask_decoder.iou_token.weight, models[0].mask_decoder.iou_token.weight)


def test_a_file_of_another_size_names_its_variant_and_the_first_mismatches(models):
    tiny_file = {n: torch.zeros(1).expand(s) for n, s in _reference("tiny").items()}  # no memory allocated
    assert sam2_file_variant(tiny_file)[0] == "tiny"
    with pytest.raises(CheckpointMismatchError) as info:
        load_sam2_checkpoint(models[1], tiny_file)
    text = str(info.value)
    assert "is SAM2 tiny (Hiera embed dim 96, 12 blocks), the model is SAM2 test (Hiera embed dim 8, 5 blocks)" in text
    assert "image_encoder.trunk.pos_embed: file [1, 96, 7, 7] vs model [1, 8, 4, 4]" in text
    assert "hint: set MODEL.SAM2.VARIANT 'tiny'" in text


def test_an_mgd_sam2_model_file_is_refused_as_such(models, tmp_path):
    state, _ = project_to_original_keys(models[0].state_dict())
    state["detail_enhance.conv_img.0.weight"] = torch.zeros(32, 3, 3, 3)
    state["sam_mask_decoder.new_fusion1.fuse1.weight"] = torch.zeros(4)
    path = str(tmp_path / "model_epoch_best.pth")
    torch.save(state, path)  # MGD-SAM2 saves a bare state dict
    with pytest.raises(CheckpointMismatchError, match=r"model_epoch_best.pth is an MGD-SAM2 trained model "
                                                      r"\(model_epoch_\*.pth: 2 MGD-SAM2 tensors"):
        load_sam2_checkpoint(models[1], path)


def test_missing_and_unknown_tensors_fail_strictly_and_are_listed_otherwise(models, tmp_path):
    state, _ = project_to_original_keys(models[0].state_dict())
    del state["sam_mask_decoder.iou_token.weight"]
    state["sam_mask_decoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError, match=r"strict SAM2 load failed: 1 model tensors not in the file .*"
                                                      r"sam_mask_decoder.iou_token.weight.*1 file tensors not in the "
                                                      r"model \(e.g. \['sam_mask_decoder.extra_head.weight'\]\)"):
        load_sam2_checkpoint(models[1], state)
    target = build_sam2("test", generator=torch.Generator().manual_seed(5))
    kept = target.mask_decoder.iou_token.weight.clone()
    report = load_sam2_checkpoint(target, state, strict=False)
    assert report.missing == ["mask_decoder.iou_token.weight"]
    assert report.unexpected == ["sam_mask_decoder.extra_head.weight"]
    assert torch.equal(target.mask_decoder.iou_token.weight, kept)


def test_a_sam_v1_file_gets_a_hint(models):
    sam1 = {"image_encoder.blocks.0.norm1.weight": torch.zeros(8), "mask_decoder.iou_token.weight": torch.zeros(1, 64)}
    with pytest.raises(CheckpointMismatchError, match=r"looks like a SAM \(v1\) file"):
        load_sam2_checkpoint(models[1], sam1)
