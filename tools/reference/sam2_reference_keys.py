"""Write the SAM 2.1 reference key lists (`tests/reference/sam2_keys/sam2.1_hiera_<variant>.json`).

Each list is the state dict (name -> shape) of the published model `SAM2Base` built from the
official `sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml` with random weights (names and shapes are kept,
no values), i.e. the key set of the released `sam2.1_hiera_*.pt` files ({"model": state_dict}).
The tests compare the project's SAM2 (after `rass.checkpoint.sam2_keys.project_to_original`) with
these lists, name by name and shape by shape.

Usage (needs a checkout of facebookresearch/sam2, e.g. commit 2b90b9f; its code is only imported,
nothing of it is written out):
    python tools/reference/sam2_reference_keys.py --sam2-root /path/to/sam2-checkout --out tests/reference/sam2_keys
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import types
from typing import Any, Dict

import yaml

VARIANTS = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def _instantiate(node: Any) -> Any:
    """Hydra-style `_target_` instantiation of a parsed yaml node (no interpolation needed by these configs)."""
    if isinstance(node, list):
        return [_instantiate(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", node):
        return float(node)  # YAML 1.1 (PyYAML) reads "1e-6" as a string; OmegaConf as a float
    if not isinstance(node, dict):
        return node
    kwargs = {k: _instantiate(v) for k, v in node.items() if k != "_target_"}
    if "_target_" not in node:
        return kwargs
    module, name = node["_target_"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**kwargs)


def reference_keys(sam2_root: str, variant: str) -> Dict[str, list]:
    """name -> shape of SAM2Base built from the official SAM 2.1 config of `variant`."""
    if "sam2" not in sys.modules:  # the package __init__ starts hydra: import the modules without it
        package = types.ModuleType("sam2")
        package.__path__ = [os.path.join(sam2_root, "sam2")]
        sys.modules["sam2"] = package
    path = os.path.join(sam2_root, "sam2", "configs", "sam2.1", f"sam2.1_hiera_{VARIANTS[variant]}.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)["model"]
    model = _instantiate(config)  # on CPU (Hiera calls .item() while building, which meta tensors refuse)
    return {name: list(value.shape) for name, value in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sam2-root", required=True, help="checkout of facebookresearch/sam2")
    parser.add_argument("--out", default="tests/reference/sam2_keys", help="output folder")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for variant, short in VARIANTS.items():
        keys = reference_keys(args.sam2_root, variant)
        out = os.path.join(args.out, f"sam2.1_hiera_{variant}.json")
        with open(out, "w") as f:
            json.dump({"source": f"facebookresearch/sam2 sam2/configs/sam2.1/sam2.1_hiera_{short}.yaml (SAM2Base)",
                       "num_keys": len(keys), "keys": keys}, f, indent=0)
            f.write("\n")
        print(f"{out}: {len(keys)} keys")


if __name__ == "__main__":
    main()
