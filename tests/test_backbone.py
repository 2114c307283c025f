"""The RASS backbone: feature taps, projections, trainable parameters, prompts, sliding windows,
local weight folders and error messages (tiny models on CPU; the full-size model on `meta`)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_backbone
from detectron2.utils.events import EventStorage

import rass.modeling.backbone  # noqa: F401  (registers RASS)
from rass.config import setup_cfg
from rass.modeling.diffusion.clip_tokenizer import tiny_clip_tokenizer, write_clip_tokenizer
from rass.modeling.backbone.feature_taps import capture_outputs, resolve_taps
from rass.modeling.backbone.prompt_embedding import PromptEmbeddingCache, clean_prompt
from rass.modeling.diffusion.sd_components import build_sd_parts
from rass.modeling.backbone.sliding_window import sliding_window_features, window_boxes
from rass.modeling.tagging import Tagger

TINY = ["MODEL.BACKBONE.NAME", "RASS", "MODEL.DEVICE", "cpu", "MODEL.RASS.ARCH", "tiny",
        "MODEL.FEATURE_PROJECTION.FEATURE_DIMS", "[]", "MODEL.FEATURE_PROJECTION.FEATURE_STRIDES", "[]",
        "MODEL.FEATURE_PROJECTION.PROJECTION_DIM", "128"]
# Documented taps of Stable Diffusion 2.1-base (rass_method.md, "Backbone").
SD21_CHANNELS = [256, 512, 1280, 1280, 640, 320]
SD21_STRIDES = [4, 8, 32, 16, 8, 8]


def tiny_backbone(*opts):
    return build_backbone(setup_cfg(None, TINY + list(opts)))


@pytest.fixture(scope="module")
def full_meta_backbone():
    return build_backbone(setup_cfg(None, ["MODEL.BACKBONE.NAME", "RASS", "MODEL.DEVICE", "meta"]))


def test_full_size_hooks_give_six_documented_features(full_meta_backbone):
    bb = full_meta_backbone.eval()
    x = torch.zeros(1, 3, 512, 512, device="meta")
    cond = bb.text_embeddings([""])
    assert tuple(cond.shape) == (1, 77, 1024)
    with capture_outputs(resolve_taps(bb, bb.feature_taps)) as store, torch.no_grad():
        out = bb.extract(x, cond)
    feats = [store[t] for t in bb.feature_taps]
    assert [f.shape[1] for f in feats] == SD21_CHANNELS
    assert [512 // f.shape[-1] for f in feats] == SD21_STRIDES
    assert [512 // f.shape[-2] for f in feats] == SD21_STRIDES
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (1, 512, 128, 128), "res3": (1, 512, 64, 64), "res4": (1, 512, 32, 32), "res5": (1, 512, 16, 16)}
    assert {k: (s.channels, s.stride) for k, s in bb.output_shape().items()} == {
        "res2": (512, 4), "res3": (512, 8), "res4": (512, 16), "res5": (512, 32)}
    assert bb.size_divisibility == 64
    # released grouping: res3 sums taps 1, 4, 5 (all stride 8)
    assert bb.projection.groups["res3"] == (8, [1, 4, 5])
    assert bb.projection.groups["res5"] == (32, [2])


def test_full_size_parameter_counts(full_meta_backbone):
    bb = full_meta_backbone
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    lora = sum(p.numel() for n, p in bb.unet.named_parameters() if "lora_" in n)
    assert count(bb.vae) == 83_653_863
    assert count(bb.text_encoder) == 340_387_840
    assert count(bb.unet) - lora == 865_910_724
    assert lora == 4_044_176
    assert count(bb.projection) == 3_774_464
    trainable = sum(p.numel() for p in bb.parameters() if p.requires_grad)
    assert trainable == 3_774_464 + 4_044_176 + 11_840  # projections + LoRA + conv_in


def test_tiny_taps_match_inferred_shapes_and_only_intended_params_learn():
    bb = tiny_backbone().train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with capture_outputs(resolve_taps(bb, bb.feature_taps)) as store:
        out = bb(x)
    feats = [store[t] for t in bb.feature_taps]
    assert [64 // f.shape[-1] for f in feats] == SD21_STRIDES
    assert [f.shape[1] for f in feats] == list(bb.projection.feature_dims) == [16, 16, 32, 32, 32, 16]
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res2": (2, 128, 16, 16), "res3": (2, 128, 8, 8), "res4": (2, 128, 4, 4), "res5": (2, 128, 2, 2)}
    sum(v.square().mean() for v in out.values()).backward()
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    for n in trainable:
        assert (n.startswith("projection.") or (n.startswith("unet.") and ".lora_" in n and ".rass." in n)
                or n in ("unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias")), n
    assert "unet.conv_in.base_layer.weight" in trainable
    assert any(".lora_B.rass." in n for n in trainable)
    for n, p in bb.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    assert not bb.vae.training and not bb.text_encoder.training and bb.unet.training


def test_lora_targets_follow_released_rule():
    bb = tiny_backbone()
    wrapped = {n[: -len(".lora_A.rass.weight")] for n, _ in bb.unet.named_parameters() if n.endswith(".lora_A.rass.weight")}
    assert "conv_in" in wrapped and "conv_out" not in wrapped
    assert any(n.endswith("attn2.to_k") for n in wrapped) and any(n.endswith("ff.net.2") for n in wrapped)
    assert any(n.endswith("upsamplers.0.conv") for n in wrapped) and any(n.endswith("conv_shortcut") for n in wrapped)
    assert not any("time_emb" in n or "norm" in n for n in wrapped)


def test_sliding_window_equals_whole_image_when_one_window_covers_it():
    bb = tiny_backbone().eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        slide = bb(x)
        bb.sliding_window_enabled = False
        whole = bb(x)
        again = bb(x)
    for k in whole:
        torch.testing.assert_close(slide[k], whole[k], rtol=0, atol=0)
        torch.testing.assert_close(again[k], whole[k], rtol=0, atol=0)  # eval re-seeds: reproducible


def test_sliding_window_averages_overlaps():
    # A translation-equivariant "backbone" (average pooling): averaging overlapping windows must
    # reproduce the whole-image result exactly, whatever the windows.
    strides = {"res2": 4, "res5": 32}

    def extract(crops, cond):
        return {k: F.avg_pool2d(crops, s) * cond[:, None, None, None] for k, s in strides.items()}

    x = torch.rand(2, 3, 96, 224)
    cond = torch.tensor([1.0, 2.0])
    got = sliding_window_features(extract, x, cond, strides, size=64, stride=32, batch_size=3, align=32)
    want = extract(x, cond)
    for k in strides:
        torch.testing.assert_close(got[k], want[k])
    assert window_boxes(512, 704, 512, 512) == [(0, 0, 512, 512), (0, 192, 512, 704)]
    with pytest.raises(ValueError, match="STRIDE: 48 is not a multiple of 32"):
        sliding_window_features(extract, x, cond, strides, size=64, stride=48, align=32)


class _RecordingTagger(Tagger):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, images):
        self.seen.append(float(images.mean()))
        return ["sky, tree"] * images.shape[0]


@pytest.mark.parametrize("mode,train,expect_clean", [
    ("clean_train_lq_test", True, True), ("clean_train_lq_test", False, False), ("lq", True, False)])
def test_tagger_reads_the_configured_image(mode, train, expect_clean):
    bb = tiny_backbone("MODEL.TAGGER.INPUT", mode, "MODEL.RASS.SLIDING_WINDOW.ENABLED", "False")
    bb.tagger = _RecordingTagger()
    bb.train(train)
    lq = torch.full((1, 3, 64, 64), -1.0)  # black in [-1, 1]
    clean = torch.ones(1, 3, 64, 64)       # white in [0, 1]
    with torch.set_grad_enabled(train):
        bb(lq, clean_images=clean)
    assert bb.tagger.seen == [1.0 if expect_clean else 0.0]


def test_prompt_cleaning_and_embedding_cache():
    assert clean_prompt("sky, tree") == "sky  tree"
    assert clean_prompt("['sky', 'tree']") == "sky  tree"
    assert clean_prompt("sky, tree", "high quality") == "sky  tree  high quality"
    assert clean_prompt("") == ""
    parts = build_sd_parts(arch="tiny")
    cache = PromptEmbeddingCache(max_size=2)
    calls = []
    hook = parts.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    a = cache.encode(["sky, tree", "road", "sky, tree"], parts.tokenizer, parts.text_encoder)
    b = cache.encode(["road"], parts.tokenizer, parts.text_encoder)
    hook.remove()
    assert calls == [2]  # two distinct prompts encoded once, in one batch
    assert cache.hits == 2 and cache.misses == 2
    torch.testing.assert_close(a[0], a[2])
    torch.testing.assert_close(a[1], b[0])
    ids = parts.tokenizer(["sky tree"], max_length=77, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(a[0], parts.text_encoder(ids)[0][0])
    cache.encode(["x", "y", "z"], parts.tokenizer, parts.text_encoder)
    assert len(cache) == 2


def test_posterior_sampling_is_seeded_in_eval_and_per_rank_and_iteration_in_training(monkeypatch):
    bb = tiny_backbone("MODEL.RASS.SLIDING_WINDOW.ENABLED", "False")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    res5 = lambda m: m(x, prompts=[""])["res5"]  # noqa: E731  (res5 comes from the UNet; res2 is a VAE feature)
    differ = lambda a, b: (a - b).abs().mean() > 1e-3 * b.abs().mean()  # noqa: E731
    with torch.no_grad():
        bb.eval()
        e1, e2 = res5(bb), res5(bb)
        bb.seed = 1
        e_other = res5(bb)  # another MODEL.RASS.SEED
        bb.seed, bb.latent = 0, "mean"
        e_mean = res5(bb)  # no sample drawn: the posterior mean
        bb.latent = "sample"
        bb.train()
        free1, free2 = res5(bb), res5(bb)  # outside a trainer: a new draw per call
        with EventStorage(0) as storage:
            per_iter = []
            for it in range(3):
                storage.iter = it
                per_iter.append(res5(bb))
                bb.eval()
                torch.testing.assert_close(res5(bb), e1, rtol=0, atol=0)  # eval keeps its own generator
                bb.train()
        # a resumed run (a fresh module, the trainer's iteration restored) draws what this one drew
        resumed = tiny_backbone("MODEL.RASS.SLIDING_WINDOW.ENABLED", "False")
        resumed.load_state_dict(bb.state_dict())
        resumed.train()
        with EventStorage(2):
            again = res5(resumed)
            same_iter = res5(resumed)  # a second forward in one iteration: another draw
            resumed._train_step = None  # as a fresh process of rank 1 at the same iteration
            monkeypatch.setattr("rass.modeling.backbone.rass_backbone.comm.get_rank", lambda: 1)
            rank1 = res5(resumed)
    assert torch.equal(e1, e2) and differ(e_other, e1) and differ(e1, e_mean)
    assert differ(free1, free2)
    assert differ(per_iter[1], per_iter[0]) and differ(per_iter[2], per_iter[1])
    torch.testing.assert_close(again, per_iter[2], rtol=0, atol=0)
    assert differ(same_iter, again)
    assert differ(rank1, per_iter[2])  # another rank, another sample
    mean_bb = tiny_backbone("MODEL.RASS.LATENT", "mean")
    assert mean_bb.latent == "mean"


def test_loads_from_a_local_diffusers_folder(tmp_path):
    torch.manual_seed(3)
    parts = build_sd_parts(arch="tiny")
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    parts.text_encoder.save_pretrained(tmp_path / "text_encoder")
    write_clip_tokenizer(str(tmp_path / "tokenizer"))
    bb = tiny_backbone("MODEL.RASS.SD_PATH", str(tmp_path), "MODEL.RASS.LORA_RANK", "0")
    for name, ref in (("unet", parts.unet), ("vae", parts.vae), ("text_encoder", parts.text_encoder)):
        got = getattr(bb, name).state_dict()
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=f"{name}.{k}")
    text = "wall, sky"
    assert bb.tokenizer(text).input_ids == tiny_clip_tokenizer()(text).input_ids


def test_missing_weight_folder_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*unet/ \(config\.json"):
        tiny_backbone("MODEL.RASS.SD_PATH", str(tmp_path / "nope"))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"unet/ has none of \['diffusion_pytorch_model\.safetensors'"):
        tiny_backbone("MODEL.RASS.SD_PATH", str(tmp_path))
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing vae/config\.json"):
        tiny_backbone("MODEL.RASS.SD_PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"MODEL\.RASS\.ARCH='huge'.*sd21_base"):
        tiny_backbone("MODEL.RASS.ARCH", "huge")


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"FEATURE_DIMS\[0\]=256 but tap 'vae.encoder.down_blocks.1' .* has 16"):
        tiny_backbone("MODEL.FEATURE_PROJECTION.FEATURE_DIMS", "[256, 512, 1280, 1280, 640, 320]")
    with pytest.raises(ValueError, match="FEATURE_TAPS: no module 'unet.up_blocks.9'"):
        tiny_backbone("MODEL.RASS.FEATURE_TAPS", "['unet.up_blocks.9']", "MODEL.FEATURE_PROJECTION.GROUPED_INDICES",
                      "[[0]]", "MODEL.FEATURE_PROJECTION.FEATURE_DIMS", "[32]",
                      "MODEL.FEATURE_PROJECTION.FEATURE_STRIDES", "[32]", "MODEL.FEATURE_PROJECTION.OUT_FEATURES",
                      "['res5']")
    with pytest.raises(ValueError, match="MODEL.RASS.LATENT"):
        tiny_backbone("MODEL.RASS.LATENT", "mode")
    with pytest.raises(ValueError, match="FROZEN_DTYPE"):
        tiny_backbone("MODEL.RASS.FROZEN_DTYPE", "float8")
    bb = tiny_backbone()
    with pytest.raises(ValueError, match="64x84 is not a multiple of 8"):
        bb(torch.zeros(1, 3, 64, 84))


def test_frozen_parts_in_bfloat16_still_run():
    bb = tiny_backbone("MODEL.RASS.FROZEN_DTYPE", "bfloat16", "MODEL.RASS.GRADIENT_CHECKPOINTING", "True").train()
    assert bb.vae.dtype == torch.bfloat16 and bb.text_encoder.dtype == torch.bfloat16
    assert bb.unet.dtype == torch.float32 and bb.unet.is_gradient_checkpointing
    out = bb(torch.rand(1, 3, 64, 64) * 2 - 1)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in out.values())
    sum(v.mean() for v in out.values()).backward()
    assert bb.unet.conv_in.base_layer.weight.grad is not None


def test_prompt_cache_is_cleared_when_weights_are_loaded():
    bb = tiny_backbone()
    bb.text_embeddings(["sky"])
    assert len(bb.prompt_cache) == 1
    bb.load_state_dict(bb.state_dict())
    assert len(bb.prompt_cache) == 0
