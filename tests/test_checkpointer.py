import os

import pytest
import torch
from torch import nn

from rass.checkpoint import RASSCheckpointer


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ck = RASSCheckpointer(model, str(tmp_path))
    ck.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000001")
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert not (tmp_path / "model_0000002.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]


def test_load_roundtrip_and_missing_file(tmp_path):
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    RASSCheckpointer(a, str(tmp_path)).save("m")
    RASSCheckpointer(b).load(str(tmp_path / "m.pth"))
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(FileNotFoundError, match=f"MODEL.WEIGHTS.*{tmp_path / 'missing.pth'}"):
        RASSCheckpointer(b).load(str(tmp_path / "missing.pth"))


def test_atomic_files_get_the_usual_permissions(tmp_path):
    from rass.utils.io import write_text_atomic

    mask = os.umask(0o022)
    try:
        write_text_atomic(str(tmp_path / "a.txt"), "x")
    finally:
        os.umask(mask)
    assert (os.stat(tmp_path / "a.txt").st_mode & 0o777) == 0o644


def test_only_the_newest_checkpoints_are_kept(synthetic_env, tmp_path):
    from rass.config import setup_cfg
    from rass.engine import Trainer
    from tests.conftest import REPO

    cfg = setup_cfg(os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml"),
                    ["DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.MIN_SIZE_TRAIN", "(64,)",
                     "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.CHECKPOINT_MAX_TO_KEEP", "1",
                     "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == ["model_0000005.pth", "model_final.pth"]
