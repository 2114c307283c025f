"""LQSeg / image+mask registration, the promptable mapper and the synthetic LQSeg set."""
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import rass  # noqa: F401  (registers the datasets)
from rass.data.dataset_mappers import MAPPERS
from rass.utils.image_io import DataFileError
from rass.data.dataset_mappers.promptable import PromptableDatasetMapper, read_binary_mask
from rass.data.datasets.lqseg import load_image_mask_folder, register_image_mask_folder


def _img(path, hw, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3)).astype(np.uint8)).save(path)


def _mask(path, hw, values=(0, 255)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    m = np.full(hw, values[0], np.uint8)
    m[hw[0] // 4 : 3 * hw[0] // 4, hw[1] // 4 : 3 * hw[1] // 4] = values[1]
    Image.fromarray(m).save(path)


def test_every_lqseg_set_and_level_is_registered():
    for s in ("thin", "lvis", "ecssd", "coco", "synthetic"):
        for lv in ("clear", "lq1", "lq2", "lq3"):
            name = f"lqseg_{s}_test_{lv}"
            assert name in DatasetCatalog.list()
            assert MetadataCatalog.get(name).evaluator_type == "promptable_mask"


def test_released_layout_loads_with_masks_from_test_clear(tmp_path, monkeypatch):
    root = tmp_path / "LQSeg"
    # GleSAM's generator output (<save_dir>/lr, fixed 512x512) and the clean set with masks beside the images
    for stem in ("0001", "0002"):
        _img(str(root / "test/ECSSD/ecssd-RealLR-ds4-orisize/lr" / f"{stem}.jpg"), (64, 64))
        _img(str(root / "test_clear/ECSSD" / f"{stem}.jpg"), (30, 40))
        _mask(str(root / "test_clear/ECSSD" / f"{stem}.png"), (30, 40))
    monkeypatch.setenv("RASS_LQSEG_ROOT", str(root))
    d = DatasetCatalog.get("lqseg_ecssd_test_lq3")
    assert [x["image_id"] for x in d] == ["0001", "0002"]
    assert d[0]["file_name"].endswith("ecssd-RealLR-ds4-orisize/lr/0001.jpg")
    assert d[0]["mask_file"] == str(root / "test_clear/ECSSD/0001.png") and (d[0]["height"], d[0]["width"]) == (30, 40)
    clear = DatasetCatalog.get("lqseg_ecssd_test_clear")
    assert clear[1]["file_name"] == str(root / "test_clear/ECSSD/0002.jpg")
    # a level that is not there: the error names the root, the env var and what was searched
    with pytest.raises(FileNotFoundError, match=r"RASS_LQSEG_ROOT.*LQ-1"):
        DatasetCatalog.get("lqseg_ecssd_test_lq1")
    with pytest.raises(FileNotFoundError, match="RASS_LQSEG_ROOT"):
        DatasetCatalog.get("lqseg_coco_test_lq2")


def test_image_mask_folder_mismatch_and_missing_folder(tmp_path):
    _img(str(tmp_path / "im/a.jpg"), (10, 10))
    _img(str(tmp_path / "im/b.png"), (10, 10))
    _mask(str(tmp_path / "gt/a.png"), (10, 10))
    with pytest.raises(ValueError, match=r"1 image\(s\).*without.*\['b'\]"):
        load_image_mask_folder("mine", str(tmp_path / "im"), str(tmp_path / "gt"))
    with pytest.raises(FileNotFoundError, match="mask folder .*nope"):
        load_image_mask_folder("mine", str(tmp_path / "im"), str(tmp_path / "nope"))
    os.remove(tmp_path / "im/b.png")
    register_image_mask_folder("my_masks_test", str(tmp_path / "im"), str(tmp_path / "gt"))
    try:
        d = DatasetCatalog.get("my_masks_test")
        assert len(d) == 1 and MetadataCatalog.get("my_masks_test").evaluator_type == "promptable_mask"
    finally:
        DatasetCatalog.remove("my_masks_test")
        MetadataCatalog.remove("my_masks_test")


def _dict(tmp_path, img_hw=(40, 60), mask_hw=(40, 60), values=(0, 255), stem="x"):
    _img(str(tmp_path / f"{stem}.jpg"), img_hw)
    _mask(str(tmp_path / f"{stem}.png"), mask_hw, values)
    return {"file_name": str(tmp_path / f"{stem}.jpg"), "mask_file": str(tmp_path / f"{stem}.png"), "image_id": stem,
            "height": mask_hw[0], "width": mask_hw[1]}


def test_mapper_output_release_resize_and_prompts(tmp_path):
    d = _dict(tmp_path, (40, 60), (40, 60))
    out = PromptableDatasetMapper(is_train=False, protocol="point_box", image_size=64)(d)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
    assert out["gt_mask"].shape == (40, 60) and out["gt_mask"].dtype == torch.bool and int(out["gt_mask"].sum()) == 20 * 30
    assert out["point_coords"].shape == (1, 3, 2) and out["point_labels"].tolist() == [[1, 1, 1]]
    assert out["boxes"].shape == (1, 4) and (out["height"], out["width"]) == (40, 60)
    x0, y0, x1, y1 = out["boxes"][0].tolist()  # the object in the 64x64 frame: x 15..44 → 16..47, y 10..29 → 16..47
    assert 14 <= x0 <= 17 and 46 <= x1 <= 48 and 14 <= y0 <= 17 and 46 <= y1 <= 48
    # seeded per image: a second mapper (another process) gives the same prompts
    again = PromptableDatasetMapper(is_train=False, protocol="point_box", image_size=64)(d)
    assert torch.equal(again["point_coords"], out["point_coords"])
    # IMAGE_SIZE 0 keeps the image; the frame is then the image's own
    kept = PromptableDatasetMapper(is_train=False, image_size=0)(d)
    assert kept["image"].shape == (3, 40, 60) and "boxes" not in kept
    assert "promptable" in MAPPERS


def test_mapper_mask_rules(tmp_path, caplog):
    mapper = PromptableDatasetMapper(is_train=False, image_size=0)
    with caplog.at_level(logging.WARNING, logger="rass.data.dataset_mappers.promptable"):
        a = mapper(_dict(tmp_path, values=(3, 200), stem="soft1"))
        b = mapper(_dict(tmp_path, values=(3, 200), stem="soft2"))
    assert a["mask_note"] == b["mask_note"] == "thresholded" and int(a["gt_mask"].sum()) == 600
    assert sum("thresholded at 128" in r.message for r in caplog.records) == 1  # logged once
    c = mapper(_dict(tmp_path, values=(0, 1), stem="bin01"))
    assert c["mask_note"] == "binary01" and int(c["gt_mask"].sum()) == 600
    with pytest.raises(DataFileError, match="missing.png does not exist"):
        mapper({"file_name": str(tmp_path / "soft1.jpg"), "mask_file": str(tmp_path / "missing.png"), "image_id": "m"})
    with pytest.raises(DataFileError, match=r"(?s)60x40.*50x40.*IMAGE_SIZE 512"):
        mapper(_dict(tmp_path, img_hw=(40, 60), mask_hw=(40, 50), stem="size"))
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataFileError, match="8-bit"):
        read_binary_mask(str(tmp_path / "deep.png"))
    e = mapper(_dict(tmp_path, values=(0, 0), stem="empty"))
    assert e["prompt_note"] == "empty_mask" and e["point_coords"][0].tolist() == [[30.0, 20.0]] * 3


def test_mapper_from_config():
    from rass.config import setup_cfg

    cfg = setup_cfg(opts=["TEST.PROMPT.PROTOCOL", "box", "TEST.PROMPT.BOX_NOISE", "0.05", "INPUT.PROMPT.IMAGE_SIZE", "0"])
    assert cfg.INPUT.PROMPT.NUM_POINTS == 3 and cfg.INPUT.PROMPT.MASK_THRESHOLD == 128
    m = PromptableDatasetMapper(cfg, is_train=False)
    assert (m.protocol, m.box_noise, m.image_size, m.num_points) == ("box", 0.05, 0, 3)
    t = PromptableDatasetMapper(cfg, is_train=True)
    assert t.protocol == "points" and t.is_train


def test_synthetic_lqseg_set(tmp_path, monkeypatch):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = str(tmp_path / "syn")
    n = make_synthetic_lqseg(root, seed=3, num_images=2, levels=(3,), min_size=24, max_size=40)
    assert n == {"clean": 2, "lq3": 2}
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", root)
    clean, lq = DatasetCatalog.get("lqseg_synthetic_test_clear"), DatasetCatalog.get("lqseg_synthetic_test_lq3")
    assert [x["image_id"] for x in clean] == [x["image_id"] for x in lq] == ["syn_00000", "syn_00001"]
    mask = np.asarray(Image.open(clean[0]["mask_file"]))
    assert set(np.unique(mask).tolist()) == {0, 255}
    before = open(lq[0]["file_name"], "rb").read()
    assert make_synthetic_lqseg(root, seed=3, num_images=2, levels=(3,), min_size=24, max_size=40) == {"clean": 0, "lq3": 0}
    assert open(lq[0]["file_name"], "rb").read() == before
    with pytest.raises(ValueError, match="seed=3"):
        make_synthetic_lqseg(root, seed=4, num_images=2, levels=(3,), min_size=24, max_size=40)
    other = make_synthetic_lqseg(str(tmp_path / "syn2"), seed=3, num_images=2, levels=(), min_size=24, max_size=40)
    assert other == {"clean": 2}
    assert open(os.path.join(tmp_path, "syn2/test_clear/Synthetic/images/syn_00001.png"), "rb").read() == \
        open(clean[1]["file_name"], "rb").read()


def test_loader_mapper_and_evaluator_compose(tmp_path, monkeypatch):
    """detectron2's test loader + the promptable mapper + the evaluator, with an oracle and a box model."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from rass.data.synthetic_masks import make_synthetic_lqseg
    from rass.evaluation import PromptableMaskEvaluator

    root = str(tmp_path / "syn")
    make_synthetic_lqseg(root, seed=0, num_images=3, levels=(), min_size=24, max_size=40)
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", root)
    loader = build_detection_test_loader(DatasetCatalog.get("lqseg_synthetic_test_clear"),
                                         mapper=PromptableDatasetMapper(is_train=False, protocol="box", image_size=0))

    class Model(torch.nn.Module):
        def __init__(self, oracle):
            super().__init__()
            self.oracle = oracle

        def forward(self, batch):
            outs = []
            for d in batch:
                if self.oracle:
                    outs.append({"masks": d["gt_mask"][None]})
                else:  # fill the prompt box (image frame = mask frame here)
                    m = torch.zeros(1, d["height"], d["width"], dtype=torch.bool)
                    x0, y0, x1, y1 = d["boxes"][0].round().long().tolist()
                    m[0, y0 : y1 + 1, x0 : x1 + 1] = True
                    outs.append({"masks": m})
            return outs

    ev = PromptableMaskEvaluator("lqseg_synthetic_test_clear", distributed=True, output_dir=str(tmp_path / "out"))
    res = inference_on_dataset(Model(True), loader, ev)["promptable"]
    assert res["num_images"] == 3 and res["IoU"] == res["Dice"] == res["BoundaryIoU"] == res["PixelAcc"] == 1.0
    box = inference_on_dataset(Model(False), loader, ev)["promptable"]
    assert 0.1 < box["IoU"] < 1.0 and box["Dice"] > box["IoU"]  # a box covers more than the object
    assert os.path.exists(tmp_path / "out" / "promptable_per_image_lqseg_synthetic_test_clear.json")
