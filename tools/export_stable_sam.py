#!/usr/bin/env python
"""Export the Stable-SAM plugins (DSP + DRP, about 0.08 M parameters, ~0.3 MB) of an RTS training checkpoint
to a small plugin file that loads onto any SAM checkpoint of the same size (MODEL.STABLE_SAM.PLUGIN_WEIGHTS):

    python tools/export_stable_sam.py --weights output/stable_sam_rts_vit_l/model_final.pth \\
        --out weights/stable_sam_plugins_vit_l.pth

The SAM size is read from the checkpoint's own SAM tensors (no config, no model build) and stored in the
file; loading it onto another SAM size is refused with both sizes named.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

from rass.utils.cli import report_user_error
from rass.utils.errors import UserError, UserValueError


def export_stable_sam(weights: str, out: str) -> dict:
    """Write the plugin file of a StableSAM training checkpoint.

    Args:
        weights: a project checkpoint (detectron2 format {"model": state dict, ...} or a bare state dict).
        out: the plugin file to write.

    Returns:
        {"out", "bytes", "sam_size", "tensors", "parameters"}.
    """
    from rass.checkpoint.files import read_checkpoint_file
    from rass.modeling.stable_sam import (
        plugin_state_from_model_state, sam_encoder_shape, sam_size_name, save_plugin_file)

    state = read_checkpoint_file(weights, "--weights")
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise UserValueError(f"--weights: {weights} holds a {type(state).__name__}; expected a model state dict")
    plugins = plugin_state_from_model_state(state, f"--weights {weights}")
    shape = sam_encoder_shape(state)
    if not shape:
        raise UserValueError(f"--weights: {weights} has no SAM image-encoder tensors ('sam.vision_encoder.*'), so "
                             f"the SAM size the plugins were trained on is unknown; expected a StableSAM checkpoint")
    size = save_plugin_file(out, plugins, shape)
    return {"out": out, "bytes": size, "sam_size": sam_size_name(shape), "tensors": len(plugins),
            "parameters": sum(int(v.numel()) for v in plugins.values())}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="the StableSAM training checkpoint (.pth), e.g. model_final.pth")
    p.add_argument("--out", required=True, help="the plugin file to write (.pth)")
    a = p.parse_args(argv)
    try:
        if os.path.isdir(a.out):
            raise UserValueError(f"--out: {a.out} is a folder; expected the plugin file's path (e.g. "
                                 f"{os.path.join(a.out, 'stable_sam_plugins.pth')})")
        parent = os.path.dirname(os.path.abspath(a.out))
        if os.path.exists(parent) and not os.path.isdir(parent):
            raise UserValueError(f"--out: {parent} is a file; expected a folder for {a.out}")
        os.makedirs(parent, exist_ok=True)
        info = export_stable_sam(a.weights, a.out)
    except UserError as e:
        return report_user_error(e)
    print(f"wrote {info['out']} ({info['bytes']} bytes, {info['tensors']} tensors, {info['parameters']} parameters; "
          f"for SAM {info['sam_size']})")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
