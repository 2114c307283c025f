"""MGD-SAM2 weights: the full-size model's names and shapes are the released `model_epoch_*.pth`'s (manifest),
released files load strictly (directly and as MODEL.WEIGHTS through the checkpointer), training starts from a
SAM 2.1 file with an exact report of what stays random / is ignored, and wrong files are one-line errors."""
from __future__ import annotations

import os

import pytest
import torch

import rass  # noqa: F401  (registers everything)
from rass.checkpoint import RASSCheckpointer
from rass.checkpoint.fit import CheckpointMismatchError
from rass.checkpoint.mgd_sam2_loader import (
    MGD_SAM2_KEY_MAP, init_mgd_sam2_from_sam2, load_mgd_sam2_checkpoint, mgd_sam2_original_names,
)
from rass.checkpoint.sam2_loader import load_sam2_checkpoint, save_sam2_original
from rass.modeling.mgd_sam2.model import build_mgd_sam2
from rass.modeling.sam2 import build_sam2
from rass.utils.errors import UserError, UserValueError
from tests.conftest import load_manifest

SIZE = 128


def _tiny(seed: int):
    return build_mgd_sam2("test", SIZE, None, adapter_reduction=4, generator=torch.Generator().manual_seed(seed))


def _original_state(model):
    names = mgd_sam2_original_names(model)
    return {names[k]: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def manifest():
    return load_manifest("mgd_sam2_manifest.json")


@pytest.fixture(scope="module")
def big():
    return build_mgd_sam2("base_plus", device="meta")


@pytest.fixture(scope="module")
def source():
    return _tiny(0)


@pytest.fixture(scope="module")
def release_file(source, tmp_path_factory):
    """A released-format file (bare state dict, original names, adapters never called included) of `source`."""
    path = str(tmp_path_factory.mktemp("mgd") / "model_epoch_best.pth")
    torch.save(_original_state(source), path)
    return path


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory):
    """A SAM 2.1-format file of the "test" size, with memory-module entries as the real files have."""
    sam2 = build_sam2("test", generator=torch.Generator().manual_seed(5))
    path = str(tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_test.pt")
    extra = {"memory_attention.layers.0.self_attn.q_proj.weight": torch.zeros(4, 4), "maskmem_tpos_enc": torch.zeros(7),
             "obj_ptr_proj.layers.0.weight": torch.zeros(4, 4), "no_obj_ptr": torch.zeros(1, 4)}
    save_sam2_original(sam2, path, extra=extra)
    return path


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))


def test_full_size_model_has_the_released_names_and_shapes(big, manifest):
    expected = manifest["mgd_sam2_model_epoch"]["entries"]
    names = mgd_sam2_original_names(big)
    got = {names[k]: list(v.shape) for k, v in big.state_dict().items()}
    assert len(got) == len(expected) == 804
    assert got == expected
    # the release's unused adapters are there (strict load needs them), and no SAM2 prompt encoder / memory
    assert "image_encoder.trunk.mpadapter.lightweight_mlp4_3.3.weight" in got
    assert "image_encoder.trunk.mpadapter.shared_mlp2.weight" in got
    assert not any(n.startswith(("sam_prompt_encoder.", "memory_")) or n == "no_mem_embed" for n in got)
    # one bijective map: back and forth
    assert all(MGD_SAM2_KEY_MAP.to_project(o) == p for p, o in names.items())


def test_released_key_set_loads_strictly_on_meta(big, manifest):
    entries = manifest["mgd_sam2_model_epoch"]["entries"]
    report = load_mgd_sam2_checkpoint(big, {n: torch.empty(s, device="meta") for n, s in entries.items()})
    assert report.converted and len(report.loaded) == 804 and not report.missing and not report.unexpected
    partial = {n: torch.empty(s, device="meta") for n, s in entries.items() if "lightweight_mlp2_3." not in n}
    with pytest.raises(CheckpointMismatchError, match=r"strict MGD-SAM2 load failed: 8 model tensors not in the file"):
        load_mgd_sam2_checkpoint(big, partial)


def test_released_file_loads_directly_and_as_model_weights(source, release_file, image):
    with torch.no_grad():
        want, want_views = source(image)
    direct = _tiny(1)
    with torch.no_grad():
        assert not torch.allclose(direct(image)[0], want)  # another random model differs
    report = load_mgd_sam2_checkpoint(direct, release_file)
    assert report.converted and not report.missing and not report.unexpected
    assert report.source == "model_epoch_best.pth"
    through = _tiny(2)
    RASSCheckpointer(through).load(release_file)  # MODEL.WEIGHTS: renamed by the model's load_state_dict pre-hook
    with torch.no_grad():
        for model in (direct, through):
            got, views = model(image)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            torch.testing.assert_close(views, want_views, rtol=0, atol=0)


def test_training_init_from_sam2_reports_random_and_ignored_parts(sam2_file):
    model = _tiny(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_mgd_sam2_from_sam2(model, sam2_file)
    file = torch.load(sam2_file, weights_only=True)["model"]
    assert report.file_variant == "test" and report.source == "sam2.1_hiera_test.pt"
    random = {r.split(" (")[0].split(":")[0]: names for r, names in report.random.items()}
    assert set(random) == {"MGD-SAM2's adapters", "MGD-SAM2's MCEM / HMIM", "MGD-SAM2's DRM",
                           "model-level no_mask_embed", "model-level prompt PE", "Linear object-score head",
                           "IoU head", "mask tokens"}
    assert random["model-level prompt PE"] == ["pe_layer.shared_embedding.positional_embedding"]
    assert random["mask tokens"] == ["mask_decoder.mask_tokens.weight"]
    assert random["Linear object-score head"] == ["mask_decoder.pred_obj_score_head.weight",
                                                  "mask_decoder.pred_obj_score_head.bias"]
    assert len(random["IoU head"]) == 6
    ignored = {r.split(" (")[0]: sorted(names) for r, names in report.ignored.items()}
    assert ignored["dropped as the release drops them"] == sorted(
        n for n in file if "iou_prediction_head" in n or "mask_tokens" in n)
    assert ignored["SAM 2.1's MLP object-score head"] == sorted(n for n in file if ".pred_obj_score_head." in n)
    assert ignored["hypernetwork MLPs of mask tokens 2-3"] == sorted(
        n for n in file if "output_hypernetworks_mlps.2." in n or "output_hypernetworks_mlps.3." in n)
    assert ignored["prompt encoder"] == sorted(n for n in file if n.startswith("sam_prompt_encoder."))
    assert ignored["SAM2's no-memory embedding"] == ["no_mem_embed"]
    assert ignored["memory / object-pointer modules of the video model"] == sorted(
        ["memory_attention.layers.0.self_attn.q_proj.weight", "maskmem_tpos_enc", "obj_ptr_proj.layers.0.weight",
         "no_obj_ptr"])
    # every file entry is either loaded or ignored with a reason; every model entry loaded or random
    names = mgd_sam2_original_names(model)
    assert len(report.loaded) + sum(map(len, report.ignored.values())) == len(file)
    assert len(report.loaded) + sum(map(len, report.random.values())) == len(before)
    state = model.state_dict()
    for n in report.loaded:
        assert torch.equal(state[n], file[names[n]]), n
    for n in (x for names_ in report.random.values() for x in names_):
        assert torch.equal(state[n], before[n]), n
    assert "file entries ignored: prompt encoder" in report.summary()


def test_init_through_the_config_and_its_errors(sam2_file, release_file, tmp_path):
    from detectron2.modeling import build_model

    from rass.config import setup_cfg
    from tests.conftest import REPO

    tiny = os.path.join(REPO, "configs", "dis5k", "tiny_mgd_sam2.yaml")
    model = build_model(setup_cfg(tiny, ["MODEL.MGD_SAM2.SAM2_INIT", sam2_file]))
    assert model.sam2_init_report.file_variant == "test" and len(model.sam2_init_report.loaded) > 100
    with pytest.raises(CheckpointMismatchError, match=r"MODEL.MGD_SAM2.SAM2_INIT: model_epoch_best.pth is an MGD-SAM2 "
                                                      r"trained model") as e:
        build_model(setup_cfg(tiny, ["MODEL.MGD_SAM2.SAM2_INIT", release_file]))
    assert "MODEL.WEIGHTS" in e.value.hint
    with pytest.raises(UserValueError, match=r"MODEL.SAM2.CHECKPOINT .* is not read by MGD-SAM2"):
        build_model(setup_cfg(tiny, ["MODEL.SAM2.CHECKPOINT", sam2_file]))


def test_wrong_files_are_one_line_errors(big, source, sam2_file, release_file):
    # a SAM2 file of another size: names the file's size, the model's and the tensors
    with pytest.raises(CheckpointMismatchError, match=r"is a SAM2 checkpoint of SAM2 test \(Hiera embed dim 8, 5 "
                                                      r"blocks\), the model is MGD-SAM2 on SAM2 base_plus \(Hiera embed dim 112, "
                                                      r"24 blocks\): \d+ tensors differ in shape, e.g. "
                                                      r"image_encoder.trunk.pos_embed: file \[1, 8, 4, 4\] vs model "
                                                      r"\[1, 112, 14, 14\]"):
        init_mgd_sam2_from_sam2(big, sam2_file)
    # a released MGD file of another size
    with pytest.raises(CheckpointMismatchError, match=r"is an MGD-SAM2 model of SAM2 test .* the model is MGD-SAM2 on "
                                                      r"SAM2 base_plus"):
        load_mgd_sam2_checkpoint(big, release_file)
    # a SAM2 file as MGD-SAM2 weights (directly, and as MODEL.WEIGHTS through the checkpointer)
    with pytest.raises(CheckpointMismatchError, match=r"is a SAM 2 / SAM 2.1 checkpoint") as e:
        load_mgd_sam2_checkpoint(_tiny(4), sam2_file)
    assert "MODEL.MGD_SAM2.SAM2_INIT" in e.value.hint
    with pytest.raises(CheckpointMismatchError, match=r"MODEL.WEIGHTS: the checkpoint is a SAM 2 / SAM 2.1 checkpoint"):
        RASSCheckpointer(_tiny(4)).load(sam2_file)
    # an MGD file as a SAM2 checkpoint (plain SAM2's MODEL.SAM2.CHECKPOINT)
    with pytest.raises(CheckpointMismatchError, match=r"MODEL.SAM2.CHECKPOINT: .*model_epoch_best.pth is an MGD-SAM2 "
                                                      r"trained model"):
        load_sam2_checkpoint(build_sam2("test", generator=torch.Generator().manual_seed(0)), release_file)
    for error in (CheckpointMismatchError, UserValueError):
        assert issubclass(error, UserError)
