"""Models with random parts are the same run after run (`rass.engine.model_build.seeded_init`): the
tools and demos build them from a documented seed (`--init-seed`) and leave the global RNGs alone."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from rass.engine.model_build import DEFAULT_INIT_SEED, seeded_init
from tests.conftest import REPO, load_script

TINY_SAM = os.path.join(REPO, "configs", "lqseg", "tiny_sam.yaml")


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_seeded_init_is_reproducible_and_leaves_the_global_rngs_alone():
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3).tolist(), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    with seeded_init():
        a = torch.nn.Linear(4, 3)
        draws_a = (random.random(), float(np.random.rand()))
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == expected  # streams untouched
    with seeded_init(DEFAULT_INIT_SEED):
        b = torch.nn.Linear(4, 3)
        draws_b = (random.random(), float(np.random.rand()))
    with seeded_init(DEFAULT_INIT_SEED + 1):
        c = torch.nn.Linear(4, 3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and draws_a == draws_b
    assert not torch.allclose(a.weight, c.weight)
    assert DEFAULT_INIT_SEED == 0


@pytest.fixture(scope="module")
def lqseg_root(tmp_path_factory):
    from rass.data.synthetic_masks import make_synthetic_lqseg

    root = tmp_path_factory.mktemp("synthetic_lqseg")
    make_synthetic_lqseg(str(root), 0, 3, [3], 64, 96, False, None)
    return root


def test_eval_robustness_on_a_random_tiny_sam_gives_the_same_numbers_every_run(lqseg_root, tmp_path, monkeypatch):
    monkeypatch.setenv("RASS_LQSEG_SYNTHETIC_ROOT", str(lqseg_root))
    tool = load_script("tools/eval_robustness.py", "eval_robustness_seeded")

    def run(name, *extra):
        out = tmp_path / name
        rc = tool.main(["--config-file", TINY_SAM, "--output", str(out), "--datasets", "lqseg_synthetic_test_lq3",
                        "--no-progress", *extra])
        assert rc == 0
        row = json.loads((out / "robustness.json").read_text())["levels"]["lqseg_synthetic_test_lq3"]
        return {k: row[k] for k in ("IoU", "Dice", "BoundaryIoU", "PixelAcc")}

    first = run("a")
    torch.rand(7)  # the process's RNG has moved on: the model must not depend on it
    assert run("b") == first  # exactly the same numbers
    other = run("d", "--init-seed", "5")
    assert other != first and 0.0 <= other["IoU"] <= 1.0


def test_every_tool_and_demo_that_builds_a_model_has_the_init_seed_option():
    for relpath, name in (("tools/eval_robustness.py", "t_eval"), ("tools/analyze_model.py", "t_analyze"),
                          ("tools/export_glesam.py", "t_export"), ("tools/tag_images.py", "t_tag"),
                          ("demo/demo.py", "d_demo"), ("demo/demo_sam.py", "d_sam"), ("demo/app.py", "d_app")):
        source = open(os.path.join(REPO, relpath)).read()
        assert "add_init_seed_argument(p)" in source and ("seeded_init" in source or "seed=args.init_seed" in source), \
            relpath
    app = load_script("demo/app.py", "d_app")
    assert app.parse_args([]).init_seed == DEFAULT_INIT_SEED and app.parse_args(["--init-seed", "3"]).init_seed == 3


def test_the_demo_app_builds_the_same_random_sam_from_the_same_seed_only():
    from rass.app.models import choose_sam_model, load_backend
    from rass.app.sam_tab import SamBackend

    choice = choose_sam_model(TINY_SAM)
    a, b = (load_backend(choice, SamBackend.from_cfg) for _ in range(2))
    c = load_backend(choice, SamBackend.from_cfg, seed=1)
    pa, pb, pc = (_params(x.backend.methods["SAM"].model) for x in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))
