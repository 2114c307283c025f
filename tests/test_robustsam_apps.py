"""RobustSAM in the applications (tiny random models, CPU): `PromptablePredictor` (same masks as the model's own
forward, the per-image feature cache, the plain-SAM twin), demo/demo_sam.py, and the browser page's optional
third mask on the SAM / GleSAM tab."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from rass.app.inputs import Downloads
from rass.app.models import Loaded, choose_robustsam_model, choose_sam_model, load_backend
from rass.app.sam_tab import Prompts, SamBackend, robustsam_predictor
from rass.app.session import DemoApp, sam_metrics_markdown
from rass.config import setup_cfg
from rass.engine import PromptablePredictor
from rass.engine.model_build import seeded_init
from rass.evaluation.visualize import mask_iou
from tests.conftest import REPO, load_script

ROBUST = os.path.join(REPO, "configs", "lqseg", "tiny_robustsam.yaml")
GLESAM = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
TINY_SAM = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")


@pytest.fixture(scope="module")
def robust() -> PromptablePredictor:
    with seeded_init():  # the demos' default init seed: the same weights as demo_sam.py's
        return PromptablePredictor(setup_cfg(ROBUST))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
    img[20:55, 30:80] = rng.integers(150, 255, (35, 50, 3), dtype=np.uint8)  # a bright object
    return img


def _encoder_calls(predictor: PromptablePredictor) -> list:
    calls: list = []
    predictor.model.sam.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _input(image: np.ndarray, points, labels, box=None) -> dict:
    inp = {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0],
           "width": image.shape[1], "point_coords": torch.tensor([points], dtype=torch.float32),
           "point_labels": torch.tensor([labels])}
    if box is not None:
        inp["boxes"] = torch.tensor([box], dtype=torch.float32)
    return inp


# ----------------------------------------------------------------- predictor
def test_predictor_gives_robustsams_own_masks_and_encodes_each_image_once(robust, image):
    assert robust.method == "RobustSAM" and not robust.enhanced
    assert any("RANDOM" in n for n in robust.weight_notes)
    robust.clear_cache()
    calls = _encoder_calls(robust)
    prompts = [([[50.0, 35.0]], [1], None), ([[50.0, 35.0], [10.0, 5.0]], [1, 0], [28.0, 18.0, 82.0, 57.0])]
    outs = [robust(image, points=p, labels=lab, box=b, intermediates=True) for p, lab, b in prompts]
    assert len(calls) == 1  # the second prompt reused the cached (embedding, first global block) of the image
    for (p, lab, b), out in zip(prompts, outs):
        ref = robust.model([_input(image, p, lab, b)])[0]  # RobustSAM's own batched forward
        assert out["mask_logits"].shape == image.shape[:2] and out["masks"].dtype == torch.bool
        torch.testing.assert_close(out["mask_logits"], ref["mask_logits"][0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out["masks"], ref["masks"][0])
        assert float(out["iou_pred"]) == pytest.approx(float(ref["iou_pred"][0]), abs=1e-6)
        inter = out["intermediates"]
        assert set(inter) == {"z_low", "robust_logits", "iou_predictions", "chosen"}
        assert inter["robust_logits"].shape[0] == 16 and inter["iou_predictions"].shape == (4,)
    assert len(calls) == 3  # the two reference forwards
    assert not torch.allclose(outs[0]["mask_logits"], outs[1]["mask_logits"])  # the prompts matter
    other = image[::-1].copy()
    robust(other, points=[[50.0, 35.0]])
    assert len(calls) == 4  # another image: encoded anew
    with pytest.raises(ValueError, match="outside the image"):
        robust(image, points=[[500.0, 3.0]])


def test_plain_sam_twin_shares_the_cache_in_either_order_and_decodes_with_sams_decoder(image):
    with seeded_init():
        model_pred = PromptablePredictor(setup_cfg(ROBUST))
    calls = _encoder_calls(model_pred)
    plain = model_pred.plain_sam()
    assert plain.method == "SAM"
    point = [[50.0, 35.0]]
    sam_out = plain(image, points=point)  # the twin first: it fills the shared cache with RobustSAM's features
    rob_out = model_pred(image, points=point)
    assert len(calls) == 1
    ref = model_pred.model.plain_sam()([_input(image, point, [1])])[0]
    torch.testing.assert_close(sam_out["mask_logits"], ref["mask_logits"][0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(sam_out["mask_logits"], rob_out["mask_logits"])  # robust decoder != SAM's


def test_predictor_still_refuses_a_model_that_is_not_sam():
    with pytest.raises(ValueError, match="'PromptableSAM' or 'RobustSAM', got Linear"):
        PromptablePredictor(model=torch.nn.Linear(2, 2))


# ----------------------------------------------------------------- demo_sam.py
def test_demo_sam_compare_with_a_robustsam_config(robust, image, tmp_path, capsys):
    demo = load_script("demo/demo_sam.py", "rass_demo_sam_robust")
    Image.fromarray(image).save(tmp_path / "a.png")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", ROBUST, "--input", str(tmp_path / "a.png"), "--points", "50,35",
                    "--compare", "--output", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_robustsam_mask.png", "a_sam_mask.png"]
    expected = robust(image, points=[[50, 35]])["masks"].numpy()
    twin = robust.plain_sam()(image, points=[[50, 35]])["masks"].numpy()
    got = np.asarray(Image.open(out / "a_robustsam_mask.png")) > 0
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_sam_mask.png")) > 0, twin)
    assert np.asarray(Image.open(out / "a.png")).shape == (72, 2 * 96, 3)  # SAM | RobustSAM
    captured = capsys.readouterr()
    assert "RobustSAM mask" in captured.out and "IoU SAM vs RobustSAM" in captured.out
    assert "demo weights (random)" in captured.err


# ----------------------------------------------------------------- browser page
@pytest.fixture(scope="module")
def robust_loaded() -> Loaded:
    return load_backend(choose_robustsam_model(ROBUST), robustsam_predictor)


@pytest.fixture(scope="module")
def glesam_loaded() -> Loaded:
    return load_backend(choose_sam_model(GLESAM), SamBackend.from_cfg)


def test_sam_tab_runs_robustsam_as_a_third_mask(glesam_loaded, robust_loaded, image):
    backend = glesam_loaded.backend.with_extra("RobustSAM", robust_loaded.backend)
    assert list(backend.methods) == ["SAM", "GleSAM", "RobustSAM"] and backend.own_methods == ["SAM", "GleSAM"]
    prompts = Prompts().add_click(50, 35, "positive point").add_click(28, 18, "box corner") \
        .add_click(82, 57, "box corner")
    told = []
    res = backend.run(image, prompts, progress=lambda f, stage: told.append(stage))
    assert told[2] == "encoding the image for RobustSAM (its own SAM image encoder, once per image)"
    assert told[-2:] == ["decoding RobustSAM's mask", "done"]
    direct = robust_loaded.backend(image, points=prompts.points, labels=prompts.labels, box=prompts.box)
    np.testing.assert_array_equal(res.masks["RobustSAM"], direct["masks"].numpy())
    assert res.iou_pred["RobustSAM"] == pytest.approx(float(direct["iou_pred"]))
    assert set(res.pair_iou) == {"SAM vs GleSAM", "SAM vs RobustSAM", "GleSAM vs RobustSAM"}
    for pair, value in res.pair_iou.items():
        a, b = pair.split(" vs ")
        assert value == pytest.approx(mask_iou(res.masks[a], res.masks[b]))
    assert res.mutual_iou == pytest.approx(res.pair_iou["SAM vs GleSAM"])
    text = sam_metrics_markdown(res)
    assert "Agreement of the SAM and the RobustSAM mask (IoU, 0-1)" in text
    assert "Agreement of the GleSAM and the RobustSAM mask (IoU, 0-1)" in text
    assert "| | SAM | GleSAM | RobustSAM |" in text


def test_page_shows_the_robustsam_panel_its_status_and_downloads(glesam_loaded, robust_loaded, image, tmp_path):
    pytest.importorskip("gradio")
    from rass.app.page import build_page

    app = DemoApp(Loaded(choose_sam_model(GLESAM), error="not needed here"), glesam_loaded,
                  Downloads(str(tmp_path / "downloads")), robustsam=robust_loaded)
    assert app.has_robustsam
    lines = app.models_markdown().splitlines()
    assert lines[1].startswith("- **SAM and GleSAM**: ")
    assert lines[2] == ("- **RobustSAM (third mask of the SAM / GleSAM tab)**: your model (tiny_robustsam.yaml) "
                        "— but some parts have random weights, so results are not meaningful (see the details).")
    assert "RobustSAM (third mask of the SAM / GleSAM tab)" in app.models_details()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    state = app.load(str(path), "none", 0)["state"]
    out = app.click(state, 50, 35, "positive point", True)
    k = state["scale"]  # a small image is shown enlarged
    assert out["sam_RobustSAM"].shape == (k * 72, k * 96, 3) and "RobustSAM" in out["sam_status"]
    names = sorted(os.path.basename(f) for f in out["sam_files"])
    assert "scene_robustsam_mask.png" in names and "scene_robustsam_overlay.png" in names
    saved = [f for f in out["sam_files"] if f.endswith("scene_robustsam_mask.png")][0]
    clicked = out["state"]["prompts"]  # the click on the enlarged image, in the image's pixels
    assert clicked.points == [[pytest.approx((50 + 0.5) / k - 0.5), pytest.approx((35 + 0.5) / k - 0.5)]]
    direct = robust_loaded.backend(image, points=clicked.points, labels=clicked.labels)["masks"].numpy()
    np.testing.assert_array_equal(np.asarray(Image.open(saved)) > 0, direct)
    assert app.clear_prompts(out["state"])["sam_RobustSAM"] is None
    page = build_page(app, [])
    assert page.components["sam_RobustSAM"].elem_id == "sam_RobustSAM"
    # without --robustsam-config-file, or when its model cannot be built: no panel, a line saying why
    assert "sam_RobustSAM" not in build_page(DemoApp(app.rass, glesam_loaded, app.downloads), []).components
    wrong = load_backend(choose_robustsam_model(TINY_SAM), robustsam_predictor)
    assert wrong.backend is None and "needs a RobustSAM config" in wrong.error and "'PromptableSAM'" in wrong.error
    broken = DemoApp(app.rass, glesam_loaded, app.downloads, robustsam=wrong)
    assert not broken.has_robustsam and "sam_RobustSAM" not in build_page(broken, []).components
    assert "- **RobustSAM (third mask of the SAM / GleSAM tab)**: not available" in broken.models_markdown()


def test_app_robustsam_options_are_checked():
    app = load_script("demo/app.py", "rass_demo_app_robust")
    args = app.parse_args(["--robustsam-config-file", ROBUST, "--robustsam-opts", "MODEL.DEVICE", "cpu"])
    assert args.robustsam_config_file == ROBUST and args.robustsam_opts == ["MODEL.DEVICE", "cpu"]
    with pytest.raises(SystemExit):
        app.parse_args(["--robustsam-opts", "MODEL.DEVICE", "cpu"])
    with pytest.raises(SystemExit):
        app.parse_args(["--robustsam-config-file", ROBUST, "--robustsam-opts", "MODEL.DEVICE"])
