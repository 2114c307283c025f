"""demo/demo.py: folders with a broken image, label PNGs, overlays, summaries, legend, video round trip."""
import os
import re
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

from rass.config import setup_cfg
from rass.engine import SemanticPredictor
from rass.evaluation.visualize import overlay
from tests.conftest import REPO, load_script
from tests.test_predictor import CFG, save_tiny_checkpoint

DEMO = os.path.join(REPO, "demo", "demo.py")


def _load_demo():
    return load_script("demo/demo.py", "rass_demo")


demo = _load_demo()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("weights")))[1]


@pytest.fixture(scope="module")
def predictor(weights):
    return SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", weights]))


def _write_images(folder, sizes):
    os.makedirs(folder, exist_ok=True)
    g = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        small = g.integers(0, 256, (max(1, h // 12), max(1, w // 12), 3), dtype=np.uint8)
        path = os.path.join(folder, f"img{i}.png")
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(path)
        paths.append(path)
    return paths


def test_folder_with_broken_image_reports_it_writes_the_others_and_exits_1(tmp_path, weights, predictor):
    paths = _write_images(tmp_path / "in", [(97, 131), (120, 75)])
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, DEMO, "--config-file", CFG, "--input", str(tmp_path / "in"),
                        "--output", str(out), "--save-labels", "--opacity", "1.0", "--opts", "MODEL.WEIGHTS", weights],
                       capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
    assert r.returncode == 1, r.stderr[-3000:]
    assert re.search(r"error: .*broken\.png: cannot read the image", r.stderr)
    assert "1 input(s) failed" in r.stderr
    assert sorted(os.listdir(out)) == ["img0.png", "img0_labels.png", "img1.png", "img1_labels.png"]
    colors = np.asarray(MetadataCatalog.get("synthetic_sem_seg_val").stuff_colors, np.uint8)
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        stem = os.path.splitext(os.path.basename(path))[0]
        labels = np.asarray(Image.open(out / f"{stem}_labels.png"))
        vis = np.asarray(Image.open(out / f"{stem}.png"))
        assert labels.dtype == np.uint8 and labels.shape == image.shape[:2] and vis.shape == image.shape
        assert labels.max() <= 149
        assert np.array_equal(labels, predictor(image)["labels"].numpy())
        assert np.array_equal(vis, colors[labels])  # opacity 1: the class colours only


def test_summary_without_output_for_a_glob_pattern(tmp_path, weights, predictor, capsys):
    paths = _write_images(tmp_path, [(64, 80), (50, 90)])
    (tmp_path / "other.jpg").write_bytes(b"")  # not matched by the pattern
    code = demo.main(["--config-file", CFG, "--input", str(tmp_path / "img*.png"), "--top", "3",
                      "--opts", "MODEL.WEIGHTS", weights])
    assert code == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(str(tmp_path))]
    assert len(lines) == 2
    for path, line in zip(paths, lines):
        labels = predictor(np.asarray(Image.open(path).convert("RGB")))["labels"].numpy()
        counts = np.bincount(labels.ravel(), minlength=150)
        top = int(np.argmax(counts))
        name = predictor.class_names[top].split(",")[0]
        assert line.startswith(f"{path} ({labels.shape[1]}x{labels.shape[0]}): {name} "
                               f"{100.0 * counts[top] / labels.size:.1f}%")
        assert line.count("%") == min(3, int((counts > 0).sum()))


def test_single_file_output_legend_and_argument_errors(tmp_path, weights, capsys):
    (path,) = _write_images(tmp_path, [(180, 240)])
    args = ["--config-file", CFG, "--input", path, "--opts", "MODEL.WEIGHTS", weights]
    assert demo.main(["--output", str(tmp_path / "plain.png"), *args]) == 0
    assert demo.main(["--output", str(tmp_path / "legend.png"), "--legend", *args]) == 0
    plain, legend = (np.asarray(Image.open(tmp_path / n)) for n in ("plain.png", "legend.png"))
    assert plain.shape == legend.shape == (180, 240, 3)
    diff = np.abs(plain.astype(int) - legend.astype(int)).sum(axis=2) > 0
    ys, xs = np.nonzero(diff)
    assert ys.size and ys.min() == 0 and xs.min() == 0  # a box in the top-left corner ...
    assert not diff[ys.max() + 1:].any() and not diff[:, xs.max() + 1:].any()  # ... and nothing else
    assert xs.max() < 200

    capsys.readouterr()
    code = demo.main(["--output", str(tmp_path / "x.png"), "--config-file", CFG, "--input", path, path + "x",
                      "--opts", "MODEL.WEIGHTS", weights])
    assert code == 1 and f"{path}x: no such file or folder" in capsys.readouterr().err
    code = demo.main(["--config-file", CFG, "--input", str(tmp_path), "--output", str(tmp_path / "many.png"),
                      "--opts", "MODEL.WEIGHTS", weights])  # 4 images there now, one output file
    assert code == 2 and "is a file name but there are 4 input images" in capsys.readouterr().err
    code = demo.main(["--config-file", CFG, "--input", path, "--opts", "MODEL.WEIGHTS", str(tmp_path / "no.pth")])
    assert code == 2 and f"MODEL.WEIGHTS: checkpoint file not found: {tmp_path / 'no.pth'}" in capsys.readouterr().err


def _make_video(path, frames=7, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, size, True)
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write mp4v videos")
    for i in range(frames):
        f = np.full((size[1], size[0], 3), 40, np.uint8)
        f[:, : 8 + 12 * i] = (30, 190, 60)
        f[size[1] // 2:, :, 2] = 200
        writer.write(f)
    writer.release()


def _read_video(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def test_video_round_trip(tmp_path, weights):
    src = tmp_path / "clip.mp4"
    _make_video(src)
    out = tmp_path / "out"
    opts = ["MODEL.WEIGHTS", weights, "MODEL.RASS.LATENT", "mean"]  # no noise: batching changes nothing
    code = demo.main(["--config-file", CFG, "--video-input", str(src), "--output", str(out), "--batch-size", "3",
                      "--opts", *opts])
    assert code == 0
    assert os.listdir(out) == ["clip.mp4"]  # named after the input, no temporary file left
    inputs, _ = _read_video(src)
    outputs, fps = _read_video(out / "clip.mp4")
    assert len(outputs) == len(inputs) == 7 and fps == pytest.approx(5.0)
    assert outputs[0].shape == (64, 96, 3)
    predictor = SemanticPredictor(setup_cfg(CFG, opts))
    picks = (0, 3, 6)  # first batch, second batch, the last (partial) batch
    expected = [overlay(inputs[i], predictor(inputs[i])["labels"].numpy(), predictor.colors, 0.5) for i in picks]
    for k, i in enumerate(picks):
        errs = [np.abs(outputs[i].astype(float) - e).mean() for e in expected]
        assert errs[k] < 6.0 and errs[k] == min(errs), (i, errs)  # mp4v is lossy; frames stay in order
    assert demo.main(["--config-file", CFG, "--video-input", str(tmp_path / "none.mp4"), "--opts", *opts]) == 1


def test_video_output_gets_the_mode_of_the_images(tmp_path, weights):
    src = tmp_path / "clip.mp4"
    _make_video(src, frames=2)
    old = os.umask(0o027)  # not the usual 022, so that 0600 (mkstemp) and 0644 cannot pass by chance
    try:
        assert demo.main(["--config-file", CFG, "--video-input", str(src), "--output", str(tmp_path / "out.mp4"),
                          "--opts", "MODEL.WEIGHTS", weights]) == 0
        image = _write_images(tmp_path / "in", [(32, 40)])[0]
        assert demo.main(["--config-file", CFG, "--input", image, "--output", str(tmp_path / "img"),
                          "--opts", "MODEL.WEIGHTS", weights]) == 0
    finally:
        os.umask(old)
    video_mode = stat.S_IMODE(os.stat(tmp_path / "out.mp4").st_mode)
    image_mode = stat.S_IMODE(os.stat(tmp_path / "img" / "img0.png").st_mode)
    assert video_mode == image_mode == 0o640


def test_two_inputs_with_the_same_name_are_told_which_is_renamed(tmp_path, weights, capsys):
    g = np.random.default_rng(1)
    for name in ("a/x.png", "b/x.jpg"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        Image.fromarray(g.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / name)
    out = tmp_path / "out"
    first, second = str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.jpg")
    assert demo.main(["--config-file", CFG, "--input", first, second, "--output", str(out),
                      "--opts", "MODEL.WEIGHTS", weights]) == 0
    assert sorted(os.listdir(out)) == ["x-2.png", "x.png"]
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {second} is written as {out / 'x-2.png'} (another input is also named x)"]
    assert demo.renamed_outputs({first: (str(out / "x.png"), None), str(tmp_path / "y.png"): (str(out / "y.png"), None)}) == []
    assert demo.renamed_outputs({first: (str(tmp_path / "chosen.png"), None)}) == []  # one input: a file --output


def test_an_unreadable_upload_is_named_by_its_file_name(tmp_path, monkeypatch):
    import io

    import rass.app.inputs as inputs
    try:  # the message Pillow gives for an in-memory copy it cannot identify (what the image reader decodes)
        Image.open(io.BytesIO(b"\x00" * 16))
    except Exception as e:  # noqa: BLE001
        pillow_message = str(e)
    assert "<_io.BytesIO object at 0x" in pillow_message
    upload = tmp_path / "holiday.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(upload)

    def failing_reader(path, image_format):
        raise ValueError(f"Cannot decode image {path}: UnidentifiedImageError: {pillow_message}")

    monkeypatch.setattr(inputs, "read_image_checked", failing_reader)
    with pytest.raises(inputs.AppError) as info:
        inputs.load_upload(str(upload))
    assert str(info.value.message) == ("holiday.png: cannot read the image (Cannot decode image holiday.png: "
                                       "UnidentifiedImageError: cannot identify image file holiday.png)")
