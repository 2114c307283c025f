"""User errors at the command line: one short message (traceback only in debug mode), output checks
before the model runs, a short plain-text log, and the project's defaults found from any folder."""
import functools
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from rass.config import setup_cfg
from rass.utils import cli
from rass.utils.errors import UserError, UserFileNotFoundError, UserKeyError, UserOSError, UserValueError
from tests.conftest import REPO, load_script

TRAIN_NET = os.path.join(REPO, "train_net.py")
FPN = os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml")
TINY_RASS = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")
ANSI = re.compile(r"\x1b\[")


def _env(**extra):
    env = dict(os.environ, PYTHONWARNINGS="ignore", **extra)
    env.pop(cli.DEBUG_ENV, None)
    env.update(extra)
    return env


def _errors(stderr: str):
    """The lines of stderr that are not log records or library warnings."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(("[", "W1", "I1"))]


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


# ----------------------------------------------------------------- what is a user error
def _raised(fn, *args):
    try:
        fn(*args)
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("no exception")


def test_only_the_user_error_type_is_a_user_error():
    from rass.utils.io import atomic_open

    err = UserError("bad thing", hint="do this")
    assert cli.as_user_error(err) is err
    for cls, builtin in ((UserValueError, ValueError), (UserKeyError, KeyError),
                         (UserFileNotFoundError, FileNotFoundError), (UserOSError, OSError)):
        e = cls("config file x.yaml: bad", hint="h")
        assert isinstance(e, builtin) and cli.as_user_error(e) is e  # callers catching the builtin still do
        assert str(e) == "config file x.yaml: bad\n  hint: h"
    # a ValueError of an internal check, raised on purpose by the project's own code: a bug
    e = _raised(lambda: atomic_open("x", mode="r").__enter__())
    assert type(e) is ValueError and str(e) == "atomic_open: mode must be 'wb' or 'w', got 'r'"
    assert cli.as_user_error(e) is None
    # an OSError that no code turned into a message naming what the user gave: a bug too
    assert cli.as_user_error(_raised(open, "/nonexistent/dir/file.txt")) is None
    # library errors and failing operations
    assert cli.as_user_error(_raised(int, "abc")) is None
    assert cli.as_user_error(_raised(lambda: {}["k"])) is None
    assert cli.as_user_error(_raised(lambda: None + 1)) is None


class _BadLabels(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        from rass.utils.image_io import check_labels

        check_labels(np.full((2, 2), 200), 150, 255, f"label_{i}.png")


def test_error_in_a_data_loader_worker_arrives_as_its_message():
    loader = torch.utils.data.DataLoader(_BadLabels(), num_workers=1, batch_size=None)
    e = _raised(lambda: next(iter(loader)))
    assert "Original Traceback" in str(e)  # torch re-raises with the worker's traceback as the message
    err = cli.as_user_error(e)
    assert err.message.startswith("Label file label_0.png has values [200] outside 0..149 and 255")
    assert "Traceback" not in err.message and "\n" not in err.message


class _InternalCheckFails(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        from rass.utils.io import atomic_open

        atomic_open("x", mode="r").__enter__()  # a plain ValueError of a project check: a bug


def test_bug_in_a_data_loader_worker_or_another_rank_stays_a_bug(tmp_path):
    import traceback

    from torch.multiprocessing.spawn import ProcessRaisedException

    loader = torch.utils.data.DataLoader(_InternalCheckFails(), num_workers=1, batch_size=None)
    e = _raised(lambda: next(iter(loader)))
    assert "Original Traceback" in str(e) and "ValueError: atomic_open: mode must be 'wb' or 'w', got 'r'" in str(e)
    assert cli.as_user_error(e) is None

    def rank_main():
        raise KeyError("internal: no such stage")

    try:
        cli.LaunchedMain(rank_main)()
    except KeyError:  # not turned into a UserError
        trace = traceback.format_exc()
    e = ProcessRaisedException("\n\n-- Process 1 terminated with the following error:\n" + trace, 1, 12345)
    assert cli.as_user_error(e) is None
    # the final exception's type decides, not the message
    fake = trace.replace("KeyError: 'internal: no such stage'", "KeyError: 'rass.utils.errors.UserKeyError: x'")
    assert cli.as_user_error(ProcessRaisedException("terminated with the following error:\n" + fake, 1, 1)) is None
    user = trace.replace("KeyError: 'internal: no such stage'",
                         "rass.utils.errors.UserKeyError: MODEL.X: bad\n  hint: h")
    err = cli.as_user_error(ProcessRaisedException("terminated with the following error:\n" + user, 1, 1))
    assert (err.message, err.hint) == ("MODEL.X: bad", "h")


def test_error_in_another_rank_arrives_as_one_message(tmp_path):
    """The path of detectron2's `launch` with several processes: the rank runs main through
    `LaunchedMain`; torch's spawn wrapper sends `traceback.format_exc()` to the parent, which raises a
    ProcessRaisedException holding it as text (built here as torch builds it)."""
    import traceback

    from torch.multiprocessing.spawn import ProcessRaisedException

    missing = str(tmp_path / "nope.yaml")
    try:
        cli.LaunchedMain(setup_cfg)(missing)
    except UserError:
        trace = traceback.format_exc()
    assert "UserFileNotFoundError" not in trace  # re-raised as a plain UserError, without the chain
    e = ProcessRaisedException("\n\n-- Process 1 terminated with the following error:\n" + trace, 1, 12345)
    err = cli.as_user_error(e)
    assert err.message == f"config file {missing} does not exist"
    assert err.hint.startswith("the packaged configs are under configs/")


def test_run_cli_prints_one_message_and_exits_2(capsys, monkeypatch):
    def main(argv):
        raise UserError(f"config file {argv[0]} is broken", hint="fix it")

    with pytest.raises(SystemExit) as ex:
        cli.run_cli(main, ["a.yaml"])
    assert ex.value.code == 2
    assert capsys.readouterr().err == "error: config file a.yaml is broken\n  hint: fix it\n"
    # --debug anywhere: taken out of the arguments, the traceback is shown as well
    monkeypatch.setenv(cli.DEBUG_ENV, "0")  # (so that the teardown removes what run_cli sets)
    with pytest.raises(SystemExit) as ex:
        cli.run_cli(main, ["a.yaml", "--debug"])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback (most recent call last)" in err and err.endswith("hint: fix it\n")
    assert os.environ.pop(cli.DEBUG_ENV) == "1"
    # bugs keep their traceback and print nothing else: a ValueError of a project check, an OSError, a
    # TypeError; the result of main is the exit status
    from rass.utils.io import atomic_open

    for bug, exc in ((lambda: atomic_open("x", mode="r").__enter__(), ValueError),
                     (lambda: open(os.path.join(os.sep, "nonexistent", "x")), FileNotFoundError),
                     (lambda: None + 1, TypeError)):
        with pytest.raises(exc):
            cli.run_cli(bug, [])
        assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as ex:
        cli.run_cli(lambda argv: 3, [])
    assert ex.value.code == 3


def test_training_loop_does_not_log_a_user_error_traceback():
    cli.install_log_filter()
    log = logging.getLogger("detectron2.engine.train_loop")
    records = []

    class Keep(logging.Handler):  # on the logger itself: detectron2's setup_logger stops propagation
        def emit(self, record):
            records.append(record)

    handler = Keep()
    log.addHandler(handler)
    try:
        for exc in (UserError("bad label file"), TypeError("a bug")):
            try:
                raise exc
            except Exception:  # noqa: BLE001
                log.exception("Exception during training:")
    finally:
        log.removeHandler(handler)
    assert [r.exc_info[1] for r in records] == [exc]  # only the bug's traceback is logged


# ----------------------------------------------------------------- config errors
def _write(path, text):
    path.write_text(text)
    return str(path)


def test_config_errors_name_the_file_and_quote_the_value(tmp_path):
    base = _write(tmp_path / "base.yaml", f"_BASE_: {FPN}\nMODEL:\n  BOGUS_KEY: 3\n")
    child = _write(tmp_path / "child.yaml", "_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    with pytest.raises(KeyError, match=re.escape(f"{base}: unknown config key MODEL.BOGUS_KEY")):
        setup_cfg(child)  # the key is in the base, so the base is named

    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  WEIGHTS: [1\n")
    with pytest.raises(ValueError, match=re.escape(f"config file {bad} is not valid YAML: ") + ".*line 3, column 1"):
        setup_cfg(bad)

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"MODEL:\xff\xfe\n")
    with pytest.raises(UserValueError) as ex:
        setup_cfg(str(binary))
    assert ex.value.message == f"config file {binary} is not UTF-8 text (invalid start byte at byte 6)"

    orphan = _write(tmp_path / "orphan.yaml", "_BASE_: missing/base.yaml\n")
    with pytest.raises(FileNotFoundError) as ex:
        setup_cfg(orphan)
    assert ex.value.message == f"config file {orphan}: its _BASE_ {tmp_path / 'missing/base.yaml'} does not exist"

    typed = _write(tmp_path / "typed.yaml", f"_BASE_: {FPN}\nSOLVER:\n  MAX_ITER: abc\n")
    with pytest.raises(ValueError) as ex:
        setup_cfg(typed)
    assert ex.value.message == f"{typed}: SOLVER.MAX_ITER: 'abc' is a string, expected an integer"
    with pytest.raises(ValueError) as ex:  # an override: the value given and the value in force (FPN's 200)
        setup_cfg(FPN, ["SOLVER.MAX_ITER", "1e3x"])
    assert ex.value.message == "command-line override SOLVER.MAX_ITER '1e3x': expected an integer like the value in force, 200"
    with pytest.raises(KeyError) as ex:
        setup_cfg(FPN, ["SOLVER.MAX_ITERS", "3"])
    assert ex.value.hint.startswith("did you mean SOLVER.MAX_ITER ")
    assert isinstance(ex.value, UserError)


def _load(path, name):
    return load_script(os.path.relpath(path, REPO), name)


def test_train_net_without_config_or_with_a_broken_one_is_one_message(tmp_path, capsys, monkeypatch):
    train_net = _load(TRAIN_NET, "rass_train_net_cli")
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: pytest.fail("nothing may run without a config"))
    with pytest.raises(SystemExit) as ex:
        cli.run_cli(train_net.cli, ["SOLVER.MAX_ITER", "2"])
    assert ex.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: no --config-file given: train_net.py needs a config",
        "  hint: e.g. --config-file configs/quickstart/tiny_rass.yaml (the configs are under configs/)"]
    # a config error: checked once in the parent, before any process starts; one line
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  WEIGHTS: [1\n")
    with pytest.raises(SystemExit) as ex:
        cli.run_cli(train_net.cli, ["--config-file", bad, "SOLVER.MAX_ITER", "2"])
    assert ex.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: config file {bad} is not valid YAML: expected ',' or ']', but got '<stream end>' at line 3, column 1 "
        "(while parsing a flow sequence at line 2, column 12)"]


def test_output_folders_that_cannot_be_made_are_one_message(tmp_path, capsys, monkeypatch):
    """OUTPUT_DIR and the tools' output arguments below a file: one error naming the argument, not an
    OSError traceback."""
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    below = a_file / "out"
    train_net = _load(TRAIN_NET, "rass_train_net_cli")
    with pytest.raises(SystemExit) as ex:
        cli.run_cli(train_net.cli, ["--config-file", FPN, "OUTPUT_DIR", str(below)])
    assert ex.value.code == 2
    assert _errors(capsys.readouterr().err) == [
        f"error: OUTPUT_DIR {below}: {a_file} is a file, so no folder can be made below it",
        "  hint: give OUTPUT_DIR a folder you can write to"]
    cases = {
        "tools/make_synthetic_lqseg.py": ["--out", str(below), "--num-images", "1", "--num-train", "0"],
        "tools/make_synthetic_ade20k.py": ["--out", str(below), "--num-train", "1", "--num-val", "1", "--no-progress"],
        "tools/degrade_dataset.py": ["--preset", "rass", "--input", str(tmp_path / "in"), "--output", str(below),
                                     "--seed", "0", "--no-progress"],
    }
    for script, args in cases.items():
        assert load_script(script, "rass_tool_" + os.path.basename(script)[:-3]).main(args) == 2
        flag = args[args.index(str(below)) - 1]
        assert _errors(capsys.readouterr().err) == [
            f"error: {flag} {below}: {a_file} is a file, so no folder can be made below it",
            f"  hint: give {flag} a folder you can write to"], script


def test_config_error_is_short_and_debug_shows_the_traceback(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "MODEL:\n  WEIGHTS: [1\n")
    r = subprocess.run([sys.executable, TRAIN_NET, "--config-file", bad, "--debug"], capture_output=True, text=True,
                       env=_env(), cwd=str(tmp_path), timeout=300)
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "yaml" in r.stderr  # the chained YAML error too
    assert r.stderr.rstrip().splitlines()[-1].startswith(f"error: config file {bad} is not valid YAML")


# ----------------------------------------------------------------- demo outputs, before the model
def _cannot_create_in(folder):
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return False
    except OSError:
        return True


def test_demo_output_problems_are_found_before_the_model(tmp_path, monkeypatch, capsys):
    from PIL import Image

    demo = _load(os.path.join(REPO, "demo", "demo.py"), "rass_demo_cli")

    def no_model(cfg):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr("rass.engine.SemanticPredictor", no_model)
    image = str(tmp_path / "in.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = {
        str(tmp_path / "x.webp"): "overlays are written as .png or .jpg or .jpeg, not .webp",
        str(a_file / "out"): f"{a_file} is a file, so no folder can be made below it",
        str(a_file / "deeper" / "x.png"): f"{a_file} is a file, so no folder can be made below it",
        str(a_file): "is an existing file, not a folder",
    }
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases[str(locked / "out")] = f"cannot write in {locked}"
    elif _cannot_create_in("/sys"):  # root writes anywhere but in the kernel's folders
        cases["/sys/rass_demo_out/"] = "cannot write in /sys"
    for output, message in cases.items():
        code = demo.main(["--config-file", FPN, "--input", image, "--output", output])
        err = capsys.readouterr().err
        assert code == 2 and message in err, (output, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    # the overlay writer indeed refuses what the demo refuses, and writes what it accepts
    from rass.utils.io import save_image_atomic
    from rass.utils.outputs import WRITABLE_IMAGE_EXTS

    for ext in WRITABLE_IMAGE_EXTS:
        save_image_atomic(str(tmp_path / f"ok{ext}"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError):
        save_image_atomic(str(tmp_path / "no.webp"), np.zeros((4, 4, 3), np.uint8))


# ----------------------------------------------------------------- console and log
def test_model_summary_and_random_weight_warning_only_when_true(tmp_path, caplog):
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer
    from rass.utils.model_summary import count_parameters

    caplog.set_level(logging.INFO)
    model = Trainer.build_model(setup_cfg(TINY_RASS))
    text = caplog.text
    assert "Model RASSMaskFormer: parameters (total / trainable) per part" in text
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(model, [n for n, _ in model.named_children()]) == (total, trainable)
    assert re.search(rf"\n  total +{total / 1e6:,.2f}M +{trainable / 1e6:,.2f}M\n", text + "\n"), text
    assert "(sem_seg_head): " not in text  # no module tree
    assert sum("RANDOM weights" in r.getMessage() for r in caplog.records) == 1  # true: nothing will be loaded

    full = tmp_path / "full.pth"
    torch.save({"model": model.state_dict()}, full)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    part = tmp_path / "trainable_only.pth"
    torch.save({"model": {k: v for k, v in model.state_dict().items() if k in trainable_names}}, part)
    for weights, warned in ((full, False), (part, True)):
        caplog.clear()
        cfg = setup_cfg(TINY_RASS, ["MODEL.WEIGHTS", str(weights)])
        model = Trainer.build_model(cfg)
        assert "RANDOM" not in caplog.text  # held back until the weights are loaded
        RASSCheckpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
        assert ("RANDOM weights" in caplog.text) == warned, caplog.text
        if warned:
            assert "frozen entries are not in MODEL.WEIGHTS" in caplog.text


def test_eval_only_log_is_short_plain_text_and_runs_from_another_folder(tmp_path, synthetic_env):
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer

    weights = tmp_path / "w"
    RASSCheckpointer(Trainer.build_model(setup_cfg(TINY_RASS)), str(weights)).save("model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, TRAIN_NET, "--config-file", os.path.relpath(TINY_RASS, elsewhere), "--eval-only",
                        "MODEL.WEIGHTS", str(weights / "model.pth"), "OUTPUT_DIR", "out_rel", "INPUT.MIN_SIZE_TEST", "64",
                        "DATASETS.TEST", "('synthetic_sem_seg_val',)"],
                       capture_output=True, text=True, env=_env(), cwd=str(elsewhere), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    log = (elsewhere / "out_rel" / "log.txt").read_text()  # a user-given relative OUTPUT_DIR: below the CWD
    console = r.stdout + r.stderr
    for text in (log, console):
        assert not ANSI.search(text)
        assert "RANDOM" not in text
        assert "Model RASSMaskFormer: parameters" in text and "(sem_seg_head): " not in text
        assert "Running with full config" not in text
    assert len(log.splitlines()) < 150, len(log.splitlines())
    cfg = yaml.safe_load((elsewhere / "out_rel" / "config.yaml").read_text())
    assert cfg["MODEL"]["WEIGHTS"] == str(weights / "model.pth")


def test_project_defaults_resolve_against_the_repository(tmp_path, monkeypatch):
    from rass.data.datasets.register import ADE20K_ROOT, SYNTHETIC_ROOT

    monkeypatch.chdir(tmp_path)
    for var in ("DETECTRON2_DATASETS", "RASS_SYNTHETIC_ROOT"):
        monkeypatch.delenv(var, raising=False)
    assert SYNTHETIC_ROOT.resolve() == os.path.join(REPO, "datasets", "synthetic_ade20k")
    assert ADE20K_ROOT.resolve() == os.path.join(REPO, "datasets", "ADEChallengeData2016")
    monkeypatch.setenv("DETECTRON2_DATASETS", "mine")  # given by the user: relative to the current folder
    assert SYNTHETIC_ROOT.resolve() == os.path.join("mine", "synthetic_ade20k")
    # packaged configs: their output/ and weights/ paths are the repository's; the user's stay as given
    assert setup_cfg(TINY_RASS).OUTPUT_DIR == os.path.join(REPO, "output", "tiny_rass")
    rass_sd21 = setup_cfg(os.path.join(REPO, "configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml"))
    assert rass_sd21.MODEL.RASS.SD_PATH == os.path.join(REPO, "weights", "stable-diffusion-2-1-base")
    own = _write(tmp_path / "own.yaml", f"_BASE_: {TINY_RASS}\nOUTPUT_DIR: output/mine\n")
    assert setup_cfg(own).OUTPUT_DIR == "output/mine"
    assert setup_cfg(own, ["OUTPUT_DIR", "output/x"]).OUTPUT_DIR == "output/x"
    assert setup_cfg(_write(tmp_path / "inherit.yaml", f"_BASE_: {TINY_RASS}\n")).OUTPUT_DIR == os.path.join(
        REPO, "output", "tiny_rass")


@pytest.mark.parametrize("key,registry", [
    ("MODEL.META_ARCHITECTURE", "META_ARCH"), ("MODEL.BACKBONE.NAME", "BACKBONE"),
    ("MODEL.SEM_SEG_HEAD.NAME", "SEM_SEG_HEADS"), ("MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME", "PIXEL_DECODER"),
    ("MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME", "TRANSFORMER_DECODER"), ("MODEL.TAGGER.NAME", "TAGGER"),
])
def test_unknown_registered_name_in_the_config_is_a_user_error(key, registry):
    """The project translates a name the config gives that no registry holds where it looks it up
    (detectron2's own look-ups are checked before detectron2's build_model runs)."""
    from rass.engine import Trainer

    cfg = setup_cfg(TINY_RASS, [key, "NoSuchThing"])
    with pytest.raises(UserKeyError) as ex:
        Trainer.build_model(cfg)
    prefix = f"{key}: 'NoSuchThing' is not registered in the {registry} registry; registered: "
    assert ex.value.message.startswith(prefix), ex.value.message
    in_force = functools.reduce(getattr, key.split("."), setup_cfg(TINY_RASS))
    assert in_force in ex.value.message[len(prefix):].split(", ")  # the registered names are listed


def test_unknown_dataset_in_the_config_is_a_user_error(synthetic_env):
    from rass.engine import Trainer

    cfg = setup_cfg(FPN, ["DATASETS.TRAIN", "('synthetic_sem_seg_train', 'synthetic_sem_seg_trian')"])
    with pytest.raises(UserKeyError) as ex:
        Trainer.build_train_loader(cfg)
    assert ex.value.message.startswith("DATASETS.TRAIN: dataset 'synthetic_sem_seg_trian' is not registered; did you "
                                       "mean synthetic_sem_seg_train or ")  # the closest first
    assert ex.value.hint.startswith("the project's datasets and how to add one are described in datasets/README.md")
    with pytest.raises(UserKeyError) as ex:
        Trainer.build_test_loader(cfg, "no_such_set")
    assert ex.value.message == "DATASETS.TEST: dataset 'no_such_set' is not registered"
