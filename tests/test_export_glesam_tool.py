"""tools/export_glesam.py as a user runs it: no false "random weights" warning for a checkpoint that
sets every part, and bad --out / --weights paths are refused before the model is built."""
import logging
import os
import re

import pytest
import torch
from detectron2.modeling import build_model

from rass.checkpoint import RASSCheckpointer
from rass.config import setup_cfg
from tests.conftest import REPO, load_script

TINY = os.path.join(REPO, "configs", "lqseg", "tiny_glesam.yaml")


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/export_glesam.py", "export_glesam_tool")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    torch.manual_seed(5)
    RASSCheckpointer(build_model(setup_cfg(TINY)), str(folder)).save("model_final")
    return folder / "model_final.pth"


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_no_random_weights_warning_for_a_full_checkpoint(tool, trained, tmp_path, capsys):
    data = torch.load(trained, map_location="cpu", weights_only=True)
    frozen = [k for k in data["model"] if k.startswith("enhancer.unet.") and ".lora_" not in k]
    assert frozen
    partial = tmp_path / "without_unet.pth"  # the frozen UNet left out: it keeps its random weights
    torch.save({"model": {k: v for k, v in data["model"].items() if k not in frozen}}, partial)
    runs = {}
    for name, weights in [("full", trained), ("partial", partial)]:
        handler, log = _Warnings(), logging.getLogger("rass")
        log.addHandler(handler)
        try:
            assert tool.main(["--config-file", TINY, "--weights", str(weights), "--out", str(tmp_path / name)]) == 0
        finally:
            log.removeHandler(handler)
        runs[name] = [m for m in handler.messages if re.search("random weights", m, re.I)]
    assert runs["full"] == []  # every part came from the checkpoint
    assert runs["partial"] and all("frozen entries are not in MODEL.WEIGHTS" in m for m in runs["partial"])
    assert (tmp_path / "full" / "sam.pth").is_file()
    assert (tmp_path / "full" / "pytorch_lora_weights.safetensors").is_file()


def test_bad_out_and_weights_fail_before_the_model_is_built(tool, trained, tmp_path, capsys, monkeypatch):
    def no_build(cfg):
        raise AssertionError("the model was built")

    monkeypatch.setattr("rass.engine.model_build.build_model_noting_random_weights", no_build)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for out, where in [(blocker / "export", f"is below {blocker}, which is a file"), (blocker, "is a file")]:
        assert tool.main(["--config-file", TINY, "--weights", str(trained), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: --out: {out} {where}; expected an output folder (existing or new)",
                       "  hint: choose another --out"]
    assert tool.main(["--config-file", TINY, "--weights", str(trained.parent), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"error: --weights: {trained.parent} is a folder; expected a weight file")
    assert err[1] == f"  hint: it holds model_final.pth: e.g. --weights {trained}"
