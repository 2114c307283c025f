"""tools/degrade_dataset.py on a generated ADE20K-format tree."""
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image
from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool():
    return load_script("tools/degrade_dataset.py", "degrade_dataset")


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
    assert "seed=3 (folder) vs 4 (this run)" in capsys.readouterr().err
    # another preset: one short line naming both presets and the value that differs
    assert tool.main(["--preset", "lqseg_1", *args[2:]]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {os.path.join(dst, 'degradation.json')} was written with other settings (preset 'lqseg_2', this run "
        "'lqseg_1'): spec.second_resize_divisor=2.0 (folder) vs 1.0 (this run)",
        "  hint: use another --output folder or the same settings"]
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
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "images/validation" in err and len(err.splitlines()) == 1


def test_unreadable_inputs_are_reported_and_the_run_continues(tmp_path, capsys):
    tool = _load_tool()
    src, dst = str(tmp_path / "ade"), str(tmp_path / "out")
    _make_tree(src, n=2)
    with open(os.path.join(src, "images", "training", "ADE_broken.jpg"), "wb") as f:
        f.write(b"this is not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(src, "annotations_detectron2", "training", "ADE_broken.png"))
    code = tool.main(["--preset", "rass", "--input", src, "--output", dst, "--seed", "0",
                      "--splits", "training", "validation", "--batch-size", "3", "--no-progress",
                      "--set", "jpeg_range=[60,70]"])
    assert code == 1
    err = capsys.readouterr().err
    assert "ADE_broken.jpg" in err and "unreadable image: 1 (ADE_broken.jpg)" in err
    written = sorted(os.listdir(os.path.join(dst, "images", "training"))) + sorted(os.listdir(os.path.join(dst, "images", "validation")))
    assert len(written) == 4 and "ADE_broken.png" not in written
    entries = [json.loads(line) for line in open(os.path.join(dst, "manifest.jsonl"))]
    assert all(60 <= e["params"]["jpeg1"] <= 70 for e in entries)
    assert tool.main(["--preset", "rass", "--input", src, "--output", dst, "--seed", "0", "--set", "nope=1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: --set: unknown degradation value 'nope'; valid: ")
    assert tool.main(["--preset", "rass", "--input", src, "--output", dst, "--seed", "0", "--set", "nope"]) == 2
    assert capsys.readouterr().err == "error: --set expects NAME=VALUE, got 'nope'\n"


def _pairs_of(dst, split):
    imgs = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(dst, "images", split))}
    anns = {os.path.splitext(n)[0] for n in os.listdir(os.path.join(dst, "annotations_detectron2", split))}
    return imgs, anns


def test_output_is_always_a_loadable_dataset_and_skips_are_summarised(tmp_path, capsys):
    """Issue 9 point 4: inputs without annotation, corrupt images/annotations, size mismatches."""
    from rass.data.datasets.sem_seg import load_sem_seg_split

    tool = _load_tool()
    src, dst = str(tmp_path / "ade"), str(tmp_path / "out")
    _make_tree(src, n=2)
    img_dir, ann_dir = os.path.join(src, "images", "validation"), os.path.join(src, "annotations_detectron2", "validation")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)).save(os.path.join(img_dir, "no_ann.png"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(os.path.join(ann_dir, "no_img.png"))
    with open(os.path.join(img_dir, "bad_img.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(os.path.join(ann_dir, "bad_img.png"))
    Image.fromarray(rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)).save(os.path.join(img_dir, "bad_ann.png"))
    good = open(os.path.join(ann_dir, "no_img.png"), "rb").read()
    with open(os.path.join(ann_dir, "bad_ann.png"), "wb") as f:
        f.write(good[: len(good) // 2])  # truncated PNG
    Image.fromarray(rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)).save(os.path.join(img_dir, "wrong_size.png"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(os.path.join(ann_dir, "wrong_size.png"))

    args = ["--preset", "rass", "--input", src, "--output", dst, "--seed", "0", "--no-progress"]
    assert tool.main(args) == 1
    err = capsys.readouterr().err
    for line in ("no annotation: 1 (no_ann.png)", "no image: 1 (no_img.png)", "unreadable image: 1 (bad_img.jpg)",
                 "unreadable annotation: 1 (bad_ann.png)", "size mismatch: 1 (wrong_size.png)"):
        assert line in err, err
    imgs, anns = _pairs_of(dst, "validation")
    assert imgs == anns == {"ADE_validation_00000000", "ADE_validation_00000001"}
    assert len(load_sem_seg_split("out", dst, "validation")) == 2  # registers and loads
    # a resumed run reports the same skips (exit 1 again) and still leaves only complete pairs
    assert tool.main(args) == 1
    assert "no annotation: 1 (no_ann.png)" in capsys.readouterr().err
    assert _pairs_of(dst, "validation")[0] == imgs
    # an output image without annotation left by an earlier (older) run is reported, not hidden
    stray = os.path.join(dst, "images", "validation", "stray.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(stray)
    assert tool.main(args) == 1
    assert "incomplete output pair: 1 (stray.png)" in capsys.readouterr().err
    os.remove(stray)
    # once the input is fixed, the run completes with exit 0
    for n in ("no_ann.png", "bad_img.jpg", "bad_ann.png", "wrong_size.png"):
        os.remove(os.path.join(img_dir, n) if os.path.exists(os.path.join(img_dir, n)) else os.path.join(ann_dir, n))
    for n in ("no_img.png", "bad_img.png", "bad_ann.png", "wrong_size.png"):
        if os.path.exists(os.path.join(ann_dir, n)):
            os.remove(os.path.join(ann_dir, n))
    assert tool.main(args) == 0


def _make_image_mask_set(root, n=3):
    rng = np.random.default_rng(2)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    for i in range(n):
        h, w = (int(v) for v in rng.integers(40, 80, 2))
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(os.path.join(root, "images", f"im{i}.jpg"), quality=92)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 255
        Image.fromarray(mask).save(os.path.join(root, "masks", f"im{i}.png"))


def test_image_mask_layout_with_glesam_options(tmp_path, capsys):
    tool = _load_tool()
    src, dst = str(tmp_path / "clear"), str(tmp_path / "LQ-3")
    _make_image_mask_set(src)
    args = ["--layout", "image_mask", "--preset", "lqseg_3", "--input", src, "--output", dst, "--seed", "1",
            "--usm", "--final-size", "64", "--no-progress"]
    assert tool.main(args) == 0
    first = _digest(dst)
    for i in range(3):
        out = np.asarray(Image.open(os.path.join(dst, "images", f"im{i}.png")))
        assert out.shape == (64, 64, 3)  # fixed square, as GleSAM's released sets (512 there)
        assert first[f"masks/im{i}.png"] == _digest(src)[f"masks/im{i}.png"]  # masks unchanged, original size
    info = json.load(open(os.path.join(dst, "degradation.json")))
    assert info["options"] == {"usm": True, "final_size": 64} and info["layout"] == "image_mask"
    entries = [json.loads(line) for line in open(os.path.join(dst, "manifest.jsonl"))]
    assert all(e["params"]["final"]["size"] == [64, 64] and e["params"]["input_size"][0] >= 40 for e in entries)
    assert tool.main(args) == 0 and _digest(dst) == first  # resumable, same bytes
    assert tool.main(args[:-3] + ["--final-size", "orig", "--no-progress"]) == 2  # other options: refused
    assert "final_size" in capsys.readouterr().err
    # orig size (the default): the images keep the input size
    dst2 = dst + "_orig"
    assert tool.main(["--layout", "image_mask", "--preset", "lqseg_3", "--input", src, "--output", dst2, "--seed", "1", "--no-progress"]) == 0
    for i in range(3):
        assert Image.open(os.path.join(dst2, "images", f"im{i}.png")).size == Image.open(os.path.join(src, "masks", f"im{i}.png")).size
    # images and masks in one folder (ECSSD's layout): the .png files are the masks
    flat = str(tmp_path / "flat")
    os.makedirs(flat)
    for i in range(2):
        for sub, ext in (("images", ".jpg"), ("masks", ".png")):
            with open(os.path.join(src, sub, f"im{i}{ext}"), "rb") as f, open(os.path.join(flat, f"im{i}{ext}"), "wb") as g:
                g.write(f.read())
    assert tool.main(["--layout", "image_mask", "--preset", "lqseg_1", "--input", flat, "--image-dir", ".", "--mask-dir", ".",
                      "--output", str(tmp_path / "flat_out"), "--seed", "0", "--no-progress"]) == 0
    assert sorted(os.listdir(tmp_path / "flat_out" / "images")) == sorted(os.listdir(tmp_path / "flat_out" / "masks")) == ["im0.png", "im1.png"]
    # --final-size with the ADE20K layout is refused (annotations must keep the image size)
    assert tool.main(["--preset", "rass", "--input", src, "--output", str(tmp_path / "x"), "--seed", "0", "--final-size", "512"]) == 2
    assert "final_size" in capsys.readouterr().err


def test_usm_matches_basicsr_formula():
    """usm_sharpen equals basicsr's numpy usm_sharp (cv2.GaussianBlur 51x51, sigma 0 → 8.0, reflect-101)."""
    import cv2
    import torch

    from rass.data.degradation.offline import usm_sharpen

    rng = np.random.default_rng(0)
    img = rng.random((70, 90, 3)).astype(np.float32)
    img[20:50, 30:60] = 0.9  # flat areas: residual below threshold there
    blur = cv2.GaussianBlur(img, (51, 51), 0)
    residual = img - blur
    mask = (np.abs(residual) * 255 > 10).astype(np.float32)
    soft = cv2.GaussianBlur(mask, (51, 51), 0)[..., None] if mask.ndim == 2 else cv2.GaussianBlur(mask, (51, 51), 0)
    ref = soft * np.clip(img + 0.5 * residual, 0, 1) + (1 - soft) * img
    out = usm_sharpen(torch.from_numpy(img).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.abs(out - ref).max() < 1e-5
    assert np.abs(out - img).max() > 0.05  # it does sharpen


def test_a_folder_of_other_settings_is_refused_naming_each_difference(tmp_path):
    """Key by key (nested settings by dotted name), both values, at most six listed."""
    from rass.data.degradation import offline
    from rass.data.degradation.presets import get_spec
    from rass.utils.errors import UserValueError

    spec = get_spec("lqseg_2").to_dict()
    info = {"engine": offline.ENGINE_VERSION, "preset": "lqseg_2", "seed": 3, "layout": "ade20k", "spec": spec,
            "options": {"usm": False, "final_size": None}, "overrides": {}, "format": "png"}
    offline._check_run_info(str(tmp_path), info)  # writes degradation.json
    offline._check_run_info(str(tmp_path), dict(info, preset="lqseg_1", overrides={"x": 1}))  # same bytes: accepted
    path = os.path.join(str(tmp_path), "degradation.json")
    other = dict(info, spec=dict(spec, jpeg_range=[40, 95], scale=2), options={"usm": True, "final_size": None})
    with pytest.raises(UserValueError) as e:
        offline._check_run_info(str(tmp_path), other)
    assert e.value.message == (
        f"{path} was written with other settings (preset 'lqseg_2' in both): options.usm=False (folder) vs True "
        f"(this run), spec.jpeg_range={spec['jpeg_range']!r} (folder) vs [40, 95] (this run), spec.scale=1 (folder) vs "
        "2 (this run)")
    many = dict(info, seed=4, layout="image_mask", spec={**spec, **{k: "changed" for k in sorted(spec)[:6]}})
    with pytest.raises(UserValueError) as e:
        offline._check_run_info(str(tmp_path), many)
    assert e.value.message.startswith(f"{path} was written with other settings (preset 'lqseg_2' in both): "
                                      "layout='ade20k' (folder) vs 'image_mask' (this run), seed=3 (folder) vs 4")
    assert e.value.message.endswith(" and 2 more") and e.value.message.count("(this run)") == 6
    assert len(e.value.message) < 600
    long = dict(info, spec=dict(spec, kernel_list=["iso"] * 30))
    with pytest.raises(UserValueError) as e:  # long values are cut to 40 characters
        offline._check_run_info(str(tmp_path), long)
    assert e.value.message.endswith(" vs ['iso', 'iso', 'iso', 'iso', 'iso', '... (this run)")
