import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import rass  # noqa: F401
from rass.data.synthetic import CLASSES, make_synthetic_ade20k, render_scene
from tests.conftest import REPO

NAMES = [
    "ade20k_sem_seg_train", "ade20k_sem_seg_val", "ade20k_sem_seg_val_degraded",
    "ade20k_sem_seg_val_lqseg_1", "ade20k_sem_seg_val_lqseg_2", "ade20k_sem_seg_val_lqseg_3",
    "reallq_sem_seg_val", "synthetic_sem_seg_train", "synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded",
]


@pytest.mark.parametrize("name", NAMES)
def test_registered_with_sem_seg_metadata(name):
    assert name in DatasetCatalog.list()
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "sem_seg"
    assert meta.ignore_label == 255
    assert len(meta.stuff_classes) == 150 and len(meta.stuff_colors) == 150
    assert meta.stuff_classes[2] == "sky"


@pytest.mark.parametrize(
    "name,env",
    [("reallq_sem_seg_val", "RASS_REALLQ_ROOT"), ("ade20k_sem_seg_val_degraded", "RASS_ADE20K_DEGRADED_ROOT"),
     ("ade20k_sem_seg_val_lqseg_3", "RASS_LQSEG_ROOT"), ("ade20k_sem_seg_train", "DETECTRON2_DATASETS")],
)
def test_missing_root_names_path_and_env_var(name, env, tmp_path, monkeypatch):
    monkeypatch.setenv(env, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as e:
        DatasetCatalog.get(name)
    assert str(tmp_path / "nowhere") in str(e.value) and env in str(e.value)


def test_env_root_is_used(synthetic_env):
    dicts = DatasetCatalog.get("synthetic_sem_seg_val")
    assert len(dicts) == 6
    d = dicts[0]
    assert d["file_name"].startswith(synthetic_env) and d["file_name"].endswith(".jpg")
    assert os.path.basename(d["sem_seg_file_name"]) == "synth_000000.png"


def test_unmatched_files_are_an_error(tmp_path, monkeypatch):
    make_synthetic_ade20k(str(tmp_path), seed=1, num_train=0, num_val=2, min_size=64, max_size=80, progress=False)
    os.remove(tmp_path / "annotations_detectron2" / "validation" / "synth_000001.png")
    monkeypatch.setenv("RASS_REALLQ_ROOT", str(tmp_path))
    with pytest.raises(ValueError, match="synth_000001"):
        DatasetCatalog.get("reallq_sem_seg_val")


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_generator_is_deterministic_and_idempotent(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 5), (b, 5), (c, 6)):
        make_synthetic_ade20k(str(root), seed=seed, num_train=3, num_val=2, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert make_synthetic_ade20k(str(a), seed=5, num_train=3, num_val=2, progress=False) == {"train": 0, "val": 0}


def test_scenes_vary_in_size_and_hold_several_classes():
    sizes, classes = set(), set()
    for s in range(12):
        img, lab = render_scene(s)
        assert img.dtype == np.uint8 and img.shape[:2] == lab.shape
        assert 256 <= min(lab.shape) and max(lab.shape) <= 640
        sizes.add(lab.shape)
        vals = set(np.unique(lab).tolist())
        assert vals <= set(CLASSES.values()) | {255}
        classes |= vals
        # classes have distinct mean colours: sky is bluish
        sky = img[lab == CLASSES["sky"]]
        assert sky[:, 2].mean() > sky[:, 0].mean() + 40
    assert len(sizes) == 12
    assert set(CLASSES.values()) <= classes


def test_cli_generator(tmp_path):
    out = tmp_path / "d"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools/make_synthetic_ade20k.py"), "--out", str(out),
                        "--seed", "3", "--num-train", "2", "--num-val", "1", "--min-size", "64", "--max-size", "96"],
                       capture_output=True, text=True, check=True)
    assert "wrote 2 training and 1 validation" in r.stdout
    im = Image.open(out / "images" / "training" / "synth_000001.jpg")
    assert 64 <= min(im.size) and max(im.size) <= 96


def _write_official(root, split, name, arr, size=(40, 30)):
    os.makedirs(root / "annotations" / split, exist_ok=True)
    Image.fromarray(arr).save(root / "annotations" / split / name)


def test_prepare_ade20k_conversion_and_idempotence(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "datasets"))
    try:
        import prepare_ade20k_sem_seg as prep
    finally:
        sys.path.pop(0)
    official = np.array([[0, 1, 2], [150, 3, 0]], np.uint8)
    conv = prep.convert_label(official)
    np.testing.assert_array_equal(conv, [[255, 0, 1], [149, 2, 255]])
    with pytest.raises(ValueError, match=r"x\.png.*\[151\]"):
        prep.convert_label(np.array([[151]], np.uint8), "x.png")

    root = tmp_path / "ADEChallengeData2016"
    for split in ("training", "validation"):
        _write_official(root, split, "ADE_1.png", official)
    assert prep.convert_split(str(root), "training") == 1
    out = root / "annotations_detectron2" / "training" / "ADE_1.png"
    np.testing.assert_array_equal(np.asarray(Image.open(out)), conv)
    mtime = os.path.getmtime(out)
    assert prep.convert_split(str(root), "training") == 0  # idempotent: nothing rewritten
    assert os.path.getmtime(out) == mtime
    r = subprocess.run([sys.executable, os.path.join(REPO, "datasets/prepare_ade20k_sem_seg.py"), "--root", str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "training: wrote 0" in r.stdout and "validation: wrote 1" in r.stdout


def test_root_may_keep_the_ade20k_top_folder(tmp_path, monkeypatch):
    make_synthetic_ade20k(str(tmp_path / "ADEChallengeData2016"), seed=2, num_train=0, num_val=2, min_size=64,
                          max_size=80, progress=False)
    monkeypatch.setenv("RASS_REALLQ_ROOT", str(tmp_path))
    dicts = DatasetCatalog.get("reallq_sem_seg_val")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["synth_000000.jpg", "synth_000001.jpg"]
