"""Shared pytest fixtures: CPU only, deterministic, small generated data."""
from __future__ import annotations

import os

import pytest
import torch

import rass

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
rass.register_all()  # tests use the registered datasets and models (importing rass alone registers nothing)


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state (tests only; the library never relies on it)."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str, name: str):
    """Import a command-line script of the repository (tools/*.py, demo/*.py) as a module.

    Args:
        relpath: path below the repository root, e.g. "tools/eval_robustness.py".
        name: module name to give it.
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """A small generated ADE20K-format dataset (24 train / 6 val images, 128..224 px)."""
    from rass.data.synthetic import make_synthetic_ade20k

    root = str(tmp_path_factory.mktemp("synthetic_ade20k"))
    make_synthetic_ade20k(root, seed=123, num_train=24, num_val=6, min_size=128, max_size=224, progress=False)
    return root


@pytest.fixture
def synthetic_env(synthetic_root, monkeypatch):
    """Point the `synthetic_sem_seg_*` datasets at the generated data (also for subprocesses)."""
    monkeypatch.setenv("RASS_SYNTHETIC_ROOT", synthetic_root)
    return synthetic_root


def load_manifest(name: str) -> dict:
    """A released-model manifest (`name` as in tests/reference/manifests, without `.gz`)."""
    import gzip
    import json

    with gzip.open(os.path.join(REPO, "tests", "reference", "manifests", name + ".gz"), "rt") as f:
        return json.load(f)
