import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from rass.config import setup_cfg
from rass.data.dataset_mappers import SemanticDatasetMapper
from rass.data.dataset_mappers.color_aug import ColorAugSSDTransform
from tests.conftest import REPO

CFG = os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml")


def _cfg(*opts):
    return setup_cfg(CFG, list(opts))


def test_train_mapper_crops_and_keeps_label_aligned(synthetic_env):
    cfg = _cfg("INPUT.COLOR_AUG_SSD", "True")
    mapper = SemanticDatasetMapper(cfg, is_train=True)
    d = DatasetCatalog.get("synthetic_sem_seg_train")[0]
    out = mapper(d)
    img, lab = out["image"], out["sem_seg"]
    assert img.dtype == torch.uint8 and img.shape[0] == 3
    assert lab.dtype == torch.int64 and lab.shape == img.shape[1:]
    assert max(lab.shape) <= 160 and min(lab.shape) <= 160
    assert set(torch.unique(lab).tolist()) <= set(range(150)) | {255}
    assert (out["height"], out["width"]) == Image.open(d["file_name"]).size[::-1]


def test_test_mapper_resizes_without_label(synthetic_env):
    mapper = SemanticDatasetMapper(_cfg(), is_train=False)
    out = mapper(DatasetCatalog.get("synthetic_sem_seg_val")[0])
    assert "sem_seg" not in out and min(out["image"].shape[1:]) == 192


def test_padding_uses_ignore_label(synthetic_env):
    mapper = SemanticDatasetMapper(_cfg("INPUT.SIZE_DIVISIBILITY", "96"), is_train=True)
    out = mapper(DatasetCatalog.get("synthetic_sem_seg_train")[1])
    lab, img = out["sem_seg"], out["image"]
    # short side >= 160 after resizing, so the crop is exactly 160 x 160, padded to 192 x 192
    assert lab.shape == (192, 192) and img.shape == (3, 192, 192)
    assert (lab[160:] == 255).all() and (lab[:, 160:] == 255).all()
    assert (img[:, 160:] == 128).all() and (img[:, :, 160:] == 128).all()
    assert (lab[:160, :160] != 255).float().mean() > 0.5


def test_color_aug_changes_image_not_label():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    seg = rng.integers(0, 5, (32, 40)).astype(np.uint8)
    np.random.seed(3)
    changed = 0
    for _ in range(10):
        t = ColorAugSSDTransform().get_transform(img)
        out = t.apply_image(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(t.apply_segmentation(seg), seg)
        changed += int(not np.array_equal(out, img))
    assert changed >= 5


@pytest.fixture
def broken_copy(synthetic_root, tmp_path, monkeypatch):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    monkeypatch.setenv("RASS_SYNTHETIC_ROOT", str(root))
    return root


def _first(root, kind):
    sub = "images" if kind == "image" else "annotations_detectron2"
    d = root / sub / "training"
    return d / sorted(os.listdir(d))[0]


def test_undecodable_image_is_named(broken_copy):
    bad = _first(broken_copy, "image")
    bad.write_bytes(b"not a jpeg at all")
    mapper = SemanticDatasetMapper(_cfg(), is_train=True)
    with pytest.raises(ValueError, match=f"Cannot decode image {bad}"):
        mapper(DatasetCatalog.get("synthetic_sem_seg_train")[0])


def test_annotation_size_mismatch_names_both_sizes(broken_copy):
    gt = _first(broken_copy, "label")
    w, h = Image.open(_first(broken_copy, "image")).size
    Image.fromarray(np.zeros((h + 3, w - 2), np.uint8)).save(gt)
    mapper = SemanticDatasetMapper(_cfg(), is_train=True)
    with pytest.raises(ValueError) as e:
        mapper(DatasetCatalog.get("synthetic_sem_seg_train")[0])
    msg = str(e.value)
    assert str(gt) in msg and f"{w - 2}x{h + 3}" in msg and f"{w}x{h}" in msg


def test_out_of_range_labels_are_named(broken_copy):
    gt = _first(broken_copy, "label")
    lab = np.asarray(Image.open(gt)).copy()
    lab[0, 0], lab[1, 1] = 150, 200
    Image.fromarray(lab).save(gt)
    mapper = SemanticDatasetMapper(_cfg(), is_train=True)
    with pytest.raises(ValueError, match=rf"{gt}.*\[150, 200\]"):
        mapper(DatasetCatalog.get("synthetic_sem_seg_train")[0])


def test_worker_degradation_changes_image_not_label_and_keeps_clean(synthetic_env):
    d = DatasetCatalog.get("synthetic_sem_seg_train")[2]
    plain = SemanticDatasetMapper(_cfg("INPUT.SIZE_DIVISIBILITY", "192"), is_train=True)
    deg = SemanticDatasetMapper(_cfg("INPUT.SIZE_DIVISIBILITY", "192", "INPUT.DEGRADATION.ENABLED", "True",
                                     "INPUT.DEGRADATION.DEVICE", "worker", "INPUT.DEGRADATION.KEEP_CLEAN", "True"),
                                is_train=True)
    np.random.seed(7)
    a = plain(d)
    np.random.seed(7)
    b = deg(d)
    torch.testing.assert_close(b["sem_seg"], a["sem_seg"], rtol=0, atol=0)
    torch.testing.assert_close(b["image_clean"], a["image"], rtol=0, atol=0)
    assert b["image"].dtype == torch.uint8 and b["image"].shape == a["image"].shape
    inside = a["sem_seg"] != 255
    diff = (b["image"].float() - a["image"].float()).abs()[:, inside]
    assert diff.mean() > 1.0  # the content is degraded
    # the padding (value 128, label 255 beyond the 160 x 160 crop) is never degraded
    assert (b["image"][:, 160:] == 128).all() and (b["image"][:, :, 160:] == 128).all()


def _worker_deg_mapper(seed):
    return SemanticDatasetMapper(_cfg("INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.DEVICE", "worker",
                                      "INPUT.DEGRADATION.SEED", str(seed)), is_train=True)


def _map_with_global_seed(mapper, d, global_seed=7):
    """Map `d` with the global numpy RNG (detectron2's augmentations) at a fixed state; also return
    the global RNG state afterwards."""
    np.random.seed(global_seed)
    out = mapper(d)
    return out, np.random.get_state()[1].copy()


def test_worker_degradation_is_seeded_by_config_seed_not_the_global_rng(synthetic_env):
    d = DatasetCatalog.get("synthetic_sem_seg_train")[2]
    clean, state_plain = _map_with_global_seed(SemanticDatasetMapper(_cfg(), is_train=True), d)
    a, state_deg = _map_with_global_seed(_worker_deg_mapper(5), d)
    b, _ = _map_with_global_seed(_worker_deg_mapper(5), d, global_seed=7)
    other, _ = _map_with_global_seed(_worker_deg_mapper(6), d)
    # the degradation draws nothing from the global RNG: its state after mapping is the plain mapper's
    np.testing.assert_array_equal(state_deg, state_plain)
    torch.testing.assert_close(a["sem_seg"], clean["sem_seg"], rtol=0, atol=0)  # same crop
    assert torch.equal(a["image"], b["image"])  # same INPUT.DEGRADATION.SEED -> same image
    assert (a["image"].float() - clean["image"].float()).abs().mean() > 1.0  # it is degraded
    assert (other["image"].float() - a["image"].float()).abs().mean() > 1.0  # another seed -> another image
    # the global RNG's state does not change the degraded image beyond the crop it chooses: the
    # same mapper called again draws the next seed of its own stream
    again, _ = _map_with_global_seed(a_mapper := _worker_deg_mapper(5), d)
    assert torch.equal(again["image"], a["image"])
    assert not torch.equal(_map_with_global_seed(a_mapper, d)[0]["image"], a["image"])


def test_no_mapper_padding_when_the_model_degrades(synthetic_env):
    cfg = _cfg("INPUT.SIZE_DIVISIBILITY", "192", "INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.DEVICE", "model")
    out = SemanticDatasetMapper(cfg, is_train=True)(DatasetCatalog.get("synthetic_sem_seg_train")[0])
    assert out["image"].shape[1:] == (160, 160) and out["sem_seg"].shape == (160, 160)
    assert "image_clean" not in out


def test_test_mapper_never_pads(synthetic_env):
    out = SemanticDatasetMapper(_cfg("INPUT.SIZE_DIVISIBILITY", "512"), is_train=False)(
        DatasetCatalog.get("synthetic_sem_seg_val")[0])
    h, w = out["image"].shape[1:]
    assert min(h, w) == 192 and (h % 512, w % 512) != (0, 0)
