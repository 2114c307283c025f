"""The `ram` / `dape` taggers: thresholds, order, batching, cache, preprocessing, tool, RASS plug-in."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.transforms import v2 as T

from rass.config import setup_cfg
from rass.modeling.tagging import TAGGER_REGISTRY, DAPETagger, RAMTagger, build_tagger, write_tiny_tagger_files

from test_tagging_model import _one_thread, randomize  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_opts(tmp_path_factory):
    return write_tiny_tagger_files(str(tmp_path_factory.mktemp("tiny_tagger")), num_tags=24)


def make(tiny_opts, name="ram", extra=()):
    cfg = setup_cfg(opts=list(tiny_opts) + ["MODEL.TAGGER.NAME", name, *extra])
    tagger = build_tagger(cfg)
    randomize(tagger, 0.5)
    return tagger


def images(n=4, seed=0, size=(40, 56)):
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_registered_and_interface(tiny_opts):
    assert TAGGER_REGISTRY.get("ram") is RAMTagger and TAGGER_REGISTRY.get("dape") is DAPETagger
    for name in ("ram", "dape"):
        tagger = make(tiny_opts, name)
        out = tagger(images(3))
        assert isinstance(out, list) and len(out) == 3 and all(isinstance(s, str) for s in out)
        assert not any(p.requires_grad for p in tagger.parameters())
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        tagger(torch.rand(3, 32, 32))


def test_thresholds_per_class_and_stable_order(tiny_opts):
    tagger = make(tiny_opts)
    x = images(2)
    probs = tagger.tag_probabilities(x)
    assert probs.shape == (2, 24) and probs.dtype == torch.float32
    # Per-class thresholds chosen around image 0's probabilities: exactly the classes below pass.
    chosen = [19, 3, 11, 7]
    thr = probs[0] + 1e-3
    thr[chosen] = probs[0, chosen] - 1e-3
    tagger.class_thresholds = thr
    text0 = tagger.decode(probs)[0]
    assert text0 == ", ".join(tagger.tags[i] for i in sorted(chosen))  # tag-list order, ", "-joined
    tagger.clear_cache()
    assert tagger(x)[0] == text0
    # Strictly greater: a probability equal to its threshold is not a tag.
    tagger.class_thresholds = probs[0].clone()
    assert tagger.decode(probs[:1]) == [""]
    # Deleted indices never appear.
    tagger.class_thresholds = torch.zeros(24)
    tagger.delete_tag_indices = [0, 5]
    kept = tagger.kept_indices(probs)
    assert kept[0] == [i for i in range(24) if i not in (0, 5)]


def test_thresholds_file_is_used(tiny_opts):
    tagger = make(tiny_opts)
    values = [float(line) for line in open(tiny_opts[tiny_opts.index("MODEL.TAGGER.RAM.THRESHOLDS") + 1])]
    torch.testing.assert_close(tagger.class_thresholds, torch.tensor(values))
    default = make(tiny_opts, extra=("MODEL.TAGGER.RAM.THRESHOLDS", "", "MODEL.TAGGER.RAM.DEFAULT_THRESHOLD", 0.42))
    torch.testing.assert_close(default.class_thresholds, torch.full((24,), 0.42))


def test_batching_and_composition_do_not_change_tags(tiny_opts):
    tagger = make(tiny_opts, extra=("MODEL.TAGGER.RAM.CACHE", False, "MODEL.TAGGER.RAM.BATCH_SIZE", 2))
    x = images(5, seed=3)
    ranked = tagger.tag_probabilities(x).sort(dim=0).values
    tagger.class_thresholds = (ranked[2] + ranked[3]) / 2  # per class, between two images' probabilities
    out = tagger(x)
    assert len(set(out)) > 1  # the random tiny network tells these images apart
    tagger.batch_size = 5
    assert tagger(x) == out
    perm = [3, 0, 4, 1, 2]
    assert tagger(x[perm]) == [out[i] for i in perm]
    assert tagger(x[2:3]) == [out[2]]


def test_cache_per_image_in_eval_only(tiny_opts, monkeypatch):
    tagger = make(tiny_opts)
    calls = []
    original = tagger.tag_probabilities
    monkeypatch.setattr(tagger, "tag_probabilities", lambda t: (calls.append(t.shape[0]), original(t))[1])
    x = images(3, seed=1)
    first = tagger(x)
    again = tagger(torch.cat([x[1:], images(1, seed=9)]))  # two cached images, one new
    assert calls == [3, 1] and again[:2] == first[1:]
    tagger.train()  # back to training: cache cleared and not used
    assert len(tagger._cache) == 0
    tagger(x)
    tagger(x)
    assert calls == [3, 1, 3, 3]
    assert not tagger.visual_encoder.training  # the network itself stays in eval mode
    tagger.eval()
    tagger.cache_size = 2
    tagger(x)
    assert len(tagger._cache) == 2


def test_preprocessing_resize_and_normalisation(tiny_opts):
    tagger = make(tiny_opts)
    x = images(2, size=(50, 70))
    # default = the release: torchvision 0.16's `transforms.Resize((384, 384))` on tensors, no antialias
    ref = T.Resize((32, 32), antialias=False)(x)
    torch.testing.assert_close(tagger.resize(x), ref, atol=1e-6, rtol=0)
    smooth = T.Resize((32, 32), antialias=True)(x)
    assert (tagger.resize(x) - smooth).abs().max() > 1e-2  # the two resizes really differ here
    aa = make(tiny_opts, extra=("MODEL.TAGGER.RAM.ANTIALIAS", "True"))
    torch.testing.assert_close(aa.resize(x), smooth, atol=1e-6, rtol=0)
    flat = torch.full((1, 3, 32, 32), 0.5)
    out = tagger.preprocess(flat)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out[0, :, 0, 0], (0.5 - mean) / std)
    assert tagger.compute_dtype(torch.device("cuda")) == torch.float16
    assert tagger.compute_dtype(torch.device("cpu")) == torch.float32
    bf = make(tiny_opts, extra=("MODEL.TAGGER.RAM.DTYPE", "bfloat16"))
    assert bf.compute_dtype(torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="DTYPE"):
        make(tiny_opts, extra=("MODEL.TAGGER.RAM.DTYPE", "float8"))


def test_runs_in_float32_after_half_cast(tiny_opts):
    tagger = make(tiny_opts)
    x = images(2)
    ref = tagger.tag_probabilities(x)
    tagger.half()  # e.g. moved back from a GPU run: CPU inference casts back to float32
    torch.testing.assert_close(tagger.tag_probabilities(x), ref, atol=2e-3, rtol=0)
    assert tagger.label_embed.dtype == torch.float32


def test_tag_images_tool(tiny_opts, tmp_path):
    from PIL import Image

    tagger = make(tiny_opts)
    weights = tmp_path / "ram_tiny.pth"
    torch.save({"model": tagger.state_dict()}, weights)
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate([(40, 30), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "tag_images.py"), "--weights", str(weights), str(folder),
           "--scores", "--opts", *tiny_opts]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert [ln.split(": ")[0] for ln in lines] == [str(folder / "im0.png"), str(folder / "im1.png")]
    assert "broken.png" in res.stderr
    # The printed tags are those of the tagger on the same images.
    expected = tagger.decode(tagger.tag_probabilities(torch.stack([
        tagger.resize(torch.from_numpy(np.asarray(Image.open(folder / f"im{i}.png").convert("RGB"), np.float32)
                                       / 255.0).permute(2, 0, 1)[None])[0] for i in range(2)])))
    for line, text in zip(lines, expected):
        tags = [t.rsplit(" (", 1)[0] for t in line.split(": ", 1)[1].split(", ")] if text else []
        assert ", ".join(tags) == text


def test_plugs_into_tiny_rass_model(tiny_opts):
    from detectron2.modeling import build_model

    cfg_file = os.path.join(ROOT, "configs", "quickstart", "tiny_rass.yaml")

    cfg = setup_cfg(cfg_file, list(tiny_opts) + ["MODEL.TAGGER.NAME", "dape", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    tagger = model.backbone.tagger
    assert isinstance(tagger, DAPETagger)
    names = set(model.state_dict())
    assert {"backbone.tagger." + k for k in tagger.state_dict()} <= names
    x = torch.rand(1, 3, 64, 64)
    prompts = model.backbone.prompts_for(x * 2 - 1)
    assert prompts == tagger(x)
    with torch.no_grad():
        out = model([{"image": (x[0] * 255).to(torch.uint8), "height": 64, "width": 64}])
    assert out[0]["sem_seg"].shape[-2:] == (64, 64)
    assert len(tagger._cache) >= 1  # evaluation caches tags per image
    model.train()
    assert tagger.training and not tagger.visual_encoder.training  # told the mode; network stays eval
    assert len(tagger._cache) == 0 and not model.backbone.vae.training
