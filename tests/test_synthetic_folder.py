"""tools/make_synthetic_ade20k.py on an existing folder: reuse, complete, refuse other settings, --overwrite."""
import hashlib
import json
import os

import pytest

from rass.data.synthetic import RECORD, SyntheticFolderError, count_images, make_synthetic_ade20k
from tests.conftest import load_script

SMALL = dict(num_train=3, num_val=2, min_size=32, max_size=48, progress=False)


def _tool():
    return load_script("tools/make_synthetic_ade20k.py", "make_synthetic_tool")


TOOL = _tool()
ARGS = ["--num-train", "3", "--num-val", "2", "--min-size", "32", "--max-size", "48", "--no-progress"]


def _digest(root) -> str:
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, f), root).encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """Reference folders generated from scratch with seeds 0 and 5."""
    out = {}
    for seed in (0, 5):
        root = str(tmp_path_factory.mktemp(f"seed{seed}"))
        assert make_synthetic_ade20k(root, seed=seed, **SMALL) == {"train": 3, "val": 2}
        out[seed] = (root, _digest(root))
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def test_other_seed_is_refused_and_leaves_the_data(fresh, tmp_path, capsys):
    root = _copy(fresh[0][0], tmp_path / "d")
    with open(os.path.join(root, RECORD)) as f:
        assert json.load(f) == {"generator": 1, "seed": 0, "min_size": 32, "max_size": 48}
    with pytest.raises(SyntheticFolderError, match=r"generated with seed 0; this run asks for seed 5") as e:
        make_synthetic_ade20k(root, seed=5, **SMALL)
    assert "--overwrite" in e.value.hint
    assert TOOL.main(["--out", root, "--seed", "5"] + ARGS) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "seed 0" in err and "--overwrite" in err
    assert _digest(root) == fresh[0][1]  # nothing written, nothing removed


def test_other_size_range_is_refused_by_name(fresh, tmp_path):
    root = _copy(fresh[0][0], tmp_path / "d")
    with pytest.raises(SyntheticFolderError, match=r"min_size 32.*asks for min_size 40"):
        make_synthetic_ade20k(root, seed=0, **{**SMALL, "min_size": 40})


def test_overwrite_regenerates_exactly_the_new_dataset(fresh, tmp_path, capsys):
    root = _copy(fresh[0][0], tmp_path / "d")
    make_synthetic_ade20k(root, seed=0, **{**SMALL, "num_train": 6})  # more images than seed 5's reference
    assert TOOL.main(["--out", root, "--seed", "5", "--overwrite"] + ARGS) == 0
    assert "wrote 3 training and 2 validation" in capsys.readouterr().out
    assert _digest(root) == fresh[5][1]  # the extra seed-0 images are gone too


def test_same_seed_complete_is_reused(fresh, tmp_path, capsys):
    root = _copy(fresh[0][0], tmp_path / "d")
    mtimes = {n: os.path.getmtime(os.path.join(root, n)) for n in (RECORD, "images/training/synth_000000.jpg")}
    assert TOOL.main(["--out", root, "--seed", "0"] + ARGS) == 0
    assert "reused" in capsys.readouterr().out
    assert _digest(root) == fresh[0][1]
    assert mtimes == {n: os.path.getmtime(os.path.join(root, n)) for n in mtimes}  # not even rewritten


def test_incomplete_folder_is_completed(fresh, tmp_path):
    root = _copy(fresh[0][0], tmp_path / "d")
    os.remove(os.path.join(root, "images", "training", "synth_000001.jpg"))
    os.remove(os.path.join(root, "annotations_detectron2", "validation", "synth_000001.png"))
    os.remove(os.path.join(root, "images", "validation", "synth_000001.jpg"))
    assert make_synthetic_ade20k(root, seed=0, **SMALL) == {"train": 1, "val": 1}
    assert _digest(root) == fresh[0][1]


def test_folder_without_record_is_checked_by_content(fresh, tmp_path):
    root = _copy(fresh[0][0], tmp_path / "d")  # as made before the record existed
    os.remove(os.path.join(root, RECORD))
    with pytest.raises(SyntheticFolderError, match=r"not made with seed 5.*synth_000000\.png differs"):
        make_synthetic_ade20k(root, seed=5, **SMALL)
    assert not os.path.exists(os.path.join(root, RECORD))
    assert make_synthetic_ade20k(root, seed=0, **SMALL) == {"train": 0, "val": 0}
    assert _digest(root) == fresh[0][1]  # the record is written again, identical


def test_foreign_files_are_refused_even_with_overwrite(tmp_path):
    root = tmp_path / "ade"
    os.makedirs(root / "images" / "training")
    (root / "images" / "training" / "ADE_train_00000001.jpg").write_bytes(b"a real image")
    for overwrite in (False, True):
        with pytest.raises(SyntheticFolderError, match=r"not part of a generated dataset .*ADE_train_00000001\.jpg"):
            make_synthetic_ade20k(str(root), seed=0, overwrite=overwrite, **SMALL)
    assert os.listdir(root / "images" / "training") == ["ADE_train_00000001.jpg"]


def test_lone_halves_beyond_the_count_are_completed(fresh, tmp_path):
    root = _copy(fresh[0][0], tmp_path / "d")
    make_synthetic_ade20k(root, seed=0, **{**SMALL, "num_val": 4})
    os.remove(os.path.join(root, "images", "validation", "synth_000003.jpg"))  # an interrupted run's leftover
    assert make_synthetic_ade20k(root, seed=0, **SMALL) == {"train": 0, "val": 1}
    assert count_images(root) == {"train": 3, "val": 4}  # every label has its image: the set loads
