"""GleSAM / SAM evaluation end to end: `train_net.py --eval-only` on a generated LQSeg set, the same
numbers in one and in two processes (prompts are seeded per image), SAM and GleSAM on one SAM."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rass.config import setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_GLESAM = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")
TINY_SAM = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")


@pytest.fixture(scope="module")
def lqseg_root(tmp_path_factory):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = tmp_path_factory.mktemp("synthetic_lqseg")
    make_synthetic_lqseg(str(root), 0, 6, [3], 64, 96, False, None)
    return root


@pytest.fixture
def lqseg_env(lqseg_root, monkeypatch):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", str(lqseg_root))
    return lqseg_root


def _evaluate_in_process(config, out_dir):
    from detectron2.modeling import build_model

    from rass.engine import Trainer

    torch.manual_seed(0)
    cfg = setup_cfg(config, ["OUTPUT_DIR", str(out_dir)])
    model = build_model(cfg).eval()
    return cfg, model, Trainer.test(cfg, model)


def test_eval_only_in_two_processes_equals_one_process(lqseg_env, tmp_path):
    cfg, model, results = _evaluate_in_process(TINY_GLESAM, tmp_path / "one")
    assert set(results) == {"lqseg_synthetic_test_clear", "lqseg_synthetic_test_lq3"}
    for res in results.values():
        m = res["promptable"]
        assert m["num_images"] == 6
        assert all(0.0 <= m[k] <= 1.0 for k in ("IoU", "Dice", "BoundaryIoU", "PixelAcc"))
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", TINY_GLESAM,
                        "--eval-only", "--num-gpus", "2", "MODEL.WEIGHTS", str(weights),
                        "OUTPUT_DIR", str(tmp_path / "two")], capture_output=True, text=True, timeout=900, env=env,
                       cwd=REPO)
    assert r.returncode == 0, r.stderr[-4000:]
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    for name, res in results.items():
        for k in ("IoU", "Dice", "BoundaryIoU", "PixelAcc", "num_images"):
            assert two[name]["promptable"][k] == pytest.approx(res["promptable"][k], abs=1e-6), (name, k)
    log = (r.stdout + r.stderr).replace(str(tmp_path), "TMP")  # (lines that name the long test paths)
    assert "Promptable segmentation results" in log
    lines = [line for line in log.splitlines() if "Command line arguments:" not in line]  # (echoes the paths)
    assert max(len(line) for line in lines) < 300, max(lines, key=len)


def test_sam_and_glesam_are_scored_on_the_same_prompts(lqseg_env, tmp_path):
    from detectron2.modeling import build_model

    from rass.engine import Trainer

    torch.manual_seed(0)
    cfg_sam = setup_cfg(TINY_SAM, ["OUTPUT_DIR", str(tmp_path / "sam"), "DATASETS.TEST", '("lqseg_synthetic_test_lq3",)'])
    cfg_gle = setup_cfg(TINY_GLESAM, ["OUTPUT_DIR", str(tmp_path / "gle"), "DATASETS.TEST", '("lqseg_synthetic_test_lq3",)'])
    sam, gle = build_model(cfg_sam).eval(), build_model(cfg_gle).eval()
    gle.sam.load_state_dict(sam.sam.state_dict())
    loader = Trainer.build_test_loader(cfg_sam, "lqseg_synthetic_test_lq3")
    prompts_a = [(b[0]["image_id"], b[0]["point_coords"].tolist()) for b in loader]
    prompts_b = [(b[0]["image_id"], b[0]["point_coords"].tolist())
                 for b in Trainer.build_test_loader(cfg_gle, "lqseg_synthetic_test_lq3")]
    assert prompts_a == prompts_b and len(prompts_a) == 6
    a = Trainer.test(cfg_sam, sam)["lqseg_synthetic_test_lq3"]["promptable"]
    b = Trainer.test(cfg_gle, gle)["lqseg_synthetic_test_lq3"]["promptable"]
    assert a["num_images"] == b["num_images"] == 6
    per_image = json.loads((tmp_path / "sam" / "inference" / "lqseg_synthetic_test_lq3"
                            / "promptable_per_image_lqseg_synthetic_test_lq3.json").read_text())
    assert len(per_image["images"]) == 6
    assert a["IoU"] == pytest.approx(sum(r["IoU"] for r in per_image["images"]) / 6)
