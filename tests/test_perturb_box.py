"""Stable-SAM and HQ-SAM in the applications and the "perturb my box" control (tiny random models, CPU):
`PromptablePredictor` on both equals each model's own forward, the browser page's perturb action draws the
prompt-quality protocol's noisy box and gives every model's mask for it, demo/demo_sam.py's --box-noise."""
from __future__ import annotations

import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rass.app.inputs import Downloads
from rass.app.models import AppError, Loaded, choose_extra_sam_model, choose_sam_model, load_backend
from rass.app.sam_tab import UNTRAINED_PLUGINS_NOTE, Prompts, SamBackend, extra_sam_predictor, perturb_box
from rass.app.session import DemoApp, weight_status
from rass.config import setup_cfg
from rass.data.prompt_quality import noisy_box
from rass.engine import PromptablePredictor
from rass.engine.model_build import seeded_init
from rass.evaluation.visualize import mask_iou
from rass.utils.errors import UserError, UserValueError
from tests.conftest import REPO, load_script

HQ = os.path.join(REPO, "configs", "lqseg", "tiny_sam_hq.yaml")
STABLE = os.path.join(REPO, "configs", "lqseg", "tiny_stable_sam.yaml")
TINY_SAM = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")
BOX = [28.0, 18.0, 82.0, 57.0]


def _shake_plugins(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-zero Stable-SAM plugins (their init gives SAM's outputs exactly)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.plugins.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 60, (72, 96, 3), dtype=np.uint8)
    img[20:55, 30:80] = rng.integers(150, 255, (35, 50, 3), dtype=np.uint8)  # a bright object
    return img


@pytest.fixture(scope="module")
def hq() -> PromptablePredictor:
    with seeded_init():  # the demos' default init seed: the same weights as demo_sam.py's
        return PromptablePredictor(setup_cfg(HQ))


@pytest.fixture(scope="module")
def stable() -> PromptablePredictor:
    with seeded_init():
        return PromptablePredictor(setup_cfg(STABLE))


def _input(image: np.ndarray, box, points=None) -> dict:
    inp = {"image": torch.as_tensor(image.transpose(2, 0, 1).copy()), "height": image.shape[0],
           "width": image.shape[1], "boxes": torch.tensor([box], dtype=torch.float32)}
    if points is not None:
        inp["point_coords"] = torch.tensor([points], dtype=torch.float32)
        inp["point_labels"] = torch.ones(1, len(points), dtype=torch.long)
    return inp


# ----------------------------------------------------------------- predictor
def test_predictor_on_hq_sam_equals_its_own_forward_and_encodes_once(hq, image):
    assert hq.method == "HQ-SAM" and any("RANDOM" in n for n in hq.weight_notes)
    hq.clear_cache()
    calls: list = []
    handle = hq.model.sam.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        outs = [hq(image, box=BOX, intermediates=True), hq(image, points=[[50.0, 35.0]], box=[10.0, 5.0, 60.0, 40.0])]
        assert len(calls) == 1  # the second prompt reused the image's (embedding, first global block output)
        for out, (box, pts) in zip(outs, [(BOX, None), ([10.0, 5.0, 60.0, 40.0], [[50.0, 35.0]])]):
            ref = hq.model([_input(image, box, pts)])[0]  # HQ-SAM's own batched forward
            torch.testing.assert_close(out["mask_logits"], ref["mask_logits"][0], atol=1e-5, rtol=1e-5)
            assert torch.equal(out["masks"], ref["masks"][0]) and out["masks"].shape == image.shape[:2]
            assert float(out["iou_pred"]) == pytest.approx(float(ref["iou_pred"][0]), abs=1e-6)
    finally:
        handle.remove()
    assert {"early", "z_low", "low_res_logits"} <= set(outs[0]["intermediates"])
    assert not torch.allclose(outs[0]["mask_logits"], outs[1]["mask_logits"])  # the prompts matter


def test_predictor_on_stable_sam_runs_its_plugins(stable, image):
    assert stable.method == "Stable-SAM"
    plain = stable.plain_sam()
    assert plain.method == "SAM"
    untrained = stable(image, box=BOX)["mask_logits"]
    assert torch.equal(untrained, plain(image, box=BOX)["mask_logits"])  # zero offsets, routing (0, 1): SAM
    _shake_plugins(stable.model)
    try:
        out = stable(image, box=BOX, intermediates=True)
        ref = stable.model([_input(image, BOX)])[0]  # the model's own forward (plugins active)
        torch.testing.assert_close(out["mask_logits"], ref["mask_logits"][0], atol=1e-5, rtol=1e-5)
        assert torch.equal(out["masks"], ref["masks"][0])
        routing = out["intermediates"]["routing"]
        assert routing.shape == (2,) and not torch.allclose(routing, torch.tensor([0.0, 1.0]))
        sam_logits = plain(image, box=BOX)["mask_logits"]
        assert torch.equal(sam_logits, untrained)  # the twin decodes without the plugins
        assert (out["mask_logits"] - sam_logits).abs().max() > 1e-3  # the plugins act in the predictor's decode
    finally:
        stable.model.plugins.reset_parameters(torch.Generator().manual_seed(0))
    assert torch.equal(stable(image, box=BOX)["mask_logits"], untrained)


# ----------------------------------------------------------------- perturb my box
def test_perturb_box_is_the_protocols_noisy_box():
    hw = (72, 96)
    for scale, seed in ((0.2, 7), (0.5, 0), (0.05, 123)):
        expected = noisy_box(np.array(BOX, dtype=np.float32), scale, np.random.default_rng(seed), hw)
        np.testing.assert_array_equal(np.float32(perturb_box(BOX, scale, seed, hw)), expected)
    assert perturb_box(BOX, 0.0, 5, hw) == BOX  # scale 0: the box itself
    # the same seed draws the same uniforms at every scale: the centre moves proportionally to the scale
    centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
    shift_1 = centre(perturb_box(BOX, 0.1, 3, hw)) - centre(BOX)
    shift_2 = centre(perturb_box(BOX, 0.2, 3, hw)) - centre(BOX)
    np.testing.assert_allclose(shift_2, 2 * shift_1, atol=1e-3)
    assert np.abs(shift_1).max() > 0.1
    with pytest.raises(UserValueError, match="Box noise scale -0.1: expected a number >= 0"):
        perturb_box(BOX, -0.1, 0, hw)


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> DemoApp:
    sam = load_backend(choose_sam_model(TINY_SAM), SamBackend.from_cfg)
    extra = {"Stable-SAM": load_backend(choose_extra_sam_model("Stable-SAM", STABLE), extra_sam_predictor),
             "HQ-SAM": load_backend(choose_extra_sam_model("HQ-SAM", HQ), extra_sam_predictor)}
    _shake_plugins(extra["Stable-SAM"].backend.model)
    rass = Loaded(choose_sam_model(TINY_SAM), error="not needed here")
    return DemoApp(rass, sam, Downloads(str(tmp_path_factory.mktemp("downloads"))), extra_sams=extra)


def test_page_perturb_action_gives_every_models_mask_for_the_protocols_box(app, image, tmp_path):
    assert app.extra_panels == ["Stable-SAM", "HQ-SAM"]
    lines = app.models_markdown().splitlines()
    assert lines[2] == ("- **Stable-SAM (added mask of the SAM / GleSAM tab)**: your model (tiny_stable_sam.yaml) "
                        "— but some parts have random weights, so results are not meaningful (see the details) — its "
                        "Stable-SAM plugins are untrained (no plugin file), so its mask is SAM's.")
    assert lines[3].startswith("- **HQ-SAM (added mask of the SAM / GleSAM tab)**: your model (tiny_sam_hq.yaml) "
                               "— but")
    # a real SAM without a plugin file: not "random", SAM's mask
    only_plugins = Loaded(app.extra_sams["Stable-SAM"].choice,
                          backend=SimpleNamespace(weight_notes=[UNTRAINED_PLUGINS_NOTE]))
    assert weight_status("Stable-SAM", only_plugins) == ("**Stable-SAM**: your model (tiny_stable_sam.yaml) — its "
                                                         "Stable-SAM plugins are untrained (no plugin file), so its "
                                                         "mask is SAM's.")
    assert "untrained" in app.models_details() and "HQ-SAM (added mask of the SAM / GleSAM tab)" in app.models_details()
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    state = app.load(str(path), "none", 0)["state"]
    with pytest.raises(AppError, match="no box to perturb"):
        app.perturb(state, 0.2, 0)
    k = state["scale"]  # a small image is shown enlarged: clicks on corner pixels' centres map back exactly
    corner = lambda v: (v + 0.5) * k - 0.5  # noqa: E731
    state = app.click(state, corner(BOX[0]), corner(BOX[1]), "box corner", False)["state"]
    state = app.click(state, corner(BOX[2]), corner(BOX[3]), "box corner", False)["state"]
    assert state["prompts"].box == pytest.approx(BOX)
    told: list = []
    out = app.perturb(state, 0.2, 7, progress=lambda f, s: told.append(f))
    assert told[-1] == 1.0 and told == sorted(told)
    noisy = noisy_box(np.array(BOX, dtype=np.float32), 0.2, np.random.default_rng(7), image.shape[:2])
    assert ", ".join(f"{v:.0f}" for v in noisy) in out["sam_perturb"] and "seed 7" in out["sam_perturb"]
    files = {os.path.basename(f): f for f in out["sam_files"]}
    backend: SamBackend = app.sam.backend
    assert list(backend.methods) == ["SAM", "Stable-SAM", "HQ-SAM"]
    for name, key in (("SAM", "sam"), ("Stable-SAM", "stable_sam"), ("HQ-SAM", "hq_sam")):
        predictor = backend.methods[name]
        expected = predictor(image, box=[float(v) for v in noisy])["masks"].numpy()
        own = predictor(image, box=BOX)["masks"].numpy()
        saved = np.asarray(Image.open(files[f"scene_{key}_perturbed_mask.png"])) > 0
        np.testing.assert_array_equal(saved, expected)
        assert out[f"sam_{name}"].shape == (k * 72, k * 96, 3)
        assert _stability(out["sam_perturb"], list(backend.methods), name) == pytest.approx(mask_iou(expected, own),
                                                                                          abs=5e-3)
    assert state["prompts"].box == pytest.approx(BOX)  # the user's box stays for the next draw
    # both boxes drawn on the click canvas: the user's (blue) and the noisy one (orange)
    canvas = out["sam_canvas"]
    assert ((canvas == (255, 150, 0)).all(-1)).any() and ((canvas == (40, 90, 255)).all(-1)).any()
    res = backend.perturb(image, state["prompts"], 0.0, 7)
    assert res.noisy == BOX and all(v == 1.0 for v in res.stability.values())
    with pytest.raises(UserValueError, match="Box noise scale -0.1"):
        app.perturb(state, -0.1, 0)


def _stability(markdown: str, methods, name: str) -> float:
    """The one-draw stability of `name` in the perturb table."""
    row = next(line for line in markdown.splitlines() if line.startswith("| IoU with its own mask"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    return float(cells[methods.index(name)])


def test_page_has_the_panels_and_the_perturb_control(app):
    pytest.importorskip("gradio")
    from rass.app.page import build_page

    page = build_page(app, [])
    c = page.components
    for name in ("sam_SAM", "sam_Stable-SAM", "sam_HQ-SAM", "box_noise", "box_noise_seed", "perturb_box",
                 "sam_perturb"):
        assert c[name].elem_id == name
    assert (c["box_noise"].minimum, c["box_noise"].maximum, c["box_noise"].value) == (0.0, 0.5, 0.2)
    assert "sam_RobustSAM" not in c
    # the button's handler: the page's state, the slider and the seed in; the action's values out, errors as text
    fns = page.fns.values() if isinstance(page.fns, dict) else page.fns
    fn = next(f for f in fns if c["box_noise"] in f.inputs)  # the only event that reads the slider
    assert fn.inputs == [c["state"], c["box_noise"], c["box_noise_seed"]]
    names = [next(k for k, v in c.items() if v is o) for o in fn.outputs]
    assert {"sam_Stable-SAM", "sam_HQ-SAM", "sam_perturb", "sam_canvas", "sam_status"} <= set(names)
    values = fn.fn(None, 0.2, 7, progress=lambda *a, **k: None)
    assert values[names.index("sam_status")] == "**Error:** no image yet: upload one or pick an example"


def test_app_extra_sam_flags_are_checked():
    demo = load_script("demo/app.py", "rass_demo_app_perturb")
    args = demo.parse_args(["--extra-sam-config", f"Stable-SAM={STABLE}", f"HQ-SAM={HQ}",
                            "--extra-sam-opts", "HQ-SAM", "MODEL.DEVICE", "cpu"])
    assert args.extra_sams == {"Stable-SAM": (STABLE, []), "HQ-SAM": (HQ, ["MODEL.DEVICE", "cpu"])}
    for bad, why in ((["--extra-sam-config", "Stable SAM"], "expected NAME=CONFIG"),
                     (["--extra-sam-config", f"GleSAM={STABLE}"], "already a mask of the SAM tab"),
                     (["--extra-sam-config", f"A={STABLE}", f"A={HQ}"], "given twice"),
                     (["--extra-sam-config", f"A={STABLE}", "--extra-sam-opts", "B", "K", "V"],
                      "no --extra-sam-config B"),
                     (["--extra-sam-config", f"A={STABLE}", "--extra-sam-opts", "A", "K"], "KEY VALUE pairs")):
        with pytest.raises(ValueError, match=why):
            demo.parse_extra_sams(bad[1:bad.index("--extra-sam-opts")] if "--extra-sam-opts" in bad else bad[1:],
                                  [bad[bad.index("--extra-sam-opts") + 1:]] if "--extra-sam-opts" in bad else [])
        with pytest.raises(SystemExit):
            demo.parse_args(bad)


# ----------------------------------------------------------------- demo_sam.py
def test_demo_sam_box_noise_uses_the_protocols_box(hq, image, tmp_path, capsys):
    demo = load_script("demo/demo_sam.py", "rass_demo_sam_perturb")
    Image.fromarray(image).save(tmp_path / "a.png")
    out = tmp_path / "out"
    rc = demo.main(["--config-file", HQ, "--input", str(tmp_path / "a.png"), "--box", "28,18,82,57",
                    "--box-noise", "0.3", "--box-noise-seed", "5", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    m = re.search(r"box 28\.00,18\.00,82\.00,57\.00 perturbed \(noise scale 0\.3, seed 5\) to ([0-9.,]+)", printed)
    assert m, printed
    expected = noisy_box(np.array(BOX, dtype=np.float32), 0.3, np.random.default_rng(5), image.shape[:2])
    np.testing.assert_allclose([float(v) for v in m.group(1).split(",")], expected, atol=0.006)
    assert "HQ-SAM mask" in printed
    mask = np.asarray(Image.open(out / "a_mask.png")) > 0
    np.testing.assert_array_equal(mask, hq(image, box=[float(v) for v in expected])["masks"].numpy())


def test_demo_sam_compares_stable_sam_and_refuses_bad_box_noise(image, tmp_path, capsys):
    demo = load_script("demo/demo_sam.py", "rass_demo_sam_perturb_errors")
    Image.fromarray(image).save(tmp_path / "a.png")
    base = ["--input", str(tmp_path / "a.png"), "--box", "28,18,82,57"]
    with pytest.raises(UserValueError) as err:
        demo.main(["--config-file", STABLE, *base, "--box-noise", "-0.2"])
    assert str(err.value).startswith("--box-noise -0.2: expected a noise scale >= 0") and "\n" not in str(err.value)
    with pytest.raises(UserError, match="--compare: HQ-SAM has no plain-SAM twin"):
        demo.main(["--config-file", HQ, *base, "--compare"])
    out = tmp_path / "out"
    assert demo.main(["--config-file", STABLE, *base, "--compare", "--output", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_sam_mask.png", "a_stable_sam_mask.png"]
    assert "IoU SAM vs Stable-SAM" in capsys.readouterr().out
    # a prompt without a box cannot be perturbed: that image fails with a message
    assert demo.main(["--config-file", STABLE, "--input", str(tmp_path / "a.png"), "--points", "50,35",
                      "--box-noise", "0.1"]) == 1
    assert "--box-noise perturbs a box, but the prompt of" in capsys.readouterr().err


def test_extra_masks_refuse_a_config_that_is_not_promptable(app, image):
    rass_cfg = setup_cfg(os.path.join(REPO, "configs", "quickstart", "tiny_rass.yaml"))
    with pytest.raises(AppError, match="an added SAM-tab mask needs a promptable config .* got 'RASSMaskFormer'"):
        extra_sam_predictor(rass_cfg)
    with pytest.raises(AppError, match="no box to perturb"):
        app.sam.backend.perturb(image, Prompts(points=[[50.0, 35.0]], labels=[1]), 0.2, 0)
