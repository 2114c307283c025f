"""SOD / DIS datasets (registration, layouts, pairing by stem), the generated set and the "mgd_sod" mapper."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import rass.data  # noqa: F401  (registers the datasets and mappers)
from detectron2.data import DatasetCatalog, MetadataCatalog
from rass.data.dataset_mappers import MAPPERS
from rass.data.dataset_mappers.sod import MGDSODDatasetMapper, read_grey_mask, sod_train_augment
from rass.data.datasets.sod import SOD_SPLITS, register_sod_folder
from rass.utils.errors import UserError, UserFileNotFoundError, UserValueError

from conftest import load_script

NAMES = ["dis5k_tr", "dis5k_vd", "dis5k_te1", "dis5k_te2", "dis5k_te3", "dis5k_te4", "hrsod_train", "hrsod_test",
         "davis_s_test", "uhrsd_train", "uhrsd_test", "duts_train", "duts_test", "hkuis_test", "sod_synthetic_train",
         "sod_synthetic_test"]


def _save(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _pair(folder_im, folder_gt, stem, hw=(6, 9), ext=".jpg", value=255):
    img = np.full(hw + (3,), 90, np.uint8)
    img[: hw[0] // 2] = 200  # depends on the position: flips / crops are visible
    gt = np.zeros(hw, np.uint8)
    gt[1:4, 2:5] = value
    _save(os.path.join(folder_im, stem + ext), img)
    _save(os.path.join(folder_gt, stem + ".png"), gt)


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory):
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    root = str(tmp_path_factory.mktemp("synthetic_sod"))
    assert tool.make_synthetic_sod(root, seed=3, num_train=3, num_test=4, min_size=20, max_size=48) == {"train": 3, "test": 4}
    return root


def test_every_split_registered_lazily_with_sod_evaluator(monkeypatch, tmp_path):
    assert sorted(s.name for s in SOD_SPLITS) == sorted(NAMES)
    for name in NAMES:
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).evaluator_type == "sod"
    monkeypatch.setenv("RASS_DIS5K_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(UserFileNotFoundError, match=r"'dis5k_te2'.*no image folder.*RASS_DIS5K_ROOT.*searched DIS-TE2/im"):
        DatasetCatalog.get("dis5k_te2")  # registration read nothing: the folder is looked for now


@pytest.mark.parametrize("split", SOD_SPLITS, ids=lambda s: s.name)
def test_published_layouts_load_first_candidate(split, monkeypatch, tmp_path):
    root = tmp_path / "root"
    _pair(str(root / split.image_dirs[0]), str(root / split.mask_dirs[0]), "b_img", hw=(7, 5))
    _pair(str(root / split.image_dirs[0]), str(root / split.mask_dirs[0]), "a_img")
    monkeypatch.setenv(split.root.env_var, str(root))
    dicts = DatasetCatalog.get(split.name)
    assert [d["image_id"] for d in dicts] == ["a_img", "b_img"]
    assert (dicts[0]["height"], dicts[0]["width"], dicts[1]["height"], dicts[1]["width"]) == (6, 9, 7, 5)
    assert dicts[0]["mask_file"].endswith(os.path.join(split.mask_dirs[0], "a_img.png"))


def test_alternative_folder_names(monkeypatch, tmp_path):
    _pair(str(tmp_path / "HKU-IS" / "imgs"), str(tmp_path / "HKU-IS" / "gt"), "0004")
    _pair(str(tmp_path / "UHRSD" / "UHRSD_TE_2K" / "image"), str(tmp_path / "UHRSD" / "UHRSD_TE_2K" / "mask"), "u1")
    monkeypatch.setenv("RASS_HKUIS_ROOT", str(tmp_path / "HKU-IS"))
    monkeypatch.setenv("RASS_UHRSD_ROOT", str(tmp_path / "UHRSD"))
    assert [d["image_id"] for d in DatasetCatalog.get("hkuis_test")] == ["0004"]
    assert [d["image_id"] for d in DatasetCatalog.get("uhrsd_test")] == ["u1"]


def test_pairing_by_stem_names_missing_and_extra_files(tmp_path):
    im, gt = str(tmp_path / "im"), str(tmp_path / "gt")
    _pair(im, gt, "cat")
    _pair(im, gt, "dog")
    os.remove(os.path.join(gt, "dog.png"))
    _save(os.path.join(gt, "zebra.png"), np.zeros((6, 9), np.uint8))
    register_sod_folder("sod_pairing", im, gt)
    assert MetadataCatalog.get("sod_pairing").evaluator_type == "sod"
    with pytest.raises(UserValueError, match=r"1 image\(s\).*\['dog'\].*1 mask\(s\) without image.*\['zebra'\]"):
        DatasetCatalog.get("sod_pairing")
    os.remove(os.path.join(gt, "zebra.png"))
    _pair(im, gt, "dog")
    assert [d["image_id"] for d in DatasetCatalog.get("sod_pairing")] == ["cat", "dog"]


def test_generated_set_is_seeded_and_registered(syn_root, monkeypatch, tmp_path):
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    monkeypatch.setenv("RASS_SOD_SYNTHETIC_ROOT", syn_root)
    test, train = DatasetCatalog.get("sod_synthetic_test"), DatasetCatalog.get("sod_synthetic_train")
    assert len(test) == 4 and len(train) == 3
    sizes = set()
    for d in test + train:
        m = np.asarray(Image.open(d["mask_file"]))
        assert set(np.unique(m)) == {0, 255} and m.shape == (d["height"], d["width"])
        assert 20 <= min(m.shape) and max(m.shape) <= 48
        sizes.add(m.shape)
    assert len(sizes) > 3  # sizes and aspects vary
    again = str(tmp_path / "again")
    tool.make_synthetic_sod(again, seed=3, num_train=3, num_test=4, min_size=20, max_size=48)
    a, b = (open(os.path.join(r, "test", "im", "sod_test_00002.png"), "rb").read() for r in (syn_root, again))
    assert a == b
    with pytest.raises(UserValueError, match="made with"):
        tool.make_synthetic_sod(again, seed=4, num_train=3, num_test=4, min_size=20, max_size=48)


def test_thin_structures_in_generated_masks():
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    import cv2

    thin = 0
    for i in range(6):
        _, mask = tool.make_sod_object(0, "test", i, 96, 128)
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        thin += int(np.count_nonzero(mask & ~opened) > 20)  # pixels in structures thinner than 5 px
    assert thin >= 5


# ---- mapper ----------------------------------------------------------------------------------


def _dict(tmp_path, hw=(20, 30), mask=None, name="x"):
    im, gt = str(tmp_path / "im"), str(tmp_path / "gt")
    rng = np.random.default_rng(0)
    _save(os.path.join(im, name + ".png"), rng.integers(0, 256, hw + (3,), dtype=np.uint8))
    if mask is None:
        mask = np.zeros(hw, np.uint8)
        mask[hw[0] // 4: hw[0] // 2, hw[1] // 4:] = 255
    _save(os.path.join(gt, name + ".png"), mask)
    return {"file_name": os.path.join(im, name + ".png"), "mask_file": os.path.join(gt, name + ".png"),
            "image_id": name, "height": hw[0], "width": hw[1]}


def test_mapper_registered_and_built_from_config():
    from rass.config import setup_cfg

    cfg = setup_cfg(opts=["INPUT.SOD.IMAGE_SIZE", "64", "INPUT.SOD.ROTATION_PROB", "0.5", "INPUT.SOD.COLOR", "[0.2, 0.9]"])
    assert MAPPERS["mgd_sod"] is MGDSODDatasetMapper
    m = MAPPERS["mgd_sod"](cfg, is_train=True)
    assert (m.image_size, m.rotation_prob, m.enhance["color"], m.crop_border, m.flip_prob) == (64, 0.5, (0.2, 0.9), 30, 0.5)
    assert m.enhance["sharpness"] == (0.0, 3.0) and m.rotation_degrees == 15


def test_train_output_tiny_image_default_size(tmp_path):
    d = _dict(tmp_path, hw=(20, 30))
    out = MGDSODDatasetMapper(is_train=True)(d)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 1024, 1024)
    assert out["gt_mask"].dtype == torch.float32 and out["gt_mask"].shape == (1024, 1024)
    assert set(out["gt_mask"].unique().tolist()) == {0.0, 1.0}
    assert (out["height"], out["width"], out["mask_note"]) == (20, 30, "")


def test_train_is_seeded_and_differs_by_seed(tmp_path):
    d = _dict(tmp_path, hw=(40, 50))
    runs = []
    for seed in (0, 0, 1):
        m = MGDSODDatasetMapper(is_train=True, image_size=48, seed=seed)
        runs.append([m(d) for _ in range(4)])
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt_mask"], b["gt_mask"])
    assert not all(torch.equal(a["image"], b["image"]) for a, b in zip(runs[0], runs[2]))
    assert not torch.equal(runs[0][0]["image"], runs[0][1]["image"])  # re-drawn at every call


def test_non_binary_mask_kept_as_fraction_in_training(tmp_path):
    mask = np.zeros((40, 50), np.uint8)
    mask[5:30, 5:20], mask[5:30, 20:45] = 100, 255
    d = _dict(tmp_path, hw=(40, 50), mask=mask)
    m = MGDSODDatasetMapper(is_train=True, image_size=64, rotation_prob=1.0)
    for _ in range(3):
        out = m(d)
        assert out["mask_note"] == "not_binary"
        vals = set(np.round(out["gt_mask"].numpy() * 255).astype(int).ravel().tolist())
        assert vals <= {0, 100, 255} and 100 in vals and 255 in vals  # nearest only: no new values
        assert 0.0 <= out["gt_mask"].min() and out["gt_mask"].max() <= 1.0


def test_augment_params_match_release_ranges():
    rng = np.random.default_rng(5)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    mask = Image.fromarray(np.zeros((60, 80), np.uint8))
    flips, angles, crops, factors = 0, set(), set(), {k: set() for k in ("brightness", "contrast", "color", "sharpness")}
    for _ in range(400):
        img2, m2, p = sod_train_augment(image, mask, rng)
        flips += p["flip"]
        if p["angle"] is not None:
            angles.add(p["angle"])
        x0, y0, x1, y1 = p["crop"]
        crops.add((80 - (x1 - x0), 60 - (y1 - y0)))
        assert img2.size == m2.size == (x1 - x0, y1 - y0)
        assert any(((80 - cw) >> 1, (80 + cw) >> 1) == (x0, x1) for cw in range(50, 80))  # the release's centred box
        for k in factors:
            factors[k].add(p[k])
    assert 150 < flips < 250
    assert min(angles) == -15 and max(angles) == 14
    assert min(min(c) for c in crops) == 1 and max(max(c) for c in crops) == 30 and len(crops) > 100
    assert min(factors["brightness"]) == 0.5 and max(factors["brightness"]) == 1.5
    assert max(factors["color"]) == 2.0 and max(factors["sharpness"]) == 3.0 and min(factors["sharpness"]) == 0.0
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 for v in factors["contrast"])


def test_rotation_bicubic_image_nearest_mask():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    mask = Image.fromarray((np.indices((30, 40)).sum(0) % 7 * 30).astype(np.uint8))
    i2, m2, p = sod_train_augment(img, mask, np.random.default_rng(9), flip_prob=0.0, crop_border=0, rotation_prob=1.0,
                                  enhance={k: (1.0, 1.0) for k in ("brightness", "contrast", "color", "sharpness")})
    assert p["crop"] == (0, 0, 40, 30) and p["angle"] not in (None, 0)
    assert np.array_equal(np.asarray(m2), np.asarray(mask.rotate(p["angle"], Image.NEAREST)))
    assert np.array_equal(np.asarray(i2), np.asarray(img.rotate(p["angle"], Image.BICUBIC)))
    assert not np.array_equal(np.asarray(m2), np.asarray(mask.rotate(p["angle"], Image.BILINEAR)))


def test_test_mode_resizes_image_only(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[2:9, 3:12] = 129
    mask[10:15, 3:12] = 128
    d = _dict(tmp_path, hw=(20, 30), mask=mask)
    out = MGDSODDatasetMapper(is_train=False, image_size=32)(d)
    src = np.asarray(Image.open(d["file_name"]))
    expect = np.asarray(Image.fromarray(src).resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert torch.equal(out["image"], torch.from_numpy(np.ascontiguousarray(expect)))
    assert out["gt_mask"].shape == (20, 30) and (out["height"], out["width"]) == (20, 30)
    assert torch.allclose(out["gt_mask"] * 255, torch.from_numpy(mask.astype(np.float32)))
    assert out["mask_note"] == "not_binary"


def test_mask_modes(tmp_path):
    base = np.zeros((6, 8), np.uint8)
    base[2:5, 1:6] = 255
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., :3] = 10
    rgba[..., 3] = base
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    rgb = np.repeat(base[..., None], 3, axis=2)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray((base // 255).astype(np.uint8)).save(tmp_path / "01.png")
    Image.fromarray(base).convert("P").save(tmp_path / "pal.png")
    for name, note in (("alpha", "alpha"), ("rgb", ""), ("01", "binary01"), ("pal", "")):
        arr, got = read_grey_mask(str(tmp_path / f"{name}.png"))
        assert got == note and np.array_equal(arr, base), name
    Image.fromarray(base.astype(np.uint16) * 200).save(tmp_path / "deep.png")
    with pytest.raises(UserError, match=r"deep.png has mode"):
        read_grey_mask(str(tmp_path / "deep.png"))


def test_size_mismatch_names_both_files(tmp_path):
    d = _dict(tmp_path, hw=(20, 30))
    _save(d["mask_file"], np.zeros((21, 30), np.uint8))
    for train in (True, False):
        with pytest.raises(UserError, match=r"Image .*x\.png is 30x20 but its mask .*gt.*x\.png is 30x21"):
            MGDSODDatasetMapper(is_train=train, image_size=16)(d)


def test_bad_settings_rejected():
    with pytest.raises(UserValueError, match=r"INPUT.SOD.COLOR must be \[lo, hi\]"):
        MGDSODDatasetMapper(is_train=True, color=(2.0, 1.0))
    with pytest.raises(UserValueError, match="flip_prob=1.5"):
        MGDSODDatasetMapper(is_train=True, flip_prob=1.5)
