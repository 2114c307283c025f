"""The browser demo's work without a browser: model choice, uploads, degradations, RASS / SAM runs,
prompts, downloads, the page's error handling (rass.app)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from rass.app.inputs import Degrader, Downloads, check_seed, load_upload
from rass.app.models import AppError, Loaded, choose_rass_model, choose_sam_model, load_backend
from rass.app.rass_tab import RassBackend
from rass.app.sam_tab import Prompts, SamBackend
from rass.app.session import DemoApp, legend_html
from rass.config import setup_cfg
from rass.data.degradation import build_degradation
from rass.data.synthetic import render_scene
from rass.evaluation.visualize import mask_iou, overlay

from conftest import REPO

TINY_RASS = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")
TINY_GLESAM = os.path.join(REPO, "configs/lqseg/tiny_glesam.yaml")
TINY_SAM = os.path.join(REPO, "configs/lqseg/tiny_sam.yaml")


@pytest.fixture(scope="module")
def scene():
    image, _ = render_scene(3, min_size=96, max_size=144)
    return image


@pytest.fixture(scope="module")
def rass_backend():
    return load_backend(choose_rass_model(TINY_RASS), RassBackend.from_cfg)


@pytest.fixture(scope="module")
def sam_backend():
    return load_backend(choose_sam_model(TINY_GLESAM), SamBackend.from_cfg)


def _app(rass, sam, tmp_path, **kw) -> DemoApp:
    return DemoApp(rass, sam, Downloads(str(tmp_path / "downloads")), **kw)


# ----------------------------------------------------------------- model choice
def test_default_rass_model_is_the_quickstart_model_when_it_exists(tmp_path):
    weights = tmp_path / "model_final.pth"
    absent = choose_rass_model(None, quickstart_weights=str(weights))
    assert absent.opts == [] and absent.config_file.endswith("configs/quickstart/tiny_rass.yaml")
    assert "RANDOM weights" in absent.origin and "scripts/quickstart.sh" in absent.origin
    weights.write_bytes(b"x")
    present = choose_rass_model(None, ["MODEL.DEVICE", "cpu"], quickstart_weights=str(weights))
    assert present.opts == ["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]
    assert "quickstart" in present.origin and "RANDOM" not in present.origin
    mine = choose_rass_model("my.yaml", ["MODEL.WEIGHTS", "w.pth"], quickstart_weights=str(weights))
    assert (mine.config_file, mine.opts) == ("my.yaml", ["MODEL.WEIGHTS", "w.pth"]) and "w.pth" in mine.origin
    nothing = choose_sam_model(None, quickstart_weights=str(tmp_path / "none.pth"))
    assert nothing.config_file.endswith("configs/lqseg/tiny_glesam.yaml") and nothing.source == "random"


def test_sam_tab_and_demo_sam_use_the_quickstarts_promptable_model_when_it_exists(tmp_path):
    from rass.app.models import QUICKSTART_PROMPTABLE_CONFIG, with_quickstart_weights
    from rass.checkpoint import RASSCheckpointer
    from detectron2.modeling import build_model

    config = os.path.join(REPO, QUICKSTART_PROMPTABLE_CONFIG)
    model = build_model(setup_cfg(config))  # saved as train_net saves model_final.pth
    with torch.no_grad():
        model.sam.mask_decoder.iou_token.weight.fill_(0.25)
    RASSCheckpointer(model, str(tmp_path)).save("model_final")
    weights = str(tmp_path / "model_final.pth")
    choice = choose_sam_model(None, ["MODEL.DEVICE", "cpu"], quickstart_weights=weights)
    assert choice.source == "quickstart" and choice.config_file == config
    assert choice.opts == ["MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"]
    loaded = load_backend(choice, SamBackend.from_cfg)
    assert loaded.error is None and list(loaded.backend.methods) == ["SAM"]  # plain SAM: no GleSAM column
    sam_model = loaded.backend.methods["SAM"].model
    assert torch.all(sam_model.sam.mask_decoder.iou_token.weight == 0.25)
    app = _app(load_backend(choose_rass_model(TINY_RASS), RassBackend.from_cfg), loaded, tmp_path)
    assert app.models_markdown().splitlines()[1] == (
        "- **SAM**: the quickstart's small model, trained on synthetic images — it shows how the method works, "
        "not the paper's accuracy.")
    from rass.app.page import build_page

    assert not app.has_glesam and build_page(app, []).components["sam_GleSAM"].visible is False  # no empty column
    # the quickstart's config without MODEL.WEIGHTS means its trained model (demo_sam.py, --sam-config-file)...
    assert with_quickstart_weights(config, ["A", "1"], weights) == (["MODEL.WEIGHTS", weights, "A", "1"], weights)
    assert choose_sam_model(config, quickstart_weights=weights).source == "quickstart"
    # ...but not with MODEL.WEIGHTS given, another config, or before the quickstart has run
    assert with_quickstart_weights(config, ["MODEL.WEIGHTS", "w.pth"], weights) == (["MODEL.WEIGHTS", "w.pth"], None)
    assert with_quickstart_weights(TINY_SAM, [], weights) == ([], None)
    assert with_quickstart_weights(config, [], str(tmp_path / "absent.pth")) == ([], None)
    assert choose_sam_model(TINY_SAM, quickstart_weights=weights).source == "configured"


def test_random_weights_are_listed_and_a_missing_weights_file_becomes_the_tabs_message(rass_backend, sam_backend,
                                                                                       tmp_path):
    assert rass_backend.error is None and sam_backend.error is None
    assert any("MODEL.WEIGHTS is empty" in n for n in rass_backend.backend.weight_notes)
    assert any("MODEL.SAM.CHECKPOINT is empty" in n for n in sam_backend.backend.weight_notes)
    missing = str(tmp_path / "nope.pth")
    broken = load_backend(choose_rass_model(TINY_RASS, ["MODEL.WEIGHTS", missing]), RassBackend.from_cfg)
    assert broken.backend is None and missing in broken.error and "Traceback" not in broken.error
    again = load_backend(choose_sam_model(TINY_GLESAM), SamBackend.from_cfg)  # random weights, seeded
    for a, b in zip(sam_backend.backend.methods["GleSAM"].model.parameters(),
                    again.backend.methods["GleSAM"].model.parameters()):
        assert torch.equal(a, b)
    wrong = load_backend(choose_sam_model(TINY_RASS), SamBackend.from_cfg)
    assert "PromptableSAM" in wrong.error
    swapped = load_backend(choose_rass_model(TINY_GLESAM), RassBackend.from_cfg)
    assert "SAM / GleSAM config" in swapped.error and "--sam-config-file" in swapped.error
    app = _app(broken, sam_backend, tmp_path)
    text, details = app.models_markdown(), app.models_details()
    assert "**RASS**: not available: its model could not be built (the technical details say why)" in text
    assert "**not available**: MODEL.WEIGHTS: checkpoint file not found" in details and missing in details
    assert "**SAM and GleSAM**: your model (tiny_glesam.yaml) — but some parts have random weights, so results " \
           "are not meaningful" in text
    assert "MODEL." not in text  # the plain lines have no config jargon...
    assert "MODEL.SAM.CHECKPOINT is empty" in details and "MODEL.GLESAM.LORA_PATH is empty" in details  # ...these do
    demo = _app(rass_backend, load_backend(choose_sam_model(None, quickstart_weights=missing), SamBackend.from_cfg),
                tmp_path)
    lines = demo.models_markdown().splitlines()
    assert lines == ["- **RASS**: your model (tiny_rass.yaml) — but some parts have random weights, so results are "
                     "not meaningful (see the details).",
                     "- **SAM and GleSAM**: demo weights (random) — results are not meaningful. "
                     "`scripts/quickstart.sh` trains a small model in minutes; docs/MODEL_ZOO.md lists the released "
                     "weights."]
    with pytest.raises(AppError, match="RASS tab has no model.*nope.pth"):
        app.run_rass({"clean": np.zeros((8, 8, 3), np.uint8)})


# ----------------------------------------------------------------- uploads
def test_upload_reads_images_and_refuses_unreadable_and_huge_files(tmp_path, scene):
    good = tmp_path / "scene.png"
    Image.fromarray(scene).save(good)
    np.testing.assert_array_equal(load_upload(str(good)), scene)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((5, 7), 65535, np.uint16)).save(gray16)
    assert load_upload(str(gray16)).shape == (5, 7, 3) and load_upload(str(gray16)).max() == 255
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(AppError, match=r"notes\.png: not an image file"):
        load_upload(str(text))
    h, w = scene.shape[:2]
    with pytest.raises(AppError, match=rf"scene\.png is {w} x {h} pixels .* at most 0\.0 MP \(--max-pixels\)"):
        load_upload(str(good), max_pixels=w * h - 1)
    assert load_upload(str(good), max_pixels=w * h).shape == scene.shape


def test_bundled_examples_are_written_and_readable(tmp_path):
    from rass.app.examples import write_examples

    paths = write_examples(str(tmp_path / "ex"))
    names = [os.path.basename(p) for p in paths]
    assert names[-2:] == ["synthetic_scene.png", "synthetic_object.png"]
    assert set(names) <= {"grace_hopper.jpg", "synthetic_scene.png", "synthetic_object.png"}
    for p in paths:
        image = load_upload(p)
        assert image.dtype == np.uint8 and min(image.shape[:2]) >= 300
    if "grace_hopper.jpg" in names:
        assert load_upload(paths[0]).shape == (600, 512, 3)


# ----------------------------------------------------------------- degradation
def test_degradations_are_the_engines_and_reproducible(scene):
    deg = Degrader()
    np.testing.assert_array_equal(deg(scene, "none", 0), scene)
    a = deg(scene, "lqseg_3", 5)
    assert a.shape == scene.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, deg(scene, "lqseg_3", 5))
    assert not np.array_equal(a, deg(scene, "lqseg_3", 6))
    x = torch.from_numpy(scene.transpose(2, 0, 1).copy())[None].float() / 255
    ref = build_degradation("lqseg_3", seed=0)(x, seeds=[5])[0]
    np.testing.assert_array_equal(a, (ref * 255).round().byte().permute(1, 2, 0).numpy())
    for bad in (-1, 1.5, "x", None, 2**31):
        with pytest.raises(AppError, match="seed"):
            check_seed(bad)
    with pytest.raises(AppError, match="unknown degradation 'jpeg'"):
        deg(scene, "jpeg", 0)


# ----------------------------------------------------------------- RASS
def test_rass_runs_on_clean_and_degraded_with_legend_and_time(rass_backend, scene):
    backend = rass_backend.backend
    degraded = Degrader()(scene, "lqseg_2", 1)
    res = backend.run(scene, degraded)
    for key, image in (("clean", scene), ("degraded", degraded)):
        labels = backend.predictor(image)["labels"].numpy()
        np.testing.assert_array_equal(res.labels[key], labels)
        np.testing.assert_array_equal(res.overlays[key], overlay(image, labels, backend.predictor.colors, 0.5))
        assert res.seconds[key] > 0
        assert "fixed prompt" in res.tags[key]
    shares = np.array([[r[2], r[3]] for r in res.legend])
    np.testing.assert_allclose(shares.sum(0), [100.0, 100.0], atol=1e-6)
    assert list(shares[:, 1]) == sorted(shares[:, 1], reverse=True)  # largest in the degraded image first
    html = legend_html(res.legend)
    assert html.count("<tr>") == len(res.legend) + 1 and res.legend[0][0] in html


def test_rass_tab_shows_the_tags_the_ram_tagger_read(tmp_path, scene):
    from rass.modeling.tagging import write_tiny_tagger_files

    opts = ["MODEL.TAGGER.NAME", "ram"] + write_tiny_tagger_files(str(tmp_path), num_tags=24)
    backend = RassBackend.from_cfg(setup_cfg(TINY_RASS, opts))
    seen = {}
    backend.predictor.model.backbone.register_forward_pre_hook(lambda m, args: seen.update(x=args[0].clone()))
    labels, tags, _ = backend.predict(scene)
    tagger = backend.tagger
    tagger.clear_cache()
    expected = tagger(((seen["x"] + 1) / 2).clamp(0, 1))[0]
    assert tags == (expected or "(no tag above its threshold)")
    assert all(t.strip().startswith("tiny_tag_") for t in expected.split(",") if t.strip())


# ----------------------------------------------------------------- SAM / GleSAM
def test_prompts_points_and_a_box_from_two_corners():
    p = Prompts().add_click(10, 20, "positive point").add_click(30, 5, "negative point")
    assert p.points == [[10.0, 20.0], [30.0, 5.0]] and p.labels == [1, 0] and p.ready
    q = Prompts().add_click(50, 8, "box corner")
    assert q.corner == [50.0, 8.0] and q.box is None and not q.ready
    q = q.add_click(12, 40, "box corner")
    assert q.box == [12.0, 8.0, 50.0, 40.0] and q.corner is None and q.ready
    assert "box 12, 8, 50, 40" in q.describe()
    assert p.describe() == "1 positive / 1 negative point(s): +(10, 20) -(30, 5)"
    with pytest.raises(AppError, match="click mode"):
        p.add_click(0, 0, "lasso")


def test_sam_and_glesam_masks_with_their_ious(sam_backend, scene):
    backend = sam_backend.backend
    assert list(backend.methods) == ["SAM", "GleSAM"]
    h, w = scene.shape[:2]
    prompts = Prompts().add_click(w / 2, h / 2, "positive point").add_click(5, 5, "box corner") \
        .add_click(w - 5, h - 5, "box corner")
    res = backend.run(scene, prompts)
    for name, predictor in backend.methods.items():
        out = predictor(scene, points=prompts.points, labels=prompts.labels, box=prompts.box)
        np.testing.assert_array_equal(res.masks[name], out["masks"].numpy())
        assert res.iou_pred[name] == pytest.approx(float(out["iou_pred"]))
        assert res.overlays[name].shape == scene.shape
    assert res.mutual_iou == pytest.approx(mask_iou(res.masks["SAM"], res.masks["GleSAM"]))
    told = []
    backend.run(scene, prompts, progress=lambda fraction, stage: told.append((round(fraction, 2), stage)))
    assert told == [(0.0, "encoding the image (SAM's image encoder: the slow step, once per image)"),
                    (0.25, "enhancing the image embedding (GleSAM's denoising UNet, once per image)"),
                    (0.5, "decoding SAM's mask"), (0.75, "decoding GleSAM's mask"), (1.0, "done")]
    assert set(res.seconds) == {"encoder", "enhancement", "SAM", "GleSAM"}
    with pytest.raises(AppError, match="no prompt yet"):
        backend.run(scene, Prompts())
    with pytest.raises(AppError, match="outside"):
        backend.run(scene, Prompts().add_click(w + 50, 3, "positive point"))
    plain = SamBackend.from_cfg(setup_cfg(TINY_SAM))
    assert list(plain.methods) == ["SAM"] and plain.run(scene, prompts).mutual_iou is None


# ----------------------------------------------------------------- the page's actions
def test_actions_from_upload_to_downloads(rass_backend, sam_backend, tmp_path, scene):
    app = _app(rass_backend, sam_backend, tmp_path)
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    out = app.load(str(path), "lqseg_3", 2)
    state = out["state"]
    assert out["status"].startswith("Loaded scene.png") and "lqseg_3, seed 2" in out["status"]
    from rass.evaluation.visualize import enlarge

    k = state["scale"]  # a small image is shown enlarged
    assert k == max(1, 320 // max(scene.shape[:2]))
    np.testing.assert_array_equal(state["degraded"], Degrader()(scene, "lqseg_3", 2))
    np.testing.assert_array_equal(out["degraded_input"], enlarge(state["degraded"], k))
    assert out["rass_clean"] is None and out["sam_SAM"] is None  # old results cleared
    again = app.degrade(state, "none", 0)
    np.testing.assert_array_equal(again["degraded_input"], enlarge(scene, k))
    assert app.degrade(None, "lqseg_1", 0) == {"status": "Upload an image or pick an example first."}
    with pytest.raises(AppError, match="seed"):
        app.degrade(state, "lqseg_1", -3)

    rass = app.run_rass(state)
    shown = (scene.shape[0] * k, scene.shape[1] * k, 3)
    assert rass["rass_clean"].shape == shown and rass["rass_degraded"].shape == shown
    names = sorted(os.path.basename(p) for p in rass["rass_files"])
    assert names == sorted(["scene_overlay_clean.png", "scene_overlay_lqseg_3_s2.png", "scene_labels_clean.png",
                            "scene_labels_lqseg_3_s2.png", "scene_lqseg_3_s2.png"])
    labels = np.asarray(Image.open(next(p for p in rass["rass_files"] if p.endswith("labels_lqseg_3_s2.png"))))
    np.testing.assert_array_equal(labels, rass_backend.backend.predictor(state["degraded"])["labels"].numpy())
    assert "tags (degraded)" in rass["rass_info"] and "time" in rass["rass_info"]

    half = app.click(state, 4, 4, "box corner", True)
    assert "sam_SAM" not in half and "click the opposite corner" in half["sam_prompts"]  # no run on half a box
    done = app.click(half["state"], 60, 50, "box corner", True)
    assert done["sam_SAM"].shape == shown and done["sam_GleSAM"].shape == shown
    corners = [4.5 / k - 0.5, 4.5 / k - 0.5, 60.5 / k - 0.5, 50.5 / k - 0.5]  # the shown pixels' centres
    assert done["state"]["prompts"].box == pytest.approx(corners)
    assert "Agreement of the SAM and the GleSAM mask" in done["sam_metrics"] and "predicted IoU" in done["sam_metrics"]
    masks = [p for p in done["sam_files"] if p.endswith("_mask.png")]
    assert sorted(os.path.basename(p) for p in masks) == ["scene_glesam_mask.png", "scene_sam_mask.png"]
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    manual = app.click(done["state"], 20, 20, "positive point", False)
    assert "sam_SAM" not in manual and manual["state"]["prompts"].labels == [1]
    cleared = app.clear_prompts(manual["state"])
    assert not cleared["state"]["prompts"].ready and cleared["sam_SAM"] is None


def test_small_images_are_shown_enlarged_and_clicks_map_back(sam_backend, tmp_path):
    from rass.evaluation.visualize import enlarge

    tiny = np.zeros((16, 12, 3), np.uint8)
    tiny[4:12, 3:10] = 220
    path = tmp_path / "tiny.png"
    Image.fromarray(tiny).save(path)
    app = _app(Loaded(choose_rass_model(TINY_RASS), error="not needed"), sam_backend, tmp_path)
    out = app.load(str(path), "none", 0)
    assert out["status"].startswith("Loaded tiny.png (12 x 16 pixels, shown enlarged 20x: the results are "
                                    "computed at the real size)")  # 320 // 16 = 20
    np.testing.assert_array_equal(out["clean_input"], enlarge(tiny, 20))
    assert out["clean_input"].shape == (320, 240, 3) and out["sam_canvas"].shape == (320, 240, 3)
    told = []
    done = app.click(out["state"], 6 * 20 + 3, 7 * 20 + 17, "positive point", True,
                     progress=lambda fraction, stage: told.append(stage))
    assert done["state"]["prompts"].points == [[pytest.approx(6.0 - 0.325), pytest.approx(7.0 + 0.375)]]
    assert told[0].startswith("encoding the image") and told[-1] == "done"
    assert done["sam_SAM"].shape == (320, 240, 3)  # shown enlarged ...
    mask = np.asarray(Image.open(next(p for p in done["sam_files"] if p.endswith("_sam_mask.png"))))
    assert mask.shape == (16, 12)  # ... computed and downloaded at the real size
    shown = done["sam_SAM"]
    np.testing.assert_array_equal(shown[::20, ::20][mask == 0], tiny[mask == 0])  # untouched pixels: the image


def test_sam_values_are_formatted_for_people():
    from rass.app.sam_tab import SamResult
    from rass.app.session import sam_metrics_markdown
    from rass.evaluation.visualize import format_score

    assert [format_score(v) for v in (-0.004, 0.8712, 1.3, 0.005)] == ["0.00", "0.87", "1.00", "0.01"]
    m = np.zeros((4, 4), bool)
    m[:2] = True
    res = SamResult({"SAM": m, "GleSAM": m}, {"SAM": -0.004, "GleSAM": 0.8712}, {}, {"SAM": 0.01, "GleSAM": 0.02}, 1.0)
    text = sam_metrics_markdown(res)
    assert "| confidence (the model's predicted IoU, 0-1) | 0.00 | 0.87 |" in text and "-0.004" not in text
    assert "| mask area | 50.0 % of the image | 50.0 % of the image |" in text
    assert "Agreement of the SAM and the GleSAM mask (IoU, 0-1): 1.00" in text


def test_download_folders_are_pruned_to_the_newest(tmp_path):
    d = Downloads(str(tmp_path / "dl"), keep=2)
    paths = [d.write(f"im{i}", {"mask": np.ones((3, 4), bool)})[0] for i in range(4)]
    assert [os.path.exists(p) for p in paths] == [False, False, True, True]
    assert np.asarray(Image.open(paths[-1])).max() == 255
    with pytest.raises(AppError, match="uint8 PNG"):
        d.write("big", {"labels": np.full((2, 2), 300, np.int64)})


def test_page_turns_errors_into_messages_and_builds(rass_backend, sam_backend, tmp_path):
    pytest.importorskip("gradio")
    from rass.app.page import _bind, build_page

    def user_problem():
        raise AppError("photo.png: not an image file this demo can read")

    def bug():
        raise RuntimeError("boom")

    handler = _bind({}, ["status", "clean_input"], "status", user_problem)
    status, other = handler()
    assert status == "**Error:** photo.png: not an image file this demo can read"
    assert type(other).__name__ in ("dict", "SkipUpdate") and "value" not in (other if isinstance(other, dict) else {})
    status, _ = _bind({}, ["status", "clean_input"], "status", bug)()
    assert status.startswith("**Error:** internal error (RuntimeError: boom)") and "Traceback" not in status
    page = build_page(_app(rass_backend, sam_backend, tmp_path), [])
    for name in ("upload", "degradation", "seed", "run_rass", "sam_canvas", "sam_SAM", "sam_GleSAM", "rass_files"):
        assert page.components[name].elem_id == name


def test_command_line_errors_are_one_line(tmp_path):
    import socket
    import subprocess
    import sys

    from conftest import load_script

    app = load_script("demo/app.py", "demo_app")
    with pytest.raises(SystemExit) as e:
        app.parse_args(["--opts", "MODEL.WEIGHTS"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        app.parse_args(["--port", "70000"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run([sys.executable, os.path.join(REPO, "demo", "app.py"), "--port", str(port)],
                           capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert f"error: cannot serve on 127.0.0.1:{port}" in r.stderr and "hint: choose another --port" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, os.path.join(REPO, "demo", "app.py"), "--config-file", "nope.yaml"],
                       capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 2 and "error: config file not found: nope.yaml" in r.stderr and "Traceback" not in r.stderr


def test_demo_benchmark_prints_its_table(capsys):
    from conftest import load_script

    bench = load_script("tools/benchmarks/bench_demo.py", "bench_demo")
    assert bench.main(["--skip-rass", "--repeats", "1", "--sam-config-file", TINY_GLESAM]) == 0  # (not the quickstart's)
    table = capsys.readouterr().out
    for row in ("build the SAM / GleSAM model(s)", "degrade: lqseg_3", "first click on the image (SAM + GleSAM",
                "next click on the same image (SAM + GleSAM: decoders only)"):
        assert row in table
    assert "RASS tab" not in table
