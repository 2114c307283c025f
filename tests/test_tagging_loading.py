"""Loading RAM (strict) and DAPE (non-strict, reported) weights; tag list and thresholds files."""
from __future__ import annotations

import logging
import os

import pytest
import torch

from rass.checkpoint import CheckpointFileError
from rass.config import setup_cfg
from rass.modeling.tagging import build_tagger, write_tiny_tagger_files
from rass.modeling.tagging.loading import (
    load_dape_weights,
    load_ram_weights,
    read_checkpoint,
    read_tag_list,
    read_thresholds,
)
from rass.modeling.tagging.lora import is_lora_key, lora_state_dict
from rass.utils.errors import UserValueError

from test_tagging_model import _one_thread, randomize, tiny_ram  # noqa: F401 (fixture)


@pytest.fixture()
def trained_ram(tmp_path):
    """A randomised tiny RAM saved as the official file is: {'model': state_dict, ...}."""
    src = tiny_ram()
    randomize(src)
    path = tmp_path / "ram_tiny.pth"
    torch.save({"model": src.state_dict(), "epoch": 3, "config": {"image_size": 32}}, path)
    return src, str(path)


def _same_outputs(a, b):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(a.tag_logits(x), b.tag_logits(x))


def test_strict_load_roundtrip_and_buffers(trained_ram, tmp_path):
    src, path = trained_ram
    dst = tiny_ram()
    report = load_ram_weights(dst, path)
    assert report.missing == [] and report.unexpected == []
    assert set(report.loaded) | set(report.derived) == set(dst.state_dict())
    _same_outputs(src, dst)
    # Without the derived buffers, with a DDP prefix and the legacy 'vision_multi' name: still loads.
    sd = {("module." + k).replace("tagging_head", "vision_multi"): v for k, v in src.state_dict().items()
          if not k.endswith(("relative_position_index", "attn_mask", "position_ids"))}
    torch.save(sd, tmp_path / "stripped.pth")
    dst2 = tiny_ram()
    load_ram_weights(dst2, str(tmp_path / "stripped.pth"))
    _same_outputs(src, dst2)


def test_tied_copies_fill_in_and_later_copy_wins(trained_ram, tmp_path, caplog):
    src, _ = trained_ram
    sd = src.state_dict()
    only_head = {k: v for k, v in sd.items()
                 if not (k.startswith("tag_encoder.encoder.layer.0.") and "crossattention" in k)}
    torch.save(only_head, tmp_path / "head_only.pth")
    dst = tiny_ram()
    load_ram_weights(dst, str(tmp_path / "head_only.pth"))
    _same_outputs(src, dst)

    differing = dict(sd)
    key = "tag_encoder.encoder.layer.1.intermediate.dense.weight"
    differing[key] = sd[key] + 1.0  # break the tie in the file
    torch.save(differing, tmp_path / "differing.pth")
    dst = tiny_ram()
    with caplog.at_level(logging.WARNING):
        load_ram_weights(dst, str(tmp_path / "differing.pth"))
    assert key in caplog.text
    torch.testing.assert_close(dst.tagging_head.encoder.layer[1].intermediate.dense.weight,
                               sd["tagging_head.encoder.layer.1.intermediate.dense.weight"])


def test_missing_misshapen_unexpected_are_named(trained_ram, tmp_path):
    src, _ = trained_ram
    sd = src.state_dict()
    missing = {k: v for k, v in sd.items() if k != "visual_encoder.layers.1.blocks.0.mlp.fc2.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match=r"missing 1 entries: visual_encoder\.layers\.1\.blocks\.0\.mlp\.fc2\.bias"):
        load_ram_weights(tiny_ram(), str(tmp_path / "missing.pth"))

    bad = dict(sd)
    bad["image_proj.weight"] = torch.zeros(16, 7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"image_proj\.weight: file \[16, 7\] vs model \[16, 64\]"):
        load_ram_weights(tiny_ram(), str(tmp_path / "bad.pth"))

    with pytest.raises(ValueError, match=r"label_embed: file \[11, 16\] vs model \[12, 16\].*tag list"):
        load_ram_weights(tiny_ram(num_classes=12), _save(sd, tmp_path / "full.pth"))

    extra = dict(sd)
    extra["something.else"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match=r"unexpected 1 entries: something\.else"):
        load_ram_weights(tiny_ram(), str(tmp_path / "extra.pth"))

    lora = tiny_ram(lora_rank=4).state_dict()
    torch.save(lora, tmp_path / "lora_full.pth")
    with pytest.raises(KeyError, match="dape"):
        load_ram_weights(tiny_ram(), str(tmp_path / "lora_full.pth"))

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_ram_weights(tiny_ram(), str(tmp_path / "nowhere.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointFileError) as e:
        read_checkpoint(str(tmp_path / "junk.pth"), "MODEL.TAGGER.RAM.WEIGHTS")
    assert str(e.value).startswith(f"MODEL.TAGGER.RAM.WEIGHTS: cannot read {tmp_path / 'junk.pth'}: it is a text file "
                                   "(16 bytes, starts with 'not a checkpoint'); expected a state dict saved with "
                                   "torch.save (.pth)")
    with pytest.raises(UserValueError, match=f"MODEL.TAGGER.RAM.WEIGHTS: {tmp_path} is a folder; expected a weight"):
        read_checkpoint(str(tmp_path), "MODEL.TAGGER.RAM.WEIGHTS")


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_dape_adapters_load_non_strict_with_report(trained_ram, tmp_path):
    src_ram, ram_path = trained_ram
    dape_src = tiny_ram(lora_rank=4)
    load_ram_weights(dape_src, ram_path)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in dape_src.named_parameters():
            if is_lora_key(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    adapters = lora_state_dict(dape_src)
    lora_names = [k for k in dape_src.state_dict() if is_lora_key(k)]
    assert sorted(adapters) == sorted(lora_names)
    # Every adapted layer exists where expected: Swin qkv, BERT query/key of every attention.
    assert all(k.rsplit(".", 2)[-2] in ("qkv", "query", "key") for k in lora_names)
    assert sum(".qkv." in k for k in lora_names) == 2 * 8  # 8 Swin blocks

    path = _save(adapters, tmp_path / "DAPE.pth")
    dst = tiny_ram(lora_rank=4)
    base = load_ram_weights(dst, ram_path)
    assert sorted(base.missing) == sorted(lora_names)  # RAM file has no adapters
    report = load_dape_weights(dst, path)
    assert sorted(report.loaded) == sorted(lora_names)
    assert report.missing == [] and report.unexpected == []
    _same_outputs(dape_src, dst)
    with torch.no_grad():
        assert not torch.allclose(dst.tag_logits(torch.ones(1, 3, 32, 32)), src_ram.tag_logits(torch.ones(1, 3, 32, 32)))

    partial = {k: v for k, v in adapters.items() if not k.startswith("text_decoder.")}
    partial["visual_encoder.layers.0.blocks.0.attn.qkv.lora_C"] = torch.zeros(1)
    report = load_dape_weights(tiny_ram(lora_rank=4), _save(partial, tmp_path / "partial.pth"))
    assert sorted(report.missing) == sorted(k for k in lora_names if k.startswith("text_decoder."))
    assert report.unexpected == ["visual_encoder.layers.0.blocks.0.attn.qkv.lora_C"]
    assert "not in the file" in report.summary() and "lora_C" in report.summary()

    bad = dict(adapters)
    bad["tagging_head.encoder.layer.0.crossattention.self.key.lora_A"] = torch.zeros(4, 99)
    with pytest.raises(ValueError, match=r"crossattention\.self\.key\.lora_A: file \[4, 99\] vs model \[4, 16\]"):
        load_dape_weights(tiny_ram(lora_rank=4), _save(bad, tmp_path / "bad_dape.pth"))
    with pytest.raises(ValueError, match="no entry"):
        load_dape_weights(tiny_ram(lora_rank=4), _save({"foo": torch.zeros(1)}, tmp_path / "foo.pth"))


def test_tag_list_and_thresholds_files(tmp_path):
    (tmp_path / "tags.txt").write_text("cat\ndog\nteddy bear\n\n", encoding="utf-8")
    assert read_tag_list(str(tmp_path / "tags.txt")) == ["cat", "dog", "teddy bear"]
    (tmp_path / "holes.txt").write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_tag_list(str(tmp_path / "holes.txt"))
    with pytest.raises(FileNotFoundError, match="MODEL.TAGGER.RAM.TAG_LIST.*absent.txt"):
        read_tag_list(str(tmp_path / "absent.txt"))

    (tmp_path / "thr.txt").write_text("0.65\n0.8\n0.9\n", encoding="utf-8")
    torch.testing.assert_close(read_thresholds(str(tmp_path / "thr.txt"), 3), torch.tensor([0.65, 0.8, 0.9]))
    with pytest.raises(ValueError, match="3 thresholds but the tag list has 4 tags"):
        read_thresholds(str(tmp_path / "thr.txt"), 4)
    (tmp_path / "thr_bad.txt").write_text("0.65\nhigh\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 'high'"):
        read_thresholds(str(tmp_path / "thr_bad.txt"), 2)


def test_config_errors_name_files_and_keys(tmp_path, trained_ram):
    _, ram_path = trained_ram
    opts = write_tiny_tagger_files(str(tmp_path / "tiny"), num_tags=11)
    cfg = setup_cfg(opts=opts + ["MODEL.TAGGER.NAME", "ram", "MODEL.TAGGER.RAM.TAG_LIST", "",
                                 "MODEL.TAGGER.RAM.WEIGHTS", ram_path])
    with pytest.raises(ValueError, match="MODEL.TAGGER.RAM.TAG_LIST is empty"):
        build_tagger(cfg)
    cfg = setup_cfg(opts=opts + ["MODEL.TAGGER.NAME", "ram", "MODEL.TAGGER.RAM.HEAD_BERT_CONFIG",
                                 str(tmp_path / "no_bert")])
    with pytest.raises(FileNotFoundError, match="HEAD_BERT_CONFIG.*no_bert"):
        build_tagger(cfg)
    cfg = setup_cfg(opts=opts + ["MODEL.TAGGER.NAME", "dape", "MODEL.TAGGER.RAM.WEIGHTS", ram_path,
                                 "MODEL.TAGGER.DAPE.WEIGHTS", str(tmp_path / "DAPE_absent.pth")])
    with pytest.raises(FileNotFoundError, match="MODEL.TAGGER.DAPE.WEIGHTS.*DAPE_absent.pth"):
        build_tagger(cfg)
    # With the matching tag list, the tiny tagger loads the file strictly through the config.
    cfg = setup_cfg(opts=opts + ["MODEL.TAGGER.NAME", "ram", "MODEL.TAGGER.RAM.WEIGHTS", ram_path])
    tagger = build_tagger(cfg)
    assert os.path.basename(ram_path) == "ram_tiny.pth" and len(tagger.tags) == 11
