"""MGD-SAM2 in the applications (tiny random models, a generated SOD set, CPU): tools/eval_robustness.py with
MGD-SAM2 next to plain SAM2 given the GT box, demo/demo_mgd.py, and the browser page's MGD-SAM2 tab."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rass.config import setup_cfg
from tests.conftest import REPO, load_script

MGD_CFG = os.path.join(REPO, "configs", "dis5k", "tiny_mgd_sam2.yaml")
SAM2_CFG = os.path.join(REPO, "configs", "lqseg", "tiny_sam2.yaml")
NO_TTA = ["MODEL.MGD_SAM2.TTA", "False"]  # one pass instead of six: the tests are about the plumbing
SOD_REPORT = ("maxF", "wF", "S", "meanE", "MAE")


@pytest.fixture(autouse=True)
def _own_log_handlers():
    """The tools' `setup_logger` adds handlers on the captured stdout; drop them after each test."""
    loggers = [logging.getLogger(n) for n in ("rass", "detectron2")]
    before = [list(lg.handlers) for lg in loggers]
    yield
    for lg, keep in zip(loggers, before):
        for h in [h for h in lg.handlers if h not in keep]:
            lg.removeHandler(h)
            h.close()


@pytest.fixture(scope="module")
def sod_root(tmp_path_factory):
    """Two generated SOD test images of different (non-square) sizes."""
    root = str(tmp_path_factory.mktemp("synthetic_sod"))
    tool = load_script("tools/make_synthetic_sod.py", "make_synthetic_sod")
    tool.make_synthetic_sod(root, seed=5, num_train=0, num_test=2, min_size=24, max_size=56)
    return root


@pytest.fixture
def sod_env(sod_root, monkeypatch):
    monkeypatch.setenv("RASS_SOD_SYNTHETIC_ROOT", sod_root)
    return sod_root


# ----------------------------------------------------------------------------- robustness tool
def test_promptable_model_on_a_sod_set_gets_the_gt_box(sod_env):
    """Plain SAM2 on a SOD set: the promptable mapper with the mask's bounding box; MGD-SAM2: the SOD mapper."""
    from detectron2.data import DatasetCatalog

    from rass.engine import Trainer
    from rass.engine.trainer import is_promptable_model

    sam2_cfg, mgd_cfg = setup_cfg(SAM2_CFG), setup_cfg(MGD_CFG, NO_TTA)
    assert is_promptable_model(sam2_cfg) and not is_promptable_model(mgd_cfg)
    d = DatasetCatalog.get("sod_synthetic_test")[0]
    mask = np.asarray(Image.open(d["mask_file"])) > 128
    ys, xs = np.nonzero(mask)
    side = sam2_cfg.INPUT.PROMPT.IMAGE_SIZE  # the promptable mapper's image frame
    sx, sy = side / mask.shape[1], side / mask.shape[0]
    batch = next(iter(Trainer.build_test_loader(sam2_cfg, "sod_synthetic_test")))[0]
    assert "point_coords" not in batch and tuple(batch["boxes"].shape) == (1, 4)
    np.testing.assert_allclose(batch["boxes"][0].numpy(), [xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx,
                                                           (ys.max() + 1) * sy], atol=1.01 * max(sx, sy))
    assert tuple(batch["gt_mask"].shape) == mask.shape
    mgd = next(iter(Trainer.build_test_loader(mgd_cfg, "sod_synthetic_test")))[0]
    assert "boxes" not in mgd and tuple(mgd["image"].shape) == (3, 128, 128)


def test_robustness_mgd_sam2_vs_sam2_with_box(sod_env, tmp_path, capsys):
    tool = load_script("tools/eval_robustness.py", "eval_robustness")
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = tool.main(["--config-file", MGD_CFG, "--compare-config", SAM2_CFG, "--dataset", "sod_synthetic_test",
                    "--levels", "clean,lqseg_3", "--cache-dir", str(cache), "--output", str(out), "--no-progress",
                    "--opts", *NO_TTA])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "robustness.json").read_text())
    assert report["metrics"] == list(SOD_REPORT) and report["compared"] == ["SAM2"]
    assert report["run"]["model"] == "MGD-SAM2"
    rows = report["levels"]
    assert list(rows) == ["clean", "lqseg_3"]
    for level, row in rows.items():
        sam2 = row["compare"]["SAM2"]
        assert row["images"] == 2
        assert all(0.0 <= row[k] <= 1.0 and 0.0 <= sam2[k] <= 1.0 for k in SOD_REPORT)
        assert sam2["gain"]["maxF"] == pytest.approx(row["maxF"] - sam2["maxF"])
    assert rows["lqseg_3"]["drop"]["S"] == pytest.approx(rows["clean"]["S"] - rows["lqseg_3"]["S"])
    # each model's numbers are those of its own evaluation files (SAM2's under <output>/SAM2/)
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["sod_synthetic_test"]["sod"]["wF"] == pytest.approx(rows["clean"]["wF"])
    sam2_eval = json.loads((out / "SAM2" / "eval_results.json").read_text())
    assert sam2_eval["sod_synthetic_test__lqseg_3"]["sod"]["MAE"] == pytest.approx(
        rows["lqseg_3"]["compare"]["SAM2"]["MAE"])
    assert rows["clean"]["compare"]["SAM2"]["maxF"] != pytest.approx(rows["clean"]["maxF"])  # two different models
    # the degraded copy keeps the image + mask layout, masks unchanged
    copy = cache / "sod_synthetic_test" / "lqseg_3_seed0"
    assert len(os.listdir(copy / "images")) == len(os.listdir(copy / "masks")) == 2
    md = (out / "robustness.md").read_text()
    assert "| SAM2 maxF | SAM2 wF | MGD-SAM2 maxF | MGD-SAM2 wF | gain maxF vs SAM2 | gain wF vs SAM2 |" in md
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_robustness_sam2_alone_on_a_sod_set(sod_env, tmp_path, capsys):
    """Plain SAM2 as the main model on a SOD set: SOD metrics from the box prompts, one row per level."""
    tool = load_script("tools/eval_robustness.py", "eval_robustness")
    out = tmp_path / "sam2"
    rc = tool.main(["--config-file", SAM2_CFG, "--dataset", "sod_synthetic_test", "--levels", "clean",
                    "--output", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "robustness.json").read_text())
    assert report["metrics"] == list(SOD_REPORT) and list(report["levels"]) == ["clean"]
    per_image = json.loads((out / "inference" / "sod_synthetic_test" / "sod_sod_synthetic_test.json").read_text())
    assert [r["image_id"] for r in per_image["images"]] == ["sod_test_00000", "sod_test_00001"]
    assert report["levels"]["clean"]["MAE"] == pytest.approx(np.mean([r["MAE"] for r in per_image["images"]]))


# ----------------------------------------------------------------- shared tiny MGD-SAM2 (+ SAM2) back end
@pytest.fixture(scope="module")
def mgd_backend():
    """The browser page's default MGD-SAM2 tab: tiny MGD-SAM2 and tiny SAM2, random weights (seeded), one pass."""
    from rass.app.mgd_tab import MgdSegmenter
    from rass.app.models import choose_mgd_model, load_backend

    loaded = load_backend(choose_mgd_model(None), MgdSegmenter.from_cfg)
    assert loaded.error is None, loaded.error
    return loaded


def _image(h, w, seed):
    from rass.data.synthetic import render_scene

    side = max(16, h, w)
    image, _ = render_scene(seed, min_size=side, max_size=side)
    return np.ascontiguousarray(image[:h, :w])


def test_segmenter_depends_on_its_input_and_keeps_any_size(mgd_backend):
    seg = mgd_backend.backend
    assert seg.methods == ["MGD-SAM2", "SAM2"]
    a, b = _image(30, 47, 1), _image(30, 47, 2)
    with torch.no_grad():
        la = seg.mgd([{"image": torch.from_numpy(a.transpose(2, 0, 1).copy()), "height": 30, "width": 47}])[0]
        lb = seg.mgd([{"image": torch.from_numpy(b.transpose(2, 0, 1).copy()), "height": 30, "width": 47}])[0]
    assert tuple(la["mask_logits"].shape) == (1, 30, 47)
    assert not torch.allclose(la["mask_logits"], lb["mask_logits"])  # the random model still reads its input
    np.testing.assert_array_equal(seg.mask(a), (la["mask_logits"][0] > 0).numpy())
    for h, w in ((1, 1), (9, 70)):  # tiny and elongated images: masks at their own size
        res = seg.run(_image(h, w, 3), box=[0, 0, w, h])
        assert res.masks["MGD-SAM2"].shape == res.masks["SAM2"].shape == (h, w)
    from rass.utils.errors import UserValueError

    with pytest.raises(UserValueError, match=r"the SAM2 box: box 0 \(10, 5, 60, 20\) is not inside the image of 30x47"):
        seg.box_mask(a, [10, 5, 60, 20])


# ----------------------------------------------------------------- command-line demo
def test_demo_writes_masks_at_the_inputs_size(mgd_backend, tmp_path, capsys):
    demo = load_script("demo/demo_mgd.py", "demo_mgd")
    image = _image(21, 38, 4)  # non-square, small
    Image.fromarray(image).save(tmp_path / "thing.png")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", MGD_CFG, "--input", str(tmp_path / "thing.png"), "--output", str(out),
                    "--box", "2,3,30,18", "--opts", *NO_TTA])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert "thing.png (38x21): MGD-SAM2 mask" in printed.out and "IoU MGD-SAM2 vs SAM2" in printed.out
    assert "random weights" in printed.err
    assert sorted(os.listdir(out)) == ["thing.png", "thing_mask.png", "thing_sam2_mask.png"]
    mask = np.asarray(Image.open(out / "thing_mask.png"))
    assert mask.shape == (21, 38) and set(np.unique(mask)) <= {0, 255}
    seg = mgd_backend.backend  # the same config, opts and init seed as the demo's model
    np.testing.assert_array_equal(mask > 0, seg.mask(image))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "thing_sam2_mask.png")) > 0,
                                  seg.box_mask(image, [2, 3, 30, 18])[0])

    # degraded first (the page's engine and seed); an unreadable input and a box outside an image are named,
    # the other inputs still done, exit code 1
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.fromarray(_image(16, 16, 7)).save(tmp_path / "small.png")
    out2 = tmp_path / "out2"
    rc = demo.main(["--config-file", MGD_CFG, "--input", str(tmp_path / "thing.png"), str(tmp_path / "broken.png"),
                    str(tmp_path / "small.png"), "--output", str(out2), "--degrade", "lqseg_2", "--degrade-seed", "3",
                    "--box", "2,3,30,18", "--opts", *NO_TTA])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.png" in err
    assert "small.png: the SAM2 box: box 0 (2, 3, 30, 18) is not inside the image of 16x16" in err
    assert not (out2 / "small_mask.png").exists()
    from rass.app.inputs import Degrader

    degraded = Degrader()(image, "lqseg_2", 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out2 / "thing_degraded.png")), degraded)
    np.testing.assert_array_equal(np.asarray(Image.open(out2 / "thing_mask.png")) > 0, seg.mask(degraded))


def test_demo_argument_errors_are_one_line(tmp_path, capsys):
    from rass.utils.cli import report_user_error

    demo = load_script("demo/demo_mgd.py", "demo_mgd")
    Image.fromarray(_image(8, 8, 1)).save(tmp_path / "a.png")
    for args, expected in ((["--box", "1,2,3"], "--box '1,2,3': expected 4 comma-separated numbers"),
                           ([], "--input is required")):
        with pytest.raises(Exception) as info:
            demo.main(["--config-file", MGD_CFG, *(["--input", str(tmp_path / "a.png")] if args else []), *args])
        assert report_user_error(info.value) == 2
        assert expected in capsys.readouterr().err
    with pytest.raises(Exception, match="MGDSAM2") as info:  # a SAM2 config given as the MGD-SAM2 one
        demo.main(["--config-file", SAM2_CFG, "--input", str(tmp_path / "a.png")])
    assert report_user_error(info.value) == 2


# ----------------------------------------------------------------- browser page
def test_page_mgd_tab_masks_at_the_uploads_size_and_sam2_box(mgd_backend, tmp_path):
    from rass.app.inputs import Downloads
    from rass.app.models import Loaded, ModelChoice
    from rass.app.session import DemoApp
    from rass.evaluation.visualize import enlarge

    none = Loaded(ModelChoice("x.yaml", [], "not built in this test"), error="not built in this test")
    app = DemoApp(none, none, Downloads(str(tmp_path / "downloads")), mgd=mgd_backend)
    image = _image(26, 40, 6)
    Image.fromarray(image).save(tmp_path / "photo.png")
    loaded = app.load(str(tmp_path / "photo.png"), "lqseg_1", 1)
    state, k = loaded["state"], loaded["state"]["scale"]
    assert loaded["mgd_canvas"].shape == (26 * k, 40 * k, 3) and "No box" in loaded["mgd_box"]
    seg = mgd_backend.backend

    out = app.mgd_segment(state)
    assert out["mgd_MGD"].shape == (26 * k, 40 * k, 3) and out["mgd_SAM2"] is None
    assert "Draw a box" in out["mgd_metrics"] and "26" in out["mgd_status"] and "40" in out["mgd_status"]
    files = {os.path.basename(p): p for p in out["mgd_files"]}
    assert sorted(files) == ["photo_mgd_sam2_mask.png", "photo_mgd_sam2_overlay.png"]
    mask = np.asarray(Image.open(files["photo_mgd_sam2_mask.png"]))
    assert mask.shape == (26, 40) and set(np.unique(mask)) <= {0, 255}
    np.testing.assert_array_equal(mask > 0, seg.mask(state["degraded"]))

    half = app.mgd_click(state, 2 * k, 3 * k)
    assert "mgd_SAM2" not in half and "click the opposite corner" in half["mgd_box"]
    done = app.mgd_click(half["state"], 30 * k, 20 * k)
    box = done["state"]["mgd_box"].box
    assert box == pytest.approx([(v * k + 0.5) / k - 0.5 for v in (2, 3, 30, 20)])  # the shown pixels' centres
    assert done["mgd_SAM2"].shape == (26 * k, 40 * k, 3) and "Agreement of the two masks" in done["mgd_metrics"]
    files = {os.path.basename(p): p for p in done["mgd_files"]}
    assert "photo_sam2_mask.png" in files
    sam2_mask = np.asarray(Image.open(files["photo_sam2_mask.png"]))
    assert sam2_mask.shape == (26, 40)
    np.testing.assert_array_equal(sam2_mask > 0, seg.box_mask(state["degraded"], box)[0])
    np.testing.assert_array_equal(done["mgd_MGD"], enlarge(seg.run(state["degraded"]).overlays["MGD-SAM2"], k))
    cleared = app.mgd_clear(done["state"])
    assert cleared["state"]["mgd_box"].box is None and cleared["mgd_SAM2"] is None

    # plain-language status: random weights say so, the config jargon is folded away in the details
    text, details = app.models_markdown(), app.models_details()
    assert "- **MGD-SAM2 and SAM2**: demo weights (random) — results are not meaningful." in text
    assert "MODEL." not in text
    assert "MODEL.MGD_SAM2.SAM2_INIT is empty" in details and "SAM2 (the box comparison)" in details


def test_page_builds_the_mgd_tab_and_refuses_a_wrong_config(mgd_backend, tmp_path):
    pytest.importorskip("gradio")
    from rass.app.inputs import Downloads
    from rass.app.mgd_tab import MgdSegmenter
    from rass.app.models import Loaded, ModelChoice, choose_mgd_model, load_backend
    from rass.app.page import build_page
    from rass.app.session import DemoApp

    none = Loaded(ModelChoice("x.yaml", [], "not built"), error="not built")
    page = build_page(DemoApp(none, none, Downloads(str(tmp_path / "d")), mgd=mgd_backend), [])
    for name in ("mgd_canvas", "mgd_MGD", "mgd_SAM2", "mgd_files", "mgd_segment", "mgd_clear", "mgd_status"):
        assert page.components[name].elem_id == name
    assert "mgd_canvas" not in build_page(DemoApp(none, none, Downloads(str(tmp_path / "e"))), []).components
    wrong = load_backend(choose_mgd_model(SAM2_CFG), MgdSegmenter.from_cfg)
    assert wrong.backend is None and "MGDSAM2" in wrong.error and "PromptableSAM2" in wrong.error
    app = DemoApp(none, none, Downloads(str(tmp_path / "f")), mgd=wrong)
    assert "**MGD-SAM2**: not available" in app.models_markdown()
