"""README.md and docs/*.md: the Python snippet runs, relative links and anchors resolve, every config,
script and tool they name exists, the figure is what its script makes."""
from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_script

DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def _python_blocks(text: str):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = re.sub(r"[`*_]", "", heading.strip().lower())
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(rel: str):
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(rel), flags=re.M)}


def test_docs_exist():
    for name in ("GETTING_STARTED", "RASS", "GLESAM", "DEMOS", "MODEL_ZOO", "RESULTS"):
        assert f"docs/{name}.md" in DOCS


@pytest.fixture(scope="module")
def quickstart_like_folder(tmp_path_factory):
    """A folder laid out like the repository after the quickstart: configs/ and a tiny RASS checkpoint
    (random weights, made here; the snippet only needs the file to exist and fit)."""
    import torch

    from rass.config import setup_cfg
    from rass.engine.model_build import build_model_noting_random_weights, seeded_init

    root = tmp_path_factory.mktemp("repo_like")
    os.symlink(os.path.join(REPO, "configs"), root / "configs")
    cfg = setup_cfg(os.path.join(REPO, "configs", "quickstart", "tiny_rass.yaml"))
    with seeded_init(0):
        model, _ = build_model_noting_random_weights(cfg)
    (root / "output" / "quickstart").mkdir(parents=True)
    torch.save({"model": model.state_dict()}, root / "output" / "quickstart" / "model_final.pth")
    return root


def test_readme_python_snippet_runs(quickstart_like_folder):
    blocks = _python_blocks(_read("README.md"))
    assert len(blocks) == 1
    snippet = blocks[0]
    assert len(snippet.strip().splitlines()) <= 6
    assert "from rass.config import setup_cfg" in snippet
    env = dict(os.environ, PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([sys.executable, "-c", snippet], cwd=quickstart_like_folder, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "(96, 128) (150, 96, 128)"
    # the getting-started page shows the same snippet
    assert snippet in _python_blocks(_read("docs/GETTING_STARTED.md"))


def test_two_commands_as_documented():
    text = _read("README.md")
    assert "scripts/quickstart.sh   # CPU, no downloads: synthetic data -> train a tiny model -> evaluate" in text
    assert "scripts/test.sh         # the whole test suite (CPU, no downloads)" in text
    for script in ("scripts/quickstart.sh", "scripts/test.sh"):
        assert os.access(os.path.join(REPO, script), os.X_OK), script


def test_lqseg_1_equals_rass_is_said():
    assert "`lqseg_1` is the `rass` training preset itself" in _read("README.md")
    assert "`lqseg_1` equals `rass`" in _read("README.md")


@pytest.mark.parametrize("rel", DOCS)
def test_relative_links_resolve(rel):
    text = re.sub(r"```.*?```", "", _read(rel), flags=re.S)  # links in code blocks are not links
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, rel
    bad = []
    for link in links:
        if re.match(r"[a-z]+://", link) or link.startswith("mailto:"):
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
        if not os.path.exists(os.path.join(REPO, target)):
            bad.append(f"{link} (no {target})")
        elif anchor and target.endswith(".md") and anchor not in _anchors(target):
            bad.append(f"{link} (no heading #{anchor} in {target})")
    assert not bad, f"{rel}: broken links: {bad}"


def _expand(path: str):
    """configs/lqseg/sam_vit_{b,l,h}.yaml -> the three paths."""
    parts = re.split(r"\{([^}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


@pytest.mark.parametrize("rel", DOCS + ["datasets/README.md"])
def test_named_configs_scripts_and_tools_exist(rel):
    text = _read(rel)
    named = set(re.findall(r"(?<![\w/.])((?:configs|tools|demo|scripts|datasets)/[\w/.{},+\-]+\.(?:yaml|py|sh))", text))
    missing = [p for n in named for p in _expand(n) if not os.path.exists(os.path.join(REPO, p))]
    assert not missing, f"{rel} names files that do not exist: {missing}"
    if rel == "README.md":
        assert any(n.startswith("configs/") for n in named)


def test_license_is_apache_2():
    text = _read("LICENSE")
    assert text.lstrip().startswith("Apache License")
    assert "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_front_page_figure_is_what_its_script_makes():
    from PIL import Image

    path = os.path.join(REPO, "docs", "readme_figure.png")
    assert os.path.getsize(path) < 300 * 1024
    fig = load_script("tools/make_readme_figure.py", "make_readme_figure_tool")
    a = fig.build_parser().parse_args([])
    made = fig.make_figure(a.scene_seed, a.seed, a.panel)
    stored = np.asarray(Image.open(path).convert("RGB"))
    assert made.shape == stored.shape and np.array_equal(made, stored), (
        "docs/readme_figure.png is not what tools/make_readme_figure.py makes: run it again")
    # the degraded panels differ from the clean one (the figure shows something)
    w = (made.shape[1] + 4) // 5
    clean, lq3 = made[20:, :w - 4].astype(int), made[20:, 3 * w:4 * w - 4].astype(int)
    assert np.abs(clean - lq3).mean() > 5
