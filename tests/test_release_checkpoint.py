"""Released RASS checkpoints: every released name/shape maps onto the project's model (full size,
built on `meta`), the trainable count is the release's, and `rass.pth`-style files load."""
from __future__ import annotations

import os
import re

import pytest
import torch
from detectron2.modeling import build_model

import rass.modeling.backbone  # noqa: F401  (registers RASS)
import rass.modeling.meta_arch.rass_model  # noqa: F401  (registers RASSMaskFormer)
from rass.checkpoint import RASSCheckpointer, load_weights, release_to_project_keys
from rass.config import setup_cfg
from tests.conftest import REPO, load_manifest

FULL_CFG = os.path.join(REPO, "configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml")
TINY_CFG = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")


def _manifest(name):
    return load_manifest(name)  # the committed copies in tests/reference/manifests


@pytest.fixture(scope="module", params=["ram", "dape"])
def full_meta_model(request):
    no_weights = ["MODEL.RASS.SD_PATH", "", "MODEL.RASS.RESTORATION_LORA_PATH", "", "MODEL.TAGGER.RAM.WEIGHTS", "",
                  "MODEL.TAGGER.RAM.TAG_LIST", "", "MODEL.TAGGER.RAM.THRESHOLDS", "", "MODEL.TAGGER.DAPE.WEIGHTS", ""]
    cfg = setup_cfg(FULL_CFG, ["MODEL.DEVICE", "meta", "MODEL.TAGGER.NAME", request.param, *no_weights])
    return request.param, build_model(cfg)


@pytest.mark.parametrize("era", ["rass_full_manifest.json", "rass_full_manifest.transformers5.json"])
def test_every_released_name_and_shape_maps_onto_the_model(full_meta_model, era):
    tagger, model = full_meta_model
    manifest = _manifest(era)
    assert len(manifest) == 4774
    mapping = release_to_project_keys(manifest, tagger=tagger)
    own = model.state_dict()
    kept = {k: v for k, v in mapping.items() if v is not None}
    dropped = sorted(k for k, v in mapping.items() if v is None)
    for release_name, name in kept.items():
        assert name in own, f"{release_name} -> {name} not in the model"
        assert list(own[name].shape) == manifest[release_name][:-1], release_name
    assert len(set(kept.values())) == len(kept)  # injective
    assert set(kept.values()) == set(own), sorted(set(own) - set(kept.values()))[:5]
    other = "dape" if tagger == "ram" else "ram"
    expected_dropped = [k for k in manifest if k.startswith("backbone.jpeger.")
                        or k.startswith(f"backbone.feature_extractor.{other}.")
                        or (tagger == "ram" and k.startswith("backbone.feature_extractor.ram.") and ".lora_" in k)]
    assert dropped == sorted(expected_dropped)
    assert len(dropped) == 12 + 1290 + (248 if tagger == "ram" else 0)


def test_trainable_parameters_are_the_released_ones(full_meta_model):
    _, model = full_meta_model
    trainable = _manifest("rass_trainable_manifest.json")
    assert (trainable["num_keys"], trainable["num_params"]) == (877, 27_905_063)
    mapping = release_to_project_keys(trainable["params"])
    want = {mapping[k]: v[:-1] for k, v in trainable["params"].items()}
    got = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    assert got == want
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 27_905_063


def test_full_model_parameter_counts(full_meta_model):
    tagger, model = full_meta_model
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert (len(trainable), sum(p.numel() for p in trainable)) == (877, 27_905_063)  # the release's
    total = sum(p.numel() for p in model.parameters())
    # paper 1788.7M counts one tagger with LoRA (dape layout); `ram` has no (untrained) LoRA: 1.78M less
    assert total == {"dape": 1_788_772_099, "ram": 1_786_994_435}[tagger]


def test_release_name_examples():
    m = release_to_project_keys([
        "backbone.feature_extractor.sd.unet.up_blocks.1.attentions.0.proj_in.lora_B.default_decoder_s2.weight",
        "backbone.feature_extractor.sd.unet.conv_in.base_layer.weight",
        "backbone.feature_extractor.sd.text_encoder.text_model.encoder.layers.3.mlp.fc1.weight",
        "backbone.feature_extractor.sd.text_encoder.encoder.layers.3.mlp.fc1.weight",
        "backbone.feature_extractor.sd.text_encoder.text_model.embeddings.position_ids",
        "backbone.feature_extractor.feature_projections.3.0.conv2.norm.weight",
        "backbone.feature_extractor.ram.label_embed",
        "backbone.feature_extractor.ram.visual_encoder.layers.0.blocks.0.attn.qkv.lora_A",
        "backbone.feature_extractor.dape.label_embed",
        "backbone.jpeger.compress.y_quantize.y_table",
        "sem_seg_head.predictor.query_feat.weight",
        "criterion.empty_weight",
    ])
    assert list(m.values()) == [
        "backbone.unet.up_blocks.1.attentions.0.proj_in.lora_B.rass.weight",
        "backbone.unet.conv_in.base_layer.weight",
        "backbone.text_encoder.encoder.layers.3.mlp.fc1.weight",
        "backbone.text_encoder.encoder.layers.3.mlp.fc1.weight",
        None,
        "backbone.projection.blocks.3.0.conv2.norm.weight",
        "backbone.tagger.label_embed",
        None,
        None,
        None,
        "sem_seg_head.predictor.query_feat.weight",
        "criterion.empty_weight",
    ]
    assert release_to_project_keys(["backbone.feature_extractor.dape.label_embed"], tagger="dape") == {
        "backbone.feature_extractor.dape.label_embed": "backbone.tagger.label_embed"}


# ------------------------------------------------------------------ loading (tiny model)
def _to_release_name(name: str, era5: bool) -> str:
    """Inverse of `release_to_project_keys` for the tiny model (the release's adapter split)."""
    fe = "backbone.feature_extractor."
    if name.startswith("backbone.projection.blocks."):
        return fe + "feature_projections." + name[len("backbone.projection.blocks."):]
    if name.startswith("backbone.vae."):
        return fe + "sd.vae." + name[len("backbone.vae."):]
    if name.startswith("backbone.text_encoder."):
        return fe + "sd.text_encoder." + ("" if era5 else "text_model.") + name[len("backbone.text_encoder."):]
    if name.startswith("backbone.unet."):
        rest = name[len("backbone.unet."):]
        part = ("encoder" if rest.startswith(("down_blocks", "conv_in")) else
                "decoder" if rest.startswith("up_blocks") else "others")
        return fe + "sd.unet." + re.sub(r"\.(lora_[AB])\.rass\.", rf".\1.default_{part}_s2.", rest)
    return name


def _tiny_model(seed):
    torch.manual_seed(seed)
    return build_model(setup_cfg(TINY_CFG, []))


@pytest.fixture(scope="module")
def tiny_pair():
    return _tiny_model(1), _tiny_model(2)


@pytest.mark.parametrize("wrapped,era5", [(True, False), (False, True)])
def test_release_format_checkpoint_loads_completely(tiny_pair, tmp_path, wrapped, era5):
    src, dst = tiny_pair
    state = {_to_release_name(k, era5): v for k, v in src.state_dict().items()}
    assert release_to_project_keys(state) == {_to_release_name(k, era5): k for k in src.state_dict()}
    state["backbone.jpeger.compress.y_quantize.y_table"] = torch.ones(8, 8)
    path = tmp_path / "rass.pth"
    torch.save({"model": state, "iteration": 159999} if wrapped else state, path)
    report = load_weights(dst, str(path))
    assert report.converted and not report.missing and not report.unexpected and not report.shape_mismatch
    assert report.dropped == ["backbone.jpeger.compress.y_quantize.y_table"]
    got = dst.state_dict()
    for k, v in src.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_checkpoint_without_frozen_parts_reports_them(tmp_path):
    src, dst = _tiny_model(3), _tiny_model(4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    trainable = {n for n, p in src.named_parameters() if p.requires_grad}
    state = {_to_release_name(k, False): v for k, v in src.state_dict().items() if k in trainable}
    path = tmp_path / "rass_trainable.pth"
    torch.save({"model": state}, path)

    ckpt = RASSCheckpointer(dst)  # the project's checkpointer (train_net, Trainer) converts release names
    ckpt.load(str(path))
    report = ckpt.last_release_report
    assert report is not None and report.converted
    groups = {n.split(".")[1] for n in report.missing if n.startswith("backbone.")}
    assert groups == {"vae", "text_encoder", "unet"}
    assert not any(n in trainable for n in report.missing)
    ref = src.state_dict()
    for k, v in dst.state_dict().items():
        want = ref[k] if k in trainable else before[k]
        torch.testing.assert_close(v, want, rtol=0, atol=0, msg=k)
    summary = load_weights(dst, str(path)).summary()
    assert "NOT FOUND in the checkpoint" in summary and "backbone.vae" in summary


def test_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(torch.nn.Linear(1, 1), str(tmp_path / "nope.pth"))
