"""SAM vs GleSAM across degradation levels with tools/eval_robustness.py (tiny models, generated
LQSeg-layout data, CPU): pre-built level sets and copies made with the lqseg presets."""
from __future__ import annotations

import json
import os

import pytest
import torch

from rass.config import setup_cfg
from tests.conftest import REPO, load_script

CFG = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
METRICS = ("IoU", "Dice", "BoundaryIoU", "PixelAcc")


def _tool():
    return load_script("tools/eval_robustness.py", "eval_robustness")


@pytest.fixture(scope="module")
def lqseg_root(tmp_path_factory):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = tmp_path_factory.mktemp("synthetic_lqseg")
    make_synthetic_lqseg(str(root), 0, 4, [3], 64, 96, False, None)
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Seeded random tiny GleSAM weights (the test is about the machinery, not the accuracy)."""
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer

    out = tmp_path_factory.mktemp("glesam")
    torch.manual_seed(0)
    RASSCheckpointer(Trainer.build_model(setup_cfg(CFG)), save_dir=str(out)).save("model_random")
    return str(out / "model_random.pth")


def test_sam_vs_glesam_on_prebuilt_sets_and_on_copies(lqseg_root, weights, tmp_path, monkeypatch):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", str(lqseg_root))
    tool = _tool()
    out = tmp_path / "prebuilt"
    rc = tool.main(["--config-file", CFG, "--weights", weights, "--compare-sam", "--output", str(out),
                    "--datasets", "lqseg_synthetic_test_clear", "lqseg_synthetic_test_lq3"])
    assert rc == 0
    report = json.loads((out / "robustness.json").read_text())
    assert report["metrics"] == list(METRICS) and report["compared"] == ["SAM"]
    rows = report["levels"]
    assert list(rows) == ["lqseg_synthetic_test_clear", "lqseg_synthetic_test_lq3"]
    for row in rows.values():
        sam = row["compare"]["SAM"]
        assert row["images"] == 4 and all(0.0 <= row[k] <= 1.0 and 0.0 <= sam[k] <= 1.0 for k in METRICS)
        assert row["compare"]["SAM"]["gain"]["IoU"] == pytest.approx(row["IoU"] - sam["IoU"])
    # the main model's numbers are those of its own evaluation files; SAM's are in <output>/SAM/
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["lqseg_synthetic_test_lq3"]["promptable"]["IoU"] == pytest.approx(rows["lqseg_synthetic_test_lq3"]["IoU"])
    sam_eval = json.loads((out / "SAM" / "eval_results.json").read_text())
    assert sam_eval["lqseg_synthetic_test_lq3"]["promptable"]["Dice"] == pytest.approx(
        rows["lqseg_synthetic_test_lq3"]["compare"]["SAM"]["Dice"])
    md = (out / "robustness.md").read_text()
    assert "| SAM IoU | SAM Dice | GleSAM IoU | GleSAM Dice | gain IoU vs SAM | gain Dice vs SAM |" in md.replace(
        "level | dataset | images | ", "")
    assert (out / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # copies of the clean set made here with the lqseg_3 preset (image + mask layout, masks unchanged)
    out2 = tmp_path / "copies"
    rc = tool.main(["--config-file", CFG, "--weights", weights, "--output", str(out2), "--cache-dir",
                    str(tmp_path / "cache"), "--dataset", "lqseg_synthetic_test_clear", "--levels", "clean,lqseg_3",
                    "--no-progress"])
    assert rc == 0
    report2 = json.loads((out2 / "robustness.json").read_text())
    assert list(report2["levels"]) == ["clean", "lqseg_3"] and report2["compared"] == []
    assert report2["levels"]["clean"]["IoU"] == pytest.approx(rows["lqseg_synthetic_test_clear"]["IoU"])
    copy = tmp_path / "cache" / "lqseg_synthetic_test_clear" / "lqseg_3_seed0"
    assert sorted(os.listdir(copy / "images")) and sorted(os.listdir(copy / "masks"))
    assert len(os.listdir(copy / "images")) == len(os.listdir(copy / "masks")) == 4
    assert report2["levels"]["lqseg_3"]["drop"]["IoU"] == pytest.approx(
        report2["levels"]["clean"]["IoU"] - report2["levels"]["lqseg_3"]["IoU"])


def test_compare_sam_needs_a_glesam_model(lqseg_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", str(lqseg_root))
    from rass.engine.robustness import RobustnessError, plain_sam_of
    from rass.engine import Trainer

    sam_only = Trainer.build_model(setup_cfg(os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")))
    with pytest.raises(RobustnessError, match="needs a GleSAM model"):
        plain_sam_of(sam_only)
