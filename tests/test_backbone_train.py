"""The tiny RASS configuration trains (loss goes down, with online degradation and clean-image
prompts) and evaluates with sliding windows, on generated ADE20K-format data."""
from __future__ import annotations

import json
import math
import os

import torch

import rass.modeling.backbone  # noqa: F401
import rass.modeling.meta_arch.rass_model  # noqa: F401
from rass.config import setup_cfg
from tests.conftest import REPO

CFG = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.001", "SOLVER.WARMUP_ITERS", "0", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"]


def test_tiny_rass_trains_and_evaluates(synthetic_env, tmp_path):
    from rass.engine import Trainer

    cfg = setup_cfg(CFG, FAST + ["SOLVER.MAX_ITER", "10", "OUTPUT_DIR", str(tmp_path),
                                 "INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.DEVICE", "model",
                                 "INPUT.DEGRADATION.SEED", "0", "MODEL.TAGGER.PROMPT", "a photo"])
    trainer = Trainer(cfg)
    model = trainer.model
    assert model.degradation is not None and model.backbone.sliding_window_enabled
    seen = []
    model.backbone.tagger.register_forward_hook(lambda m, i, o: seen.append(float(i[0].max())))
    trainer.resume_or_load(resume=False)
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert seen and all(v <= 1.0 for v in seen)  # the tagger reads [0, 1] clean images
    assert len(model.backbone.prompt_cache) == 1  # one distinct prompt, encoded once
    res = json.load(open(tmp_path / "eval_results.json"))
    metrics = res["synthetic_sem_seg_val"]["sem_seg"]
    assert math.isfinite(metrics["mIoU"]) and 0.0 <= metrics["pACC"] <= 100.0
    assert (tmp_path / "model_final.pth").is_file()
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    assert any(".lora_B.rass." in k for k in saved) and "backbone.unet.conv_in.base_layer.weight" in saved
