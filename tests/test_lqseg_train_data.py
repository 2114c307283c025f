"""GleSAM's training data: the "lqseg_train" online degradation, the LQSeg training sets and the
generated training split."""
import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import rass  # noqa: F401  (registers the datasets)
from rass.config import setup_cfg
from rass.data.degradation import Degradation, OnlineDegradation, get_spec
from rass.data.degradation.sampling import sample_params
from tests.conftest import load_script

N_SEEDS = 4000  # binomial std of a frequency <= sqrt(0.25 / 4000) = 0.008; tolerances are ~4 std


def _frequencies(values, keys):
    return {k: sum(v == k for v in values) / len(values) for k in keys}


# ----------------------------------------------------------------------------- the preset
def test_lqseg_train_preset_values_and_rest_equal_to_rass():
    spec, rass_spec = get_spec("lqseg_train"), get_spec("rass")
    assert spec.resize_prob == (0.1, 0.2, 0.7) and spec.resize_range == (0.5, 1.5)
    assert spec.second_resize_divisors == (1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0)
    assert spec.scale == 1
    changed = {"resize_prob", "resize_range", "second_resize_divisors"}
    for f in dataclasses.fields(spec):  # kernels, noise, JPEG, second stage: as the "rass" model
        if f.name not in changed:
            assert getattr(spec, f.name) == getattr(rass_spec, f.name), f.name
    assert rass_spec.second_resize_divisors is None
    # recorded specs (offline degradation.json): the list when set, no new key when off
    assert spec.to_dict()["second_resize_divisors"] == [1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 4.0, 4.0]
    assert "second_resize_divisors" not in rass_spec.to_dict() and rass_spec.to_dict()["second_resize_divisor"] == 1.0


def test_divisor_distribution_matches_the_release_list():
    spec = get_spec("lqseg_train")
    h, w = 64, 48
    params = [sample_params(spec, seed, h, w) for seed in range(N_SEEDS)]
    divs = [p["resize2"]["divisor"] for p in params]
    freq = _frequencies(divs, (1.0, 2.0, 3.0, 4.0))
    assert sum(freq.values()) == 1.0  # nothing else is ever drawn
    expected = {1.0: 0.125, 2.0: 0.125, 3.0: 0.25, 4.0: 0.5}  # [1, 2, 3, 3, 4, 4, 4, 4] drawn uniformly
    for k, p in expected.items():
        assert abs(freq[k] - p) < 0.03, (k, freq)
    for p in params:  # the divisor is the one that sized the second-stage resize
        d, s = p["resize2"]["divisor"], p["resize2"]["scale"]
        assert p["resize2"]["size"] == [max(1, int(h / d * s)), max(1, int(w / d * s))]


def test_first_stage_resize_probabilities_and_ranges():
    spec = get_spec("lqseg_train")
    scales = [sample_params(spec, seed, 40, 40)["resize1"]["scale"] for seed in range(N_SEEDS)]
    kinds = ["up" if s > 1 else "down" if s < 1 else "keep" for s in scales]
    freq = _frequencies(kinds, ("up", "down", "keep"))
    for k, p in zip(("up", "down", "keep"), (0.1, 0.2, 0.7)):
        assert abs(freq[k] - p) < 0.03, (k, freq)
    assert min(scales) >= 0.5 and max(scales) <= 1.5
    ups = [s for s in scales if s > 1]
    assert np.mean(ups) == pytest.approx(1.25, abs=0.03)  # uniform on [1, 1.5]


def test_fixed_divisor_presets_record_their_divisor_and_do_not_draw_one():
    for preset, d in (("rass", 1.0), ("lqseg_1", 1.0), ("lqseg_2", 2.0), ("lqseg_3", 4.0)):
        spec = get_spec(preset)
        assert {sample_params(spec, seed, 50, 50)["resize2"]["divisor"] for seed in range(50)} == {d}
    # a one-element list gives that divisor, but it is a draw: the rest of the stream moves on
    a = sample_params(get_spec("lqseg_2"), 7, 50, 50)
    b = sample_params(get_spec("rass", second_resize_divisors=[2]), 7, 50, 50)
    assert a["resize2"]["divisor"] == b["resize2"]["divisor"] == 2.0
    assert a["blur1"] == b["blur1"] and a["resize1"] == b["resize1"]  # draws before the divisor are shared


def test_per_image_seed_determinism_and_output_size():
    eng = Degradation(get_spec("lqseg_train"), seed=0, num_threads=1)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 37, 53, generator=g), torch.rand(3, 48, 40, generator=g)]
    out1, p1 = eng.degrade_list(imgs, seeds=[11, 12])
    out2, p2 = eng.degrade_list(imgs[::-1], seeds=[12, 11])  # other order, same per-image seeds
    assert p1 == p2[::-1]
    assert torch.equal(out1[0], out2[1]) and torch.equal(out1[1], out2[0])
    for img, out in zip(imgs, out1):
        assert out.shape == img.shape  # back at the input size whatever the divisor
        assert torch.equal(out, torch.round(out * 255) / 255)  # 8-bit levels
        assert not torch.equal(out, img)
    out3, _ = eng.degrade_list(imgs[:1], seeds=[13])
    assert not torch.equal(out3[0], out1[0])
    # every divisor value ends at the input size
    seen = set()
    for seed in range(40):
        o, p = eng.degrade_list([imgs[0]], seeds=[seed])
        seen.add(p[0]["resize2"]["divisor"])
        assert o[0].shape == imgs[0].shape
        if len(seen) == 4:
            break
    assert seen == {1.0, 2.0, 3.0, 4.0}


def test_config_key_and_validation():
    cfg = setup_cfg(None, ["INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.PRESET", "lqseg_train"])
    assert cfg.INPUT.DEGRADATION.PARAMS.SECOND_RESIZE_DIVISORS is None
    assert OnlineDegradation(cfg).spec == get_spec("lqseg_train")
    cfg = setup_cfg(None, ["INPUT.DEGRADATION.PRESET", "lqseg_train", "INPUT.DEGRADATION.PARAMS.SECOND_RESIZE_DIVISORS", "[2, 4]"])
    assert OnlineDegradation(cfg).spec.second_resize_divisors == (2.0, 4.0)
    cfg = setup_cfg(None, ["INPUT.DEGRADATION.PRESET", "lqseg_train", "INPUT.DEGRADATION.PARAMS.SECOND_RESIZE_DIVISORS", "[]"])
    off = OnlineDegradation(cfg).spec
    assert off.second_resize_divisors is None and off.second_resize_divisor == 1.0
    with pytest.raises(ValueError, match="second_resize_divisors=.*positive"):
        get_spec("lqseg_train", second_resize_divisors=[1, 0])
    with pytest.raises(ValueError, match="second_resize_divisors.*list of numbers"):
        get_spec("lqseg_train", second_resize_divisors=["a"])
    with pytest.raises(ValueError, match="second_resize_divisors.*must be a list"):
        get_spec("lqseg_train", second_resize_divisors=4)


def test_online_wrapper_seeded_from_config_seed():
    """The model-side wrapper (as MaskFormer.preprocess_image uses it): 0..255 images in, same sizes out."""
    opts = ["INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.PRESET", "lqseg_train", "INPUT.DEGRADATION.SEED", "5"]
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randint(0, 256, (3, 32, 32), generator=g, dtype=torch.uint8).float(),
            torch.randint(0, 256, (3, 24, 40), generator=g, dtype=torch.uint8).float()]
    a = OnlineDegradation(setup_cfg(None, opts))(imgs)
    b = OnlineDegradation(setup_cfg(None, opts))(imgs)
    c = OnlineDegradation(setup_cfg(None, opts[:-1] + ["6"]))(imgs)  # another INPUT.DEGRADATION.SEED
    for x, y, z, img in zip(a, b, c, imgs):
        assert x.shape == img.shape and torch.equal(x, y) and torch.equal(x, x.round())
        assert (x - img).abs().mean() > 1.0  # degraded, not passed through
        assert (z - x).abs().mean() > 1.0  # another seed, another degradation


# ----------------------------------------------------------------------------- training sets
def _pair(img_path, mask_path, hw=(20, 24), seed=0):
    for p in (img_path, mask_path):
        os.makedirs(os.path.dirname(p), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3)).astype(np.uint8)).save(img_path)
    m = np.zeros(hw, np.uint8)
    m[5:15, 6:18] = 255
    Image.fromarray(m).save(mask_path)


def test_training_sets_registered_in_the_release_layouts(tmp_path, monkeypatch):
    root = tmp_path / "LQSeg"
    for i in range(2):  # ThinObject-5K's own sub-folders
        _pair(root / f"train/ThinObject5K/images_train/t{i}.jpg", root / f"train/ThinObject5K/masks_train/t{i}.png", seed=i)
    for i in range(3):  # MSRA10K: <stem>.jpg and <stem>.png side by side
        _pair(root / f"train/MSRA/m{i}.jpg", root / f"train/MSRA/m{i}.png", seed=10 + i)
    _pair(root / "train/LVIS/LVIS_train/images/l0.jpg", root / "train/LVIS/LVIS_train/masks/l0.png")  # RobustSeg path
    monkeypatch.setenv("RASS_LQSEG_ROOT", str(root))
    expect = {"lqseg_thin_train": ["t0", "t1"], "lqseg_msra_train": ["m0", "m1", "m2"], "lqseg_lvis_train": ["l0"]}
    for name, stems in expect.items():
        dicts = DatasetCatalog.get(name)
        assert [d["image_id"] for d in dicts] == stems
        assert all(d["file_name"].endswith(".jpg") and d["mask_file"].endswith(".png") for d in dicts)
        assert (dicts[0]["height"], dicts[0]["width"]) == (20, 24)
        meta = MetadataCatalog.get(name)
        assert (meta.evaluator_type, meta.split, meta.root_env) == ("promptable_mask", "train", "RASS_LQSEG_ROOT")
    assert "lqseg_synthetic_train" in DatasetCatalog.list()


def test_missing_training_set_names_the_searched_folders(tmp_path, monkeypatch):
    (tmp_path / "LQSeg" / "train").mkdir(parents=True)
    monkeypatch.setenv("RASS_LQSEG_ROOT", str(tmp_path / "LQSeg"))
    with pytest.raises(FileNotFoundError, match=r"lqseg_lvis_train.*RASS_LQSEG_ROOT.*searched train/LVIS/\{images,LVIS_train/images"):
        DatasetCatalog.get("lqseg_lvis_train")
    monkeypatch.setenv("RASS_LQSEG_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="LQSeg root .*nowhere.*does not exist"):
        DatasetCatalog.get("lqseg_msra_train")


# ----------------------------------------------------------------------------- synthetic training split
def test_synthetic_training_split(tmp_path, monkeypatch):
    from rass.data.synthetic_masks import INFO_FILE, make_synthetic_lqseg

    root = str(tmp_path / "syn")
    n = make_synthetic_lqseg(root, seed=2, num_images=2, levels=(), min_size=24, max_size=40, num_train=3)
    assert n == {"clean": 2, "train": 3}
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", root)
    train, test = DatasetCatalog.get("lqseg_synthetic_train"), DatasetCatalog.get("lqseg_synthetic_test_clear")
    assert [d["image_id"] for d in train] == ["syn_train_00000", "syn_train_00001", "syn_train_00002"]
    test_bytes = {open(d["file_name"], "rb").read() for d in test}
    for d in train:
        assert open(d["file_name"], "rb").read() not in test_bytes  # another image stream than the test split
        mask = np.asarray(Image.open(d["mask_file"]))
        img = np.asarray(Image.open(d["file_name"]))
        assert set(np.unique(mask).tolist()) == {0, 255} and img.shape[:2] == mask.shape
        assert 24 <= mask.shape[0] <= 40 and 24 <= mask.shape[1] <= 40
        assert cv2.connectedComponents((mask > 0).astype(np.uint8))[0] == 2  # background + one object
    assert make_synthetic_lqseg(root, seed=2, num_images=2, levels=(), min_size=24, max_size=40, num_train=3) == {"clean": 0, "train": 0}
    with pytest.raises(ValueError, match="num_train=3"):
        make_synthetic_lqseg(root, seed=2, num_images=2, levels=(), min_size=24, max_size=40, num_train=5)
    with pytest.raises(ValueError, match="num_train must be >= 0"):
        make_synthetic_lqseg(str(tmp_path / "x"), num_train=-1)
    # a folder made before the training split existed gets it added, with the same test images
    old = str(tmp_path / "old")
    make_synthetic_lqseg(old, seed=2, num_images=2, levels=(), min_size=24, max_size=40)
    info_path = os.path.join(old, INFO_FILE)
    info = json.load(open(info_path))
    del info["num_train"]
    open(info_path, "w").write(json.dumps(info))
    assert make_synthetic_lqseg(old, seed=2, num_images=2, levels=(), min_size=24, max_size=40, num_train=3) == {"clean": 0, "train": 3}
    assert json.load(open(info_path))["num_train"] == 3
    assert open(os.path.join(old, "train/Synthetic/images/syn_train_00001.png"), "rb").read() == open(train[1]["file_name"], "rb").read()


def test_make_synthetic_lqseg_tool(tmp_path, capsys):
    tool = load_script("tools/make_synthetic_lqseg.py", "make_synthetic_lqseg_tool")
    out = str(tmp_path / "t")
    args = ["--out", out, "--num-images", "1", "--num-train", "2", "--levels", "1", "--min-size", "24", "--max-size", "32"]
    assert tool.main(args) == 0
    assert "2 training pairs" in capsys.readouterr().out
    assert sorted(os.listdir(os.path.join(out, "train/Synthetic/masks"))) == ["syn_train_00000.png", "syn_train_00001.png"]
    assert tool.main(args[:5] + ["3"] + args[6:]) == 2
    assert "num_train=2" in capsys.readouterr().err


def test_training_mapper_then_model_side_degradation(tmp_path, monkeypatch):
    """The training data path: the promptable mapper (is_train) gives the clean image, the model degrades it."""
    from rass.data.dataset_mappers.promptable import PromptableDatasetMapper
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = str(tmp_path / "syn")
    make_synthetic_lqseg(root, seed=0, num_images=1, levels=(), min_size=24, max_size=40, num_train=2)
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", root)
    cfg = setup_cfg(None, ["INPUT.PROMPT.IMAGE_SIZE", "64", "INPUT.DEGRADATION.ENABLED", "True",
                           "INPUT.DEGRADATION.PRESET", "lqseg_train", "INPUT.DEGRADATION.SEED", "0"])
    mapper = PromptableDatasetMapper(cfg, is_train=True)
    batch = [mapper(d) for d in DatasetCatalog.get("lqseg_synthetic_train")]
    clean = [b["image"].float() for b in batch]
    assert all(c.shape == (3, 64, 64) for c in clean)
    degraded = OnlineDegradation(cfg)(clean)
    for c, x in zip(clean, degraded):
        assert x.shape == c.shape and not torch.equal(x, c)
        assert 0 <= x.min() and x.max() <= 255
