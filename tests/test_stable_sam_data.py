"""HQSeg-44K and HQ-SAM's evaluation sets: registered as promptable sets from HQ-SAM's published `data/` layout,
paired by stem (FSS / cascade_psp folders hold images and masks together), missing folders named."""
from __future__ import annotations

import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import rass
from rass.data.datasets.hqseg import HQSEG_44K, HQSEG_EVAL_SETS
from rass.utils.errors import UserFileNotFoundError, UserValueError


def _pair(folder, stem, mask_folder=None, size=(10, 8)):
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.zeros((size[1], size[0], 3), np.uint8)).save(os.path.join(folder, f"{stem}.jpg"))
    mask_folder = mask_folder or folder
    os.makedirs(mask_folder, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), 255, np.uint8)).save(os.path.join(mask_folder, f"{stem}.png"))


@pytest.fixture
def layout(tmp_path, monkeypatch):
    rass.register_all()
    data = tmp_path / "data"
    _pair(str(data / "cascade_psp" / "fss_all"), "abacus_1")
    _pair(str(data / "cascade_psp" / "fss_all"), "abacus_2", size=(12, 6))
    thin = data / "thin_object_detection"
    _pair(str(thin / "COIFT" / "images"), "c1", str(thin / "COIFT" / "masks"))
    _pair(str(thin / "HRSOD" / "images"), "h1", str(thin / "HRSOD" / "masks_max255"))
    _pair(str(data / "DIS5K" / "DIS-VD" / "im"), "d1", str(data / "DIS5K" / "DIS-VD" / "gt"))
    monkeypatch.setenv("RASS_HQSEG_ROOT", str(data))
    monkeypatch.setenv("RASS_DIS5K_ROOT", str(data / "DIS5K"))
    return data


def test_hqseg_sets_are_registered_as_promptable_sets_and_load_from_hq_sams_layout(layout):
    assert HQSEG_44K == ("hqseg_dis_train", "hqseg_thin_train", "hqseg_fss", "hqseg_duts_train", "hqseg_duts_test",
                         "hqseg_ecssd", "hqseg_msra10k")
    assert [s.name for s in HQSEG_EVAL_SETS] == ["hqseg_dis_val", "hqseg_thin_test", "hqseg_coift", "hqseg_hrsod"]
    for name in HQSEG_44K + tuple(s.name for s in HQSEG_EVAL_SETS):
        assert MetadataCatalog.get(name).evaluator_type == "promptable_mask", name
    assert MetadataCatalog.get("dis5k_vd").evaluator_type == "sod"  # the SOD set stays; hqseg_dis_val is its twin
    fss = DatasetCatalog.get("hqseg_fss")
    assert [(d["image_id"], d["height"], d["width"]) for d in fss] == [("abacus_1", 8, 10), ("abacus_2", 6, 12)]
    assert all(d["file_name"].endswith(".jpg") and d["mask_file"].endswith(".png") for d in fss)
    assert DatasetCatalog.get("hqseg_hrsod")[0]["mask_file"].endswith(os.path.join("masks_max255", "h1.png"))
    assert DatasetCatalog.get("hqseg_coift")[0]["image_id"] == "c1"
    assert DatasetCatalog.get("hqseg_dis_val")[0]["mask_file"] == DatasetCatalog.get("dis5k_vd")[0]["mask_file"]


def test_missing_folders_and_unpaired_files_are_named(layout):
    with pytest.raises(UserFileNotFoundError, match=r"'hqseg_thin_test'.*RASS_HQSEG_ROOT.*ThinObject5K/images_test"):
        DatasetCatalog.get("hqseg_thin_test")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(str(layout / "cascade_psp" / "fss_all" / "lonely.jpg"))
    with pytest.raises(UserValueError, match=r"'hqseg_fss'.*1 image\(s\).*lonely"):
        DatasetCatalog.get("hqseg_fss")
