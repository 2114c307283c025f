"""Labelled images with an EXIF orientation (INPUT.LABELLED_EXIF, the loader's report, the size-mismatch
message) and the hints of data errors met in training (damaged image, size mismatch, missing annotation)."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from PIL import Image

from rass.config import setup_cfg
from rass.data.check import check_dataset
from rass.data.dataset_mappers import PromptableDatasetMapper, SemanticDatasetMapper
from rass.data.datasets.sem_seg import DatasetRoot, register_sem_seg_split
from rass.utils.cli import as_user_error, format_user_error
from rass.utils.errors import UserError, UserValueError
from rass.utils.image_io import (
    DAMAGED_FILE_HINT, DataFileError, DataFileNotFoundError, exif_orientation, read_image_checked, read_label_checked)
from tests.conftest import REPO, load_script

ORIENTATION = 0x0112
ENV = "RASS_TEST_EXIF_ROOT"


def _save(path, arr, orientation=None, **kw):
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    Image.fromarray(arr).save(path, exif=exif, **kw)


def _pixels(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def exif_set(tmp_path, monkeypatch):
    """ADE20K layout: a.png square + EXIF 6, b.png 40x24 (WxH) + EXIF 6, c.png plain; labels follow the
    stored pixels. Registered as a new dataset per test (the report is logged once per message)."""
    img_dir, ann_dir = tmp_path / "images" / "training", tmp_path / "annotations_detectron2" / "training"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    pixels = {"a": _pixels(32, 32, 0), "b": _pixels(24, 40, 1), "c": _pixels(24, 32, 2)}
    labels = {k: (np.arange(v.shape[0] * v.shape[1]).reshape(v.shape[:2]) % 7).astype(np.uint8) for k, v in pixels.items()}
    for k, arr in pixels.items():
        _save(img_dir / f"{k}.png", arr, None if k == "c" else 6)
        Image.fromarray(labels[k]).save(ann_dir / f"{k}.png")
    monkeypatch.setenv(ENV, str(tmp_path))
    name = f"exif_test_{os.path.basename(tmp_path)}"
    register_sem_seg_split(name, DatasetRoot(ENV, "unused"), "training")
    yield name, tmp_path, pixels, labels
    DatasetCatalog.remove(name)


def _mapper(policy):
    return SemanticDatasetMapper(is_train=True, augmentations=[], image_format="RGB", ignore_label=255,
                                 num_classes=150, labelled_exif=policy)


def test_exif_orientation_is_read_from_the_header(tmp_path):
    arr = _pixels(8, 12, 0)
    cases = {"o6.png": 6, "o3.jpg": 3, "o8.png": 8}
    for name, o in cases.items():
        _save(tmp_path / name, arr, o)
        assert exif_orientation(str(tmp_path / name)) == o
    _save(tmp_path / "plain.png", arr)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 5)
    assert exif_orientation(str(tmp_path / "plain.png")) == 1 and exif_orientation(str(tmp_path / "broken.png")) == 1
    # the reader applies the same tag: 6 = shown rotated 90 degrees clockwise
    np.testing.assert_array_equal(read_image_checked(str(tmp_path / "o6.png")), np.rot90(arr, k=-1))
    np.testing.assert_array_equal(read_image_checked(str(tmp_path / "o8.png")), np.rot90(arr, k=1))
    np.testing.assert_array_equal(read_image_checked(str(tmp_path / "o6.png"), apply_exif=False), arr)


def test_loader_reports_labelled_images_with_an_exif_orientation(exif_set, caplog):
    name, *_ = exif_set
    with caplog.at_level(logging.WARNING, logger="rass.data.datasets.sem_seg"):
        assert len(DatasetCatalog.get(name)) == 3
        DatasetCatalog.get(name)  # loaded again (e.g. at the next evaluation): not repeated
    msgs = [r.getMessage() for r in caplog.records if "EXIF orientation" in r.getMessage()]
    assert len(msgs) == 1
    msg = msgs[0]
    assert f"Dataset {name!r}: 2 of 3 labelled images carry an EXIF orientation" in msg
    assert "a.png (6: rotated 90° clockwise), b.png (6: rotated 90° clockwise))" in msg and "c.png" not in msg
    assert "INPUT.LABELLED_EXIF 'apply' (the default) they are read upright, so their labels must follow the upright" in msg
    assert "with 'ignore' they are read as stored, so their labels must follow the stored pixels" in msg


def test_labelled_exif_selects_the_orientation_of_image_and_label(exif_set):
    name, _, pixels, labels = exif_set
    a = next(d for d in DatasetCatalog.get(name) if d["image_id"] == "a")
    stored = _mapper("ignore")(a)
    np.testing.assert_array_equal(stored["image"].permute(1, 2, 0).numpy(), pixels["a"])
    np.testing.assert_array_equal(stored["sem_seg"].numpy(), labels["a"])
    upright = _mapper("apply")(a)  # the square case: same size, turned against its label
    np.testing.assert_array_equal(upright["image"].permute(1, 2, 0).numpy(), np.rot90(pixels["a"], k=-1))
    np.testing.assert_array_equal(upright["sem_seg"].numpy(), labels["a"])
    cfg = setup_cfg(None, ["INPUT.LABELLED_EXIF", "ignore"])
    assert SemanticDatasetMapper(cfg, is_train=False).apply_exif is False
    assert PromptableDatasetMapper(cfg, is_train=False).apply_exif is False
    assert SemanticDatasetMapper(setup_cfg(None, []), is_train=False).apply_exif is True
    with pytest.raises(UserValueError, match=r"INPUT.LABELLED_EXIF must be one of \('apply', 'ignore'\), got 'rotate'"):
        SemanticDatasetMapper(setup_cfg(None, ["INPUT.LABELLED_EXIF", "rotate"]), is_train=True)


def test_size_mismatch_names_the_exif_orientation_and_the_key(exif_set):
    name, root, pixels, labels = exif_set
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    with pytest.raises(DataFileError) as e:
        _mapper("apply")(dicts["b"])
    assert format_user_error(as_user_error(e.value)) == (
        f"error: Annotation {dicts['b']['sem_seg_file_name']} has size 40x24 (WxH) but image {dicts['b']['file_name']} "
        "has size 24x40 (WxH); the image carries EXIF orientation 6 (rotated 90° clockwise for display), so it is "
        "read upright (INPUT.LABELLED_EXIF 'apply')\n"
        "  hint: if the annotation follows the stored pixels, set INPUT.LABELLED_EXIF 'ignore'")
    np.testing.assert_array_equal(_mapper("ignore")(dicts["b"])["sem_seg"].numpy(), labels["b"])
    # a label that follows the upright image, read with "ignore": the other way round
    Image.fromarray(np.ascontiguousarray(np.rot90(labels["b"], k=-1))).save(dicts["b"]["sem_seg_file_name"])
    with pytest.raises(DataFileError) as e:
        _mapper("ignore")(dicts["b"])
    assert "but it is read as stored (INPUT.LABELLED_EXIF 'ignore')" in e.value.message
    assert e.value.hint == "if the annotation follows the upright image, set INPUT.LABELLED_EXIF 'apply'"
    # no EXIF tag: no EXIF sentence, the general hint
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(dicts["c"]["sem_seg_file_name"])
    with pytest.raises(DataFileError) as e:
        read_label_checked(dicts["c"]["sem_seg_file_name"], (24, 32), dicts["c"]["file_name"])
    assert "EXIF" not in str(e.value) and "tools/check_dataset.py --dataset NAME" in e.value.hint


def test_data_errors_carry_hints(exif_set):
    name, root, pixels, labels = exif_set
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    data = open(dicts["c"]["file_name"], "rb").read()
    open(dicts["c"]["file_name"], "wb").write(data[: len(data) // 2])  # truncated by an interrupted copy
    with pytest.raises(DataFileError) as e:
        _mapper("apply")(dicts["c"])
    lines = format_user_error(as_user_error(e.value)).splitlines()
    assert lines[0].startswith(f"error: Cannot decode image {dicts['c']['file_name']}: ") and len(lines) == 2
    assert lines[1] == f"  hint: {DAMAGED_FILE_HINT}"
    os.remove(dicts["a"]["sem_seg_file_name"])  # an annotation deleted after the file list was read
    with pytest.raises(DataFileNotFoundError) as e:
        _mapper("ignore")(dicts["a"])
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, UserError)
    assert e.value.message == f"Label file {dicts['a']['sem_seg_file_name']} does not exist"
    assert "moved or deleted" in e.value.hint
    with pytest.raises(UserValueError) as e:  # the same, when the dataset is loaded
        DatasetCatalog.get(name)
    assert "1 image(s) without annotation" in e.value.message and "<stem>.png" in e.value.hint


def test_check_dataset_lists_every_problem(exif_set, capsys):
    name, root, pixels, labels = exif_set
    tool = load_script("tools/check_dataset.py", "check_dataset_tool")
    result = check_dataset(name)
    assert [os.path.basename(p) for p, _ in result.problems] == ["b.png"] and result.checked == 3
    assert tool.main(["--dataset", name, "--labelled-exif", "ignore"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{name}: 0 of 3 entries have problems")
    open(os.path.join(root, "images", "training", "c.png"), "wb").write(b"not an image")
    assert tool.main(["--dataset", name]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in out[:-1]] == [str(root / "images/training/b.png"),
                                                         str(root / "images/training/c.png")]
    assert "EXIF orientation 6" in out[0] and "Cannot decode image" in out[1] and out[-1] == f"{name}: 2 of 3 entries have problems"


def test_train_net_stops_on_a_damaged_image_with_error_and_hint(synthetic_env, tmp_path):
    """The error arrives from a data-loader worker process and is printed as one error + hint."""
    root = tmp_path / "data"
    shutil.copytree(synthetic_env, root)
    for f in (root / "images" / "training").iterdir():
        f.write_bytes(f.read_bytes()[:200])  # every training image truncated
    env = dict(os.environ, PYTHONWARNINGS="ignore", RASS_SYNTHETIC_ROOT=str(root))
    r = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
                        os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml"), "SOLVER.MAX_ITER", "2",
                        "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr[-3000:]
    assert lines[-2].startswith(f"error: Cannot decode image {root / 'images' / 'training'}")
    assert lines[-1] == f"  hint: {DAMAGED_FILE_HINT}"
    assert "Traceback" not in r.stderr


def test_evaluator_size_mismatch_names_the_exif_orientation(exif_set):
    """A non-square EXIF-rotated image whose label follows the stored pixels reaches the evaluator as a size
    mismatch: the message says what the orientation did and which key to set."""
    import torch

    from rass.evaluation.sem_seg import CheckedSemSegEvaluator

    name, _, pixels, labels = exif_set
    b = next(d for d in DatasetCatalog.get(name) if d["image_id"] == "b")
    ev = CheckedSemSegEvaluator(name, distributed=False)
    ev.reset()
    upright = torch.zeros(150, 40, 24)  # the prediction follows the upright image (HxW 40x24)
    with pytest.raises(UserValueError) as e:
        ev.process([{"file_name": b["file_name"], "exif_applied": True}], [{"sem_seg": upright}])
    assert e.value.message == (
        f"Annotation {b['sem_seg_file_name']} has size 40x24 (WxH) but image {b['file_name']} gives a prediction of "
        "size 24x40 (WxH, the image's size); the image carries EXIF orientation 6 (rotated 90° clockwise for "
        "display), so it is read upright (INPUT.LABELLED_EXIF 'apply')")
    assert e.value.hint == "if the annotation follows the stored pixels, set INPUT.LABELLED_EXIF 'ignore'"
    c = next(d for d in DatasetCatalog.get(name) if d["image_id"] == "c")  # no EXIF tag: no EXIF sentence
    with pytest.raises(UserValueError) as e:
        ev.process([{"file_name": c["file_name"]}], [{"sem_seg": torch.zeros(150, 5, 5)}])
    assert "EXIF" not in e.value.message and e.value.hint is None
