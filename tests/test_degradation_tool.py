"""tools/degrade_dataset.py on a generated ADE20K-format tree."""
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    spec = importlib.util.spec_from_file_location("degrade_dataset", os.path.join(ROOT, "tools", "degrade_dataset.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _make_tree(root, n=3):
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        os.makedirs(os.path.join(root, "images", split))
        os.makedirs(os.path.join(root, "annotations_detectron2", split))
        for i in range(n):
            h, w = (int(v) for v in rng.integers(30, 70, 2))
            name = f"ADE_{split}_{i:08d}"
            Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(os.path.join(root, "images", split, name + ".jpg"), quality=90)
            Image.fromarray(rng.integers(0, 151, (h, w)).astype(np.uint8)).save(os.path.join(root, "annotations_detectron2", split, name + ".png"))


def _digest(folder):
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_degrade_tree_writes_png_copies_labels_and_resumes(tmp_path, capsys):
    tool = _load_tool()
    src, dst = str(tmp_path / "ade"), str(tmp_path / "out")
    _make_tree(src)
    args = ["--preset", "lqseg_2", "--input", src, "--output", dst, "--seed", "3", "--splits", "validation", "--no-progress"]
    assert tool.main(args) == 0
    first = _digest(dst)
    stems = [f"ADE_validation_{i:08d}" for i in range(3)]
    for stem in stems:
        out = np.asarray(Image.open(os.path.join(dst, "images", "validation", stem + ".png")))
        src_img = np.asarray(Image.open(os.path.join(src, "images", "validation", stem + ".jpg")))
        assert out.shape == src_img.shape and out.dtype == np.uint8 and not np.array_equal(out, src_img)
        assert first[f"annotations_detectron2/validation/{stem}.png"] == _digest(src)[f"annotations_detectron2/validation/{stem}.png"]
    assert not os.path.exists(os.path.join(dst, "images", "training"))
    with open(os.path.join(dst, "manifest.jsonl")) as f:
        entries = [json.loads(line) for line in f]
    assert [e["stem"] for e in entries] == stems
    for e in entries:
        assert e["params"]["seed"] == e["seed"] and e["sha256"] == first[f"images/validation/{e['stem']}.png"]
    assert json.load(open(os.path.join(dst, "degradation.json")))["preset"] == "lqseg_2"

    # second run: nothing to do, same bytes
    assert tool.main(args) == 0
    assert "degraded 0 images, skipped 3" in capsys.readouterr().out
    assert _digest(dst) == first
    # an interrupted run: one image missing, manifest cut mid-line → redone with identical bytes
    os.remove(os.path.join(dst, "images", "validation", stems[1] + ".png"))
    with open(os.path.join(dst, "manifest.jsonl"), "r+") as f:
        text = f.read()
        f.seek(0)
        f.write(text[: len(text) - 40])
        f.truncate()
    assert tool.main(args) == 0
    assert _digest(dst) == first

    # other settings into the same folder are refused, with a message naming the setting
    assert tool.main(args[:-3] + ["--seed", "4", "--no-progress"]) == 2
    assert "seed=3" in capsys.readouterr().err
    # ... and so is a folder written by another version of the engine (its bytes would differ)
    import rass.data.degradation.offline as offline

    old_version = offline.ENGINE_VERSION
    offline.ENGINE_VERSION = old_version + 1
    try:
        assert tool.main(args) == 2
        assert f"engine={old_version}" in capsys.readouterr().err
    finally:
        offline.ENGINE_VERSION = old_version
    assert tool.main(["--preset", "rass", "--input", str(tmp_path / "missing"), "--output", dst + "2", "--seed", "0"]) == 2
    assert "images/validation" in capsys.readouterr().err


def test_unreadable_inputs_are_reported_and_the_run_continues(tmp_path, capsys):
    tool = _load_tool()
    src, dst = str(tmp_path / "ade"), str(tmp_path / "out")
    _make_tree(src, n=2)
    with open(os.path.join(src, "images", "training", "ADE_broken.jpg"), "wb") as f:
        f.write(b"this is not an image")
    code = tool.main(["--preset", "rass", "--input", src, "--output", dst, "--seed", "0",
                      "--splits", "training", "validation", "--batch-size", "3", "--no-progress",
                      "--set", "jpeg_range=[60,70]"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ADE_broken.jpg" in err and "could not be read" in err
    written = sorted(os.listdir(os.path.join(dst, "images", "training"))) + sorted(os.listdir(os.path.join(dst, "images", "validation")))
    assert len(written) == 4 and "ADE_broken.png" not in written
    entries = [json.loads(line) for line in open(os.path.join(dst, "manifest.jsonl"))]
    assert all(60 <= e["params"]["jpeg1"] <= 70 for e in entries)
    with pytest.raises(SystemExit, match="unknown degradation value"):
        tool.main(["--preset", "rass", "--input", src, "--output", dst, "--seed", "0", "--set", "nope=1"])
