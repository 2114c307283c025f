"""Robustness evaluation across degradation levels (tiny Semantic FPN, generated data, CPU)."""
import hashlib
import json
import os
import shutil

import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from rass.config import setup_cfg
from tests.conftest import REPO, load_script

CFG = os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml")
FAST = ["DATALOADER.NUM_WORKERS", "0", "INPUT.CROP.SIZE", "(128, 128)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MIN_SIZE_TEST", "128"]
METRICS = ("mIoU", "fwIoU", "mACC", "pACC")


def _tool():
    return load_script("tools/eval_robustness.py", "eval_robustness")


@pytest.fixture(autouse=True)
def _own_log_handlers():
    """The tool's `setup_logger` adds handlers on the test's captured stdout; drop them after the
    test so that a later test's stderr holds no "Logging error" from a closed capture."""
    import logging

    loggers = [logging.getLogger(n) for n in ("rass", "detectron2")]
    before = [list(lg.handlers) for lg in loggers]
    yield
    for lg, keep in zip(loggers, before):
        for h in [h for h in lg.handlers if h not in keep]:
            lg.removeHandler(h)
            h.close()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the tiny Semantic FPN with seeded random weights (the test is about the
    evaluation machinery, not the accuracy)."""
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer

    out = tmp_path_factory.mktemp("fpn")
    torch.manual_seed(0)
    model = Trainer.build_model(setup_cfg(CFG, FAST))
    RASSCheckpointer(model, save_dir=str(out)).save("model_random")
    return str(out / "model_random.pth")


def _files(folder):
    """relative path -> (sha256, mtime_ns) of every file under `folder`."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def _args(weights, out, cache, *extra):
    return ["--config-file", CFG, "--weights", weights, "--cache-dir", str(cache), "--output", str(out), "--no-progress",
            *extra, "--opts", *FAST]


def test_levels_are_degraded_once_reused_and_reported(synthetic_env, weights, tmp_path, capsys, monkeypatch):
    from rass.data.degradation.offline import degrade_tree
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer

    tool, cache = _tool(), tmp_path / "cache"
    levels = ["clean", "lqseg_1", "lqseg_3"]
    args = ["--dataset", "synthetic_sem_seg_val", "--levels", ",".join(levels), "--seed", "5"]
    assert tool.main(_args(weights, tmp_path / "run1", cache, *args)) == 0
    copies = {lv: cache / "synthetic_sem_seg_val" / f"{lv}_seed5" for lv in levels[1:]}
    first = {lv: _files(d) for lv, d in copies.items()}
    for lv, files in first.items():
        assert sum(k.startswith("images/validation/") for k in files) == 6, lv
    assert not (cache / "synthetic_sem_seg_val" / "clean_seed5").exists()

    # the copy of a level is exactly what the offline tool writes for that preset and seed
    degrade_tree(synthetic_env, str(tmp_path / "ref"), preset="lqseg_3", seed=5)
    ref = _files(tmp_path / "ref")
    for k, v in first["lqseg_3"].items():
        if k.startswith(("images/", "annotations_detectron2/")):
            assert ref[k][0] == v[0], k

    # second run: nothing is degraded again (same bytes, files untouched); a deleted image is redone
    victim = sorted(k for k in first["lqseg_1"] if k.startswith("images/"))[2]
    os.remove(copies["lqseg_1"] / victim)
    assert tool.main(_args(weights, tmp_path / "run2", cache, *args)) == 0
    for lv, d in copies.items():
        again = _files(d)
        for k, (sha, mtime) in first[lv].items():
            if k.startswith(("images/", "annotations_detectron2/")):
                assert again[k][0] == sha, (lv, k)
                assert (again[k][1] == mtime) == (lv != "lqseg_1" or k != victim), (lv, k)
    r1 = json.load(open(tmp_path / "run1" / "robustness.json"))
    r2 = json.load(open(tmp_path / "run2" / "robustness.json"))
    assert list(r1["levels"]) == levels and r1["reference"] == "clean"
    for lv in levels:
        assert r2["levels"][lv]["mIoU"] == r1["levels"][lv]["mIoU"]

    # one row per level, metrics in range, drops relative to clean, per-class IoU of the present classes
    clean = r1["levels"]["clean"]
    for lv, row in r1["levels"].items():
        assert row["images"] == 6
        for k in METRICS:
            assert 0.0 <= row[k] <= 100.0
            assert row["drop"][k] == pytest.approx(clean[k] - row[k], abs=1e-9)
        assert len(row["per_class_IoU"]) == 150
        present = [v for v in row["per_class_IoU"].values() if v is not None]
        assert 1 <= len(present) <= 9 and row["mIoU"] == pytest.approx(sum(present) / len(present), abs=1e-6)
    assert r1["levels"]["lqseg_1"]["dataset"] == "synthetic_sem_seg_val__lqseg_1"
    assert r1["levels"]["lqseg_3"]["pACC"] != clean["pACC"]  # the degraded images were evaluated
    assert "synthetic_sem_seg_val__lqseg_1" not in DatasetCatalog.list()  # temporary registration removed
    md = (tmp_path / "run1" / "robustness.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("| `")]
    assert [line.split("|")[1].strip() for line in rows] == [f"`{lv}`" for lv in levels]
    assert f"{clean['mIoU']:.2f}" in rows[0] and "+0.00" in rows[0]
    assert "ΔmIoU" in md[4]
    png = tmp_path / "run1" / "robustness.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    res = json.load(open(tmp_path / "run1" / "eval_results.json"))
    assert list(res) == ["synthetic_sem_seg_val", "synthetic_sem_seg_val__lqseg_1", "synthetic_sem_seg_val__lqseg_3"]
    assert "| `lqseg_3` |" in capsys.readouterr().out
    assert not [f for f in os.listdir(tmp_path / "run1") if f.endswith(".tmp")]

    # the clean row is a direct Trainer.test on the clean set
    cfg = setup_cfg(CFG, FAST + ["OUTPUT_DIR", str(tmp_path / "direct")])
    model = Trainer.build_model(cfg)
    RASSCheckpointer(model).load(weights)
    direct = Trainer.test(cfg, model)["synthetic_sem_seg_val"]["sem_seg"]
    for k in METRICS:
        assert clean[k] == pytest.approx(direct[k], abs=1e-9)

    # pre-built sets are evaluated as registered: the lqseg_1 copy registered as the "degraded" set
    monkeypatch.setenv("RASS_SYNTHETIC_DEGRADED_ROOT", str(copies["lqseg_1"]))
    assert tool.main(_args(weights, tmp_path / "run3", cache, "--datasets", "synthetic_sem_seg_val",
                           "synthetic_sem_seg_val_degraded")) == 0
    r3 = json.load(open(tmp_path / "run3" / "robustness.json"))
    assert list(r3["levels"]) == ["synthetic_sem_seg_val", "synthetic_sem_seg_val_degraded"]
    assert r3["reference"] == "synthetic_sem_seg_val"
    for k in METRICS:
        assert r3["levels"]["synthetic_sem_seg_val_degraded"][k] == pytest.approx(r1["levels"]["lqseg_1"][k], abs=1e-9)
        assert r3["levels"]["synthetic_sem_seg_val"][k] == pytest.approx(clean[k], abs=1e-9)


def test_a_failing_level_is_named(synthetic_env, weights, tmp_path, capsys, monkeypatch):
    import rass.engine.robustness as rob

    tool, cache = _tool(), tmp_path / "cache"
    # unknown preset: refused before anything is written
    rc = tool.main(_args(weights, tmp_path / "out", cache, "--dataset", "synthetic_sem_seg_val",
                         "--levels", "clean,lqseg_9"))
    err = capsys.readouterr().err
    assert rc == 2 and "Level 'lqseg_9'" in err and "lqseg_3" in err
    assert not cache.exists() and not (tmp_path / "out" / "robustness.json").exists()
    # an unregistered pre-built set
    rc = tool.main(_args(weights, tmp_path / "out", cache, "--datasets", "no_such_sem_seg_val"))
    assert rc == 2 and "no_such_sem_seg_val" in capsys.readouterr().err
    # a level whose evaluation fails on the user's input (e.g. a broken file in it): named, exit 2
    from rass.utils.errors import UserValueError

    real_test = rob.Trainer.test
    failure = UserValueError("simulated failure", hint="simulated hint")

    def failing_test(cfg, model, evaluators=None):
        if cfg.DATASETS.TEST[0].endswith("__lqseg_2"):
            raise failure
        return real_test(cfg, model, evaluators)

    monkeypatch.setattr(rob.Trainer, "test", failing_test)
    rc = tool.main(_args(weights, tmp_path / "out", cache, "--dataset", "synthetic_sem_seg_val",
                         "--levels", "clean,lqseg_2"))
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [
        "error: Level 'lqseg_2' (dataset 'synthetic_sem_seg_val__lqseg_2') failed to evaluate: simulated failure",
        "  hint: simulated hint"]
    assert not (tmp_path / "out" / "robustness.json").exists()
    assert "synthetic_sem_seg_val__lqseg_2" not in DatasetCatalog.list()
    # a bug there is not turned into a user error: it propagates (a traceback, exit 1)
    failure = RuntimeError("simulated bug")
    with pytest.raises(RuntimeError, match="^simulated bug$"):
        tool.main(_args(weights, tmp_path / "out", cache, "--dataset", "synthetic_sem_seg_val",
                        "--levels", "clean,lqseg_2"))
    assert "synthetic_sem_seg_val__lqseg_2" not in DatasetCatalog.list()

    # a cached copy made from other data than the dataset now holds is refused, by folder
    monkeypatch.undo()
    other = tmp_path / "other"
    shutil.copytree(synthetic_env, other)
    first = sorted((other / "images" / "validation").iterdir())[0]
    with Image.open(first) as im:
        Image.eval(im, lambda v: 255 - v).save(first, quality=95)
    monkeypatch.setenv("RASS_SYNTHETIC_ROOT", str(other))
    rc = tool.main(_args(weights, tmp_path / "out", cache, "--dataset", "synthetic_sem_seg_val", "--levels", "lqseg_2"))
    err = capsys.readouterr().err
    assert rc == 2 and "Cached copy" in err and os.path.join("synthetic_sem_seg_val", "lqseg_2_seed0") in err
