"""Loading SAM weights in segment-anything names: round trip through `save_sam_original`, `module.`
prefix and wrappers, decoder-only files over a base file, wrong-variant and broken-file errors."""
import os

import pytest
import torch

from rass.checkpoint import (
    CheckpointFileError, CheckpointMismatchError, load_sam_checkpoint, read_sam_state_dict, save_sam_original,
)
from rass.checkpoint.sam_keys import hf_to_original_keys
from rass.modeling.sam import build_sam, sam_image_embeddings, sam_predict
from tests.conftest import load_manifest


def _random_tiny(seed):
    model = build_sam("tiny")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _outputs(model):
    g = torch.Generator().manual_seed(5)
    pixels = torch.randn(1, 3, 256, 256, generator=g)
    coords = torch.rand(1, 2, 3, 2, generator=g) * 255
    labels = torch.ones(1, 2, 3, dtype=torch.long)
    with torch.no_grad():
        emb = sam_image_embeddings(model, pixels)
        return (emb,) + sam_predict(model, emb, coords, labels, multimask_output=True)


def _assert_same(got, want):
    assert set(got) == set(want)
    bad = [n for n in want if not torch.equal(got[n], want[n])]
    assert not bad, bad[:5]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model A, path of A saved in original names)."""
    model = _random_tiny(0)
    path = str(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")
    save_sam_original(model, path)
    return model, path


def test_save_writes_original_names(saved):
    model, path = saved
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert len(sd) == len(model.state_dict()) - 1  # the tied copy is not written
    assert set(sd) == set(hf_to_original_keys(model.state_dict()))
    for name in ("image_encoder.blocks.0.attn.qkv.weight", "image_encoder.neck.3.bias",
                 "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "prompt_encoder.mask_downscaling.6.weight",
                 "mask_decoder.output_upscaling.3.weight", "mask_decoder.iou_prediction_head.layers.2.bias"):
        assert name in sd
    assert not any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in sd)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    fresh = _random_tiny(1)
    assert not torch.equal(fresh.mask_decoder.iou_token.weight, model.mask_decoder.iou_token.weight)
    report = load_sam_checkpoint(fresh, path)
    assert not report.missing and not report.unexpected
    assert len(report.loaded) == len(model.state_dict())
    parts = report.parts()
    assert parts["mask_decoder"][0] == len(model.mask_decoder.state_dict()) and parts["vision_encoder"][1] == 0
    _assert_same(fresh.state_dict(), model.state_dict())
    for a, b in zip(_outputs(model), _outputs(fresh)):
        assert torch.equal(a, b)
    text = report.summary()
    assert "tiny_sam.pth" in text and "segment-anything names" in text and "vision_encoder:" in text


def test_meta_built_model_takes_the_file_and_stays_tied(saved):
    model, path = saved
    meta = build_sam("tiny", device="meta")
    load_sam_checkpoint(meta, path)
    assert not any(v.is_meta for v in meta.state_dict().values())
    assert meta.shared_image_embedding.positional_embedding is meta.prompt_encoder.shared_embedding.positional_embedding
    for a, b in zip(_outputs(model), _outputs(meta)):
        assert torch.equal(a, b)
    dec_only = {k: v for k, v in torch.load(path, weights_only=True).items() if k.startswith("mask_decoder.")}
    with pytest.raises(CheckpointMismatchError, match="meta device"):
        load_sam_checkpoint(build_sam("tiny", device="meta"), dec_only, strict=False)


@pytest.mark.parametrize("wrap", ["module", "model", "state_dict", "hf_names"])
def test_prefixes_wrappers_and_hf_names_load(saved, tmp_path, wrap):
    model, path = saved
    sd = torch.load(path, map_location="cpu", weights_only=True)
    obj = {"module." + k: v for k, v in sd.items()} if wrap == "module" else \
        {"model": sd, "epoch": 3} if wrap == "model" else \
        {"state_dict": {"module." + k: v for k, v in sd.items()}} if wrap == "state_dict" else model.state_dict()
    torch.save(obj, str(tmp_path / "w.pth"))
    fresh = _random_tiny(2)
    load_sam_checkpoint(fresh, str(tmp_path / "w.pth"))
    _assert_same(fresh.state_dict(), model.state_dict())


def test_safetensors_file_loads(saved, tmp_path):
    from safetensors.torch import save_file

    model, path = saved
    save_file(torch.load(path, map_location="cpu", weights_only=True), str(tmp_path / "w.safetensors"))
    fresh = _random_tiny(3)
    load_sam_checkpoint(fresh, str(tmp_path / "w.safetensors"))
    assert torch.equal(fresh.vision_encoder.pos_embed, model.vision_encoder.pos_embed)


@pytest.mark.parametrize("bare", [False, True])
def test_decoder_only_file_over_base(saved, tmp_path, bare):
    base_model, base_path = saved
    tuned = _random_tiny(7)
    dec = {k: v for k, v in torch.load(_save(tuned, tmp_path / "full.pth"), weights_only=True).items()
           if k.startswith("mask_decoder.")}
    if bare:
        dec = {k[len("mask_decoder."):]: v for k, v in dec.items()}
    torch.save(dec, str(tmp_path / "ft-decoder.pth"))
    model = _random_tiny(8)
    report = load_sam_checkpoint(model, str(tmp_path / "ft-decoder.pth"), base_path=base_path)
    assert report.overridden == len(dec) and not report.missing and not report.unexpected
    tuned_sd, base_sd = tuned.state_dict(), base_model.state_dict()
    _assert_same(model.state_dict(), {n: (tuned_sd if n.startswith("mask_decoder.") else base_sd)[n] for n in base_sd})
    assert "mask decoder only" in report.summary() and f"{len(dec)} tensors of the base file replaced" in report.summary()


def _save(model, path):
    save_sam_original(model, str(path))
    return str(path)


def test_decoder_only_without_base(tmp_path):
    tuned = _random_tiny(9)
    dec = {k: v for k, v in torch.load(_save(tuned, tmp_path / "f.pth"), weights_only=True).items()
           if k.startswith("mask_decoder.")}
    torch.save(dec, str(tmp_path / "ft-decoder.pth"))
    model = _random_tiny(10)
    with pytest.raises(CheckpointMismatchError, match=r"ft-decoder\.pth: strict SAM load failed.*vision_encoder") as e:
        load_sam_checkpoint(model, str(tmp_path / "ft-decoder.pth"))
    assert "MODEL.SAM.BASE_CHECKPOINT" in str(e.value)
    before = model.vision_encoder.pos_embed.clone()
    report = load_sam_checkpoint(model, str(tmp_path / "ft-decoder.pth"), strict=False)
    assert report.parts()["mask_decoder"] == (len(dec), 0, 0)
    assert report.parts()["vision_encoder"][0] == 0 and report.parts()["vision_encoder"][1] > 0
    assert torch.equal(model.vision_encoder.pos_embed, before)
    assert torch.equal(model.mask_decoder.iou_token.weight, tuned.mask_decoder.iou_token.weight)
    with pytest.raises(CheckpointMismatchError, match=r"BASE_CHECKPOINT.*must be a full SAM.*mask decoder only"):
        load_sam_checkpoint(model, str(tmp_path / "f.pth"), base_path=str(tmp_path / "ft-decoder.pth"))


def test_unexpected_tensor_strict_and_not(saved, tmp_path):
    _, path = saved
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd["mask_decoder.robust_mlp.weight"] = torch.zeros(3)
    torch.save(sd, str(tmp_path / "robust.pth"))
    model = _random_tiny(11)
    with pytest.raises(CheckpointMismatchError, match=r"1 file tensors not in the model.*robust_mlp"):
        load_sam_checkpoint(model, str(tmp_path / "robust.pth"))
    report = load_sam_checkpoint(model, str(tmp_path / "robust.pth"), strict=False)
    assert report.unexpected == ["mask_decoder.robust_mlp.weight"] and not report.missing


def _fake_official(variant, path):
    """A file with the official checkpoint's names and shapes (values: one stored zero, expanded)."""
    keys = load_manifest("sam_vit_manifest.json")[f"sam_{variant}"]["keys"]
    zero = torch.zeros(1)
    torch.save({k: zero.expand(*v[:-1]) if len(v) > 1 else zero.expand(()) for k, v in keys.items()}, str(path))
    assert os.path.getsize(path) < 200_000
    return str(path)


def test_official_key_set_fits_and_wrong_variant_is_named(tmp_path):
    vit_b = _fake_official("vit_b", tmp_path / "sam_vit_b_01ec64.pth")
    meta_b = build_sam("vit_b", device="meta")
    report = load_sam_checkpoint(meta_b, vit_b)  # strict: the official key set maps onto the model exactly
    assert len(report.loaded) == 315 and not report.missing and not report.unexpected
    meta_l = build_sam("vit_l", device="meta")
    with pytest.raises(CheckpointMismatchError) as e:
        load_sam_checkpoint(meta_l, vit_b)
    msg = str(e.value)
    assert "sam_vit_b_01ec64.pth" in msg
    assert "image_encoder.pos_embed (vision_encoder.pos_embed): file [1, 64, 64, 768] vs model [1, 64, 64, 1024]" in msg
    assert "looks like vit_b (embed dim 768, 12 blocks, 12 heads, global blocks [2, 5, 8, 11], window 14, image size " \
           "1024), the model is vit_l (embed dim 1024, 24 blocks, 16 heads, global blocks [5, 11, 17, 23], window 14, " \
           "image size 1024)" in msg
    assert e.value.hint == "set MODEL.SAM.VARIANT 'vit_b'"


def test_another_image_size_is_named_as_such(tmp_path):
    """The same variant at another input side: the message names both sizes and MODEL.SAM.IMAGE_SIZE, not the variant."""
    vit_b = _fake_official("vit_b", tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        load_sam_checkpoint(build_sam("vit_b", image_size=512, device="meta"), vit_b)
    msg = str(e.value)
    assert "9 tensors do not fit" in msg  # pos_embed + the 4 global blocks' two relative position tables
    assert "image_encoder.pos_embed (vision_encoder.pos_embed): file [1, 64, 64, 768] vs model [1, 32, 32, 768]" in msg
    assert "the image size differs: the file is for 1024-px inputs (its pos_embed is a 64x64 grid of 16-px patches), " \
           "the model for 512-px ones (the encoder is the same otherwise: vit_b)" in msg
    assert e.value.hint == "set MODEL.SAM.IMAGE_SIZE 1024" and "VARIANT" not in msg


def test_custom_shaped_file_names_the_custom_keys(tmp_path):
    from rass.modeling.sam import sam_variant

    custom = build_sam(sam_variant("custom", 48, 3, 3, [2], 5), image_size=192, device="meta")
    shapes = {k: torch.zeros(1).expand(*v.shape) for k, v in custom.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as e:
        load_sam_checkpoint(build_sam("tiny", device="meta"), shapes)
    assert "the file looks like a custom SAM (embed dim 48, 3 blocks, 3 heads, global blocks [2], window 5, image size " \
           "192), the model is tiny (" in str(e.value)
    assert e.value.hint == ("set MODEL.SAM.VARIANT 'custom' with MODEL.SAM.EMBED_DIM 48, DEPTH 3, NUM_HEADS 3, "
                            "GLOBAL_ATTN_INDEXES [2], WINDOW_SIZE 5 and MODEL.SAM.IMAGE_SIZE 192")


def test_broken_files_are_named(saved, tmp_path):
    _, path = saved
    model = _random_tiny(12)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointFileError, match=r"MODEL.SAM.CHECKPOINT: cannot read .*notes\.pth.*text file"):
        load_sam_checkpoint(model, str(text))
    data = open(path, "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match=r"cut\.pth.*truncated"):
        load_sam_checkpoint(model, str(cut))
    with pytest.raises(CheckpointFileError, match=r"BASE_CHECKPOINT: cannot read .*cut\.pth"):
        load_sam_checkpoint(model, path, base_path=str(cut))
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        load_sam_checkpoint(model, str(tmp_path / "missing.pth"))
    torch.save({"image_encoder.pos_embed": 3}, str(tmp_path / "odd.pth"))
    with pytest.raises(CheckpointFileError, match=r"odd\.pth: entry 'image_encoder.pos_embed' is a int, not a tensor"):
        read_sam_state_dict(str(tmp_path / "odd.pth"))
    torch.save({"model": {"image_encoder.pos_embed": "x"}, "epoch": 1}, str(tmp_path / "odd2.pth"))
    with pytest.raises(CheckpointFileError, match=r"^MODEL.SAM.CHECKPOINT: .*odd2\.pth: entry 'image_encoder.pos_embed'"):
        read_sam_state_dict(str(tmp_path / "odd2.pth"))
    torch.save({}, str(tmp_path / "empty.pth"))
    with pytest.raises(CheckpointFileError, match=r"empty\.pth: expected a \(non-empty\) SAM state dict"):
        read_sam_state_dict(str(tmp_path / "empty.pth"))
