"""demo/demo_sam.py and PromptablePredictor: prompts from the command line and a JSON file, overlays
and mask PNGs, --compare, and errors reported before the model is built (tiny SAM/GleSAM, CPU)."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from rass.config import setup_cfg
from rass.engine import PromptablePredictor
from tests.conftest import REPO, load_script

DEMO = os.path.join(REPO, "demo", "demo_sam.py")
CFG = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")


def _load_demo():
    return load_script("demo/demo_sam.py", "rass_demo_sam")


demo = _load_demo()


def _images(folder):
    a = np.zeros((120, 160, 3), np.uint8)
    a[30:90, 40:120] = 200
    Image.fromarray(a).save(folder / "a.png")
    Image.fromarray(a[:100]).save(folder / "b.png")
    return a


def test_predictor_masks_at_the_image_size_and_prompt_errors():
    predictor = PromptablePredictor(setup_cfg(CFG))
    assert predictor.enhanced
    image = np.zeros((90, 130, 3), np.uint8)
    out = predictor(image, points=[[10, 20], [60, 40]], labels=[1, 0])
    assert out["masks"].shape == (90, 130) and out["masks"].dtype.is_floating_point is False
    assert predictor(image, box=[5, 5, 100, 80])["mask_logits"].shape == (90, 130)
    with pytest.raises(ValueError, match=r"\(200, 20\) is outside the image of 90x130"):
        predictor(image, points=[[200, 20]])
    with pytest.raises(ValueError, match="2 points but 1 labels"):
        predictor(image, points=[[1, 2], [3, 4]], labels=[1])
    with pytest.raises(ValueError, match="at least one point or a box"):
        predictor(image)


def test_compare_writes_side_by_side_overlays_and_both_masks(tmp_path, capsys):
    _images(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps({"b": {"points": [[50, 50]], "box": [30, 20, 130, 90]}}))
    out = tmp_path / "out"
    rc = demo.main(["--config-file", CFG, "--input", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                    "--points", "60,60", "100,70,0", "--prompts", str(tmp_path / "p.json"), "--compare",
                    "--output", str(out)])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a.png", "a_glesam_mask.png", "a_sam_mask.png", "b.png", "b_glesam_mask.png",
                                       "b_sam_mask.png"]
    assert np.asarray(Image.open(out / "a.png")).shape == (120, 320, 3)  # SAM | GleSAM
    mask = np.asarray(Image.open(out / "b_glesam_mask.png"))
    assert mask.shape == (100, 160) and set(np.unique(mask)) <= {0, 255}
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and "IoU SAM vs GleSAM" in lines[0]
    assert re.search(r"GleSAM mask [\d.]+% of the image, confidence \(predicted IoU\) (0\.\d\d|1\.00); SAM [\d.]+%, "
                     r"confidence (0\.\d\d|1\.00); IoU SAM vs GleSAM (0\.\d\d|1\.00)$", lines[0]), lines[0]
    assert "demo weights (random): the masks are not meaningful" in captured.err  # the tiny random model


def test_the_quickstart_config_runs_the_quickstarts_trained_model(tmp_path, monkeypatch, capsys):
    from detectron2.modeling import build_model

    import rass.app.models as models
    from rass.checkpoint import RASSCheckpointer

    _images(tmp_path)
    config = os.path.join(REPO, models.QUICKSTART_PROMPTABLE_CONFIG)
    model = build_model(setup_cfg(config))
    with torch.no_grad():  # a "trained" model: the mask decoder's output differs from the seeded random one
        for p in model.sam.mask_decoder.parameters():
            p.add_(0.05)
    RASSCheckpointer(model, str(tmp_path)).save("model_final")  # as train_net writes model_final.pth
    weights = str(tmp_path / "model_final.pth")
    monkeypatch.setattr(models, "QUICKSTART_PROMPTABLE_WEIGHTS", weights)  # absolute: project_path keeps it
    rc = demo.main(["--config-file", config, "--input", str(tmp_path / "a.png"), "--points", "80,60",
                    "--output", str(tmp_path / "out")])
    assert rc == 0
    err = capsys.readouterr().err
    assert f"note: the quickstart's trained tiny promptable model ({weights})" in err and "random" not in err
    expected = PromptablePredictor(setup_cfg(config, ["MODEL.WEIGHTS", weights]))(
        np.asarray(Image.open(tmp_path / "a.png")), points=[[80, 60]])["masks"].numpy()
    written = np.asarray(Image.open(tmp_path / "out" / "a_mask.png")) > 0
    np.testing.assert_array_equal(written, expected)
    from rass.engine.model_build import DEFAULT_INIT_SEED, seeded_init

    with seeded_init(DEFAULT_INIT_SEED):  # what the config alone (random weights) gives: another mask
        random = PromptablePredictor(setup_cfg(config))(np.asarray(Image.open(tmp_path / "a.png")), points=[[80, 60]])
    assert not np.array_equal(written, random["masks"].numpy())


def test_prompt_parsing_and_output_errors_before_the_model(tmp_path, monkeypatch, capsys):
    _images(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr("rass.engine.PromptablePredictor", no_model)
    cases = [
        (["--points", "60"], "expected 2 or 3 comma-separated numbers"),
        (["--points", "60,60,2"], r"label must be 1 \(positive\) or 0"),
        (["--box", "1,2,3"], "expected 4"),
        (["--points", "60,60", "--output", str(tmp_path / "x.webp")], "not .webp"),
        (["--points", "60,60", "--output", str(tmp_path / "a.png" / "sub")], "is a file"),
        ([], "no prompt for 1 image"),
    ]
    for extra, message in cases:
        with pytest.raises(demo.UserError, match=message):
            demo.main(["--config-file", CFG, "--input", str(tmp_path / "a.png"), *extra])
    (tmp_path / "bad.json").write_text('{"a": {"points": [[1, 2, 3]]}}')
    with pytest.raises(demo.UserError, match="list of \\[x, y\\] pairs"):
        demo.main(["--config-file", CFG, "--input", str(tmp_path / "a.png"), "--prompts", str(tmp_path / "bad.json")])
