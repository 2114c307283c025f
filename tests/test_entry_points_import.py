"""Every entry point parses its command line before importing torch & co. (issue 21, item 9).

`--help`, an unknown option, a bad choice and a mistyped `--config-file` must answer without importing
any heavy module: each entry point runs in a fresh process (as ``python SCRIPT ...`` would, through
`runpy`) and the modules it imported are checked, not the time it took.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, load_script

HEAVY = ("torch", "torchvision", "detectron2", "diffusers", "transformers", "gradio", "cv2", "matplotlib", "scipy",
         "peft", "timm")

# Runs SCRIPT once per argument list in this one process, as `python SCRIPT ARGS` would, and reports for each
# the exit status, what it printed and the heavy modules imported so far.
RUNNER = textwrap.dedent('''
    import contextlib, io, json, os, runpy, sys
    script, runs, heavy = sys.argv[1], json.loads(sys.argv[2]), set(json.loads(sys.argv[3]))
    results = []
    for args in runs:
        sys.argv = [script] + args
        sys.path[0] = os.path.dirname(script)
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    err.write(e.code + "\\n")
        loaded = sorted({m.split(".")[0] for m in sys.modules} & heavy)
        results.append({"args": args, "code": code, "out": out.getvalue(), "err": err.getvalue(), "heavy": loaded})
    print("RESULTS " + json.dumps(results))
''')


def entry_points():
    """Every command-line script of the repository (relative paths)."""
    paths = ["train_net.py"] + sorted(glob.glob(os.path.join(REPO, "demo", "*.py")))
    paths += sorted(glob.glob(os.path.join(REPO, "tools", "*.py")))
    paths += sorted(glob.glob(os.path.join(REPO, "tools", "benchmarks", "*.py")))
    rel = [os.path.relpath(os.path.join(REPO, p), REPO) for p in paths]
    return [p for p in rel if '__name__ == "__main__"' in open(os.path.join(REPO, p)).read()]


# What else an entry point needs on its command line before it looks at --config-file.
CONFIG_EXTRA = {
    "demo/demo.py": ["--input", "x.jpg"],
    "demo/demo_sam.py": ["--input", "x.jpg"],
    "tools/eval_robustness.py": ["--dataset", "d"],
    "tools/export_glesam.py": ["--weights", "w.pth", "--out", "out"],
    "tools/tag_images.py": ["x.jpg"],
}
# A bad value of an option with choices (taken from light modules, not from the heavy ones that use them).
BAD_CHOICES = {
    "tools/degrade_dataset.py": ["--preset", "bogus", "--input", "a", "--output", "b", "--seed", "0"],
    "tools/check_dataset.py": ["--dataset", "x", "--labelled-exif", "bogus"],
    "tools/tag_images.py": ["x.jpg", "--tagger", "bogus"],
    "tools/make_synthetic_lqseg.py": ["--output", "o", "--levels", "7"],
    "tools/benchmarks/bench_gpu.py": ["--only", "bogus"],
    "tools/benchmarks/bench_glesam.py": ["--variant", "bogus"],
}


def run_entry_point(relpath, runs, cwd):
    r = subprocess.run([sys.executable, "-c", RUNNER, os.path.join(REPO, relpath), json.dumps(runs),
                        json.dumps(HEAVY)], capture_output=True, text=True, cwd=cwd, timeout=120,
                       env={**os.environ, "PYTHONPATH": REPO})
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULTS ")]
    assert r.returncode == 0 and lines, f"{relpath}: the runner failed:\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


def test_every_script_is_found():
    found = entry_points()
    for expected in ("train_net.py", "demo/demo.py", "demo/demo_sam.py", "demo/app.py", "tools/degrade_dataset.py",
                     "tools/eval_robustness.py", "tools/quickstart.py", "tools/benchmarks/bench_gpu.py"):
        assert expected in found
    assert len(found) >= 25


@pytest.mark.parametrize("relpath", entry_points())
def test_help_and_argument_errors_import_no_heavy_module(relpath, tmp_path):
    runs = [["--help"], ["--no-such-option"]]
    help_text = open(os.path.join(REPO, relpath)).read()
    has_config = '"--config-file"' in help_text
    if has_config:
        runs.append(["--config-file", "nope.yaml"] + CONFIG_EXTRA.get(relpath, []))
    if relpath in BAD_CHOICES:
        runs.append(BAD_CHOICES[relpath])
    results = run_entry_point(relpath, runs, str(tmp_path))
    for res in results:
        assert res["heavy"] == [], f"{relpath} {res['args']} imported {res['heavy']}"
        assert "Traceback" not in res["err"], f"{relpath} {res['args']}:\n{res['err']}"
    shown, unknown = results[0], results[1]
    assert shown["code"] == 0 and "usage:" in shown["out"], (relpath, shown)
    assert unknown["code"] != 0 and "usage:" in unknown["err"], (relpath, unknown)
    rest = results[2:]
    if has_config:
        config = rest.pop(0)
        errors = [line for line in config["err"].splitlines() if line.startswith("error:")]
        assert config["code"] == 2 and len(errors) == 1 and "nope.yaml" in errors[0], (relpath, config)
        assert "usage:" not in config["err"], (relpath, config)  # the project's message, not argparse's
    if rest:
        assert rest[0]["code"] == 2 and "invalid choice" in rest[0]["err"], (relpath, rest[0])
    assert not os.listdir(tmp_path)  # nothing was written


def test_importing_rass_and_the_parsers_helpers_is_light():
    code = ("import sys, rass, rass.utils.cli, rass.utils.choices, rass.utils.errors, rass.utils.inputs, "
            "rass.utils.outputs, rass.app; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_rass_config_names_are_served_lazily_and_unknown_names_fail():
    import rass
    import rass.config

    assert rass.setup_cfg is rass.config.setup_cfg and rass.add_rass_config is rass.config.add_rass_config
    with pytest.raises(AttributeError, match="module 'rass' has no attribute 'nope'"):
        rass.nope  # noqa: B018


def test_setup_cfg_registers_what_configs_name():
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import META_ARCH_REGISTRY

    from rass.config import setup_cfg

    cfg = setup_cfg(os.path.join(REPO, "configs/quickstart/tiny_rass.yaml"))
    assert cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY
    assert set(cfg.DATASETS.TEST) <= set(DatasetCatalog.list())


def test_light_choice_lists_equal_the_ones_the_code_uses():
    from rass.app import inputs as app_inputs
    from rass.data.degradation import offline, presets
    from rass.utils import choices, image_io

    assert set(choices.DEGRADATION_PRESETS) == set(presets.PRESETS)
    assert offline.LAYOUTS == choices.DEGRADE_LAYOUTS == ("ade20k", "image_mask")
    assert image_io.EXIF_POLICIES == choices.EXIF_POLICIES == ("apply", "ignore")
    assert app_inputs.DEGRADATIONS == choices.APP_DEGRADATIONS
    assert set(choices.APP_DEGRADATIONS) - {"none"} <= set(presets.PRESETS)
    assert app_inputs.DEFAULT_MAX_PIXELS == choices.DEFAULT_MAX_PIXELS == 4096 * 4096


def test_train_net_parser_has_detectron2s_options_and_defaults():
    from detectron2.engine import default_argument_parser

    def options(parser):
        return {a.dest: (tuple(a.option_strings), a.default, a.type, a.nargs, a.const, a.required, type(a).__name__)
                for a in parser._actions}

    train_net = load_script("train_net.py", "train_net_parser_check")
    ours, d2 = options(train_net.build_parser()), options(default_argument_parser())
    assert set(ours) - set(d2) == {"debug"}
    assert {k: ours[k] for k in d2} == d2
    args = train_net.build_parser().parse_args(["--config-file", "c.yaml", "--num-gpus", "2", "--eval-only",
                                               "SOLVER.MAX_ITER", "3"])
    assert (args.config_file, args.num_gpus, args.eval_only, args.resume, args.opts) == \
        ("c.yaml", 2, True, False, ["SOLVER.MAX_ITER", "3"])


def test_check_config_file_says_what_setup_cfg_says(tmp_path):
    from rass.config import setup_cfg
    from rass.utils.cli import check_config_file
    from rass.utils.errors import UserFileNotFoundError

    for path in (str(tmp_path / "nope.yaml"), str(tmp_path)):
        with pytest.raises(UserFileNotFoundError) as fast:
            check_config_file(path)
        with pytest.raises(UserFileNotFoundError) as slow:
            setup_cfg(path)
        assert str(fast.value) == str(slow.value) and path in fast.value.message
    check_config_file("")  # nothing given: nothing to check
    check_config_file(os.path.join(REPO, "configs/quickstart/tiny_rass.yaml"))


def test_parse_before_imports_exits_with_one_line_for_a_missing_config(tmp_path, capsys):
    import argparse

    from rass.utils.cli import parse_before_imports

    p = argparse.ArgumentParser()
    p.add_argument("--config-file", default="")
    p.add_argument("--n", type=int, default=1)
    assert parse_before_imports(p, ["--n", "3"]).n == 3
    with pytest.raises(SystemExit) as e:
        parse_before_imports(p, ["--config-file", str(tmp_path / "c.yaml")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: config file {tmp_path / 'c.yaml'} does not exist"


def test_the_init_seed_option_moved_to_the_light_module_and_is_reexported():
    import argparse

    from rass.engine import model_build
    from rass.utils import cli

    assert model_build.add_init_seed_argument is cli.add_init_seed_argument
    assert model_build.DEFAULT_INIT_SEED == cli.DEFAULT_INIT_SEED == 0
    p = argparse.ArgumentParser()
    cli.add_init_seed_argument(p)
    assert p.parse_args([]).init_seed == 0 and p.parse_args(["--init-seed", "7"]).init_seed == 7
