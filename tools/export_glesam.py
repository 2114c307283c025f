#!/usr/bin/env python
"""Export a trained GleSAM model (a project checkpoint, e.g. model_final.pth of a stage-1 or stage-2 run)
to the released formats, which GleSAM's and SAM's own code read, and which this project reads back:

    <out>/pytorch_lora_weights.safetensors   the CRE UNet's LoRA (diffusers key style, fp32)  -> MODEL.GLESAM.LORA_PATH
    <out>/sam.pth                             SAM's full state dict, segment-anything names   -> MODEL.SAM.CHECKPOINT

Example:
    python tools/export_glesam.py --config-file configs/lqseg/glesam_stage2_vitl_sd21.yaml \\
        --weights output/glesam_stage2_vitl_sd21/model_final.pth --out exported/glesam
Trailing KEY VALUE pairs override the config.
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, List, Optional

from rass.utils.cli import add_init_seed_argument, check_config_file, report_user_error
from rass.utils.errors import UserError, UserValueError

if TYPE_CHECKING:
    import torch


def export_glesam(model: torch.nn.Module, out_dir: str) -> dict:
    """Write the LoRA file (when the model has an enhancer) and SAM's state dict in original names.

    Args:
        model: a `PromptableSAM` (or a DDP wrapper of one).
        out_dir: output folder (created).

    Returns:
        {"lora": path or None, "lora_bytes": size, "sam": path, "sam_keys": number of tensors}.
    """
    from rass.checkpoint.sam_loader import save_sam_original
    from rass.modeling.enhancement import save_glesam_lora

    model = getattr(model, "module", model)
    os.makedirs(out_dir, exist_ok=True)
    info = {"lora": None, "lora_bytes": 0}
    if getattr(model, "enhancer", None) is not None:
        info["lora"] = os.path.join(out_dir, "pytorch_lora_weights.safetensors")
        info["lora_bytes"] = save_glesam_lora(model.enhancer.unet, info["lora"])
    info["sam"] = os.path.join(out_dir, "sam.pth")
    info["sam_keys"] = len(save_sam_original(model.sam, info["sam"]))
    return info


def check_output_folder(path: str, key: str = "--out") -> None:
    """Check that `path` is a folder or can be created as one (no file in the way).

    Args:
        path: the output folder.
        key: the argument that gave it, for the message.

    Raises:
        UserValueError: `path` or one of its parents is a file.
    """
    from rass.utils.outputs import nearest_existing

    probe = nearest_existing(path)
    if not os.path.isdir(probe):
        where = "is a file" if probe == os.path.abspath(path) else f"is below {probe}, which is a file"
        raise UserValueError(f"{key}: {path} {where}; expected an output folder (existing or new)",
                             hint="choose another --out")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the config the model was trained with")
    p.add_argument("--weights", required=True, help="the project checkpoint (.pth) to export")
    p.add_argument("--out", required=True, help="output folder")
    add_init_seed_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args(argv)
    try:
        check_config_file(a.config_file)  # a mistyped path is reported before the heavy imports
    except UserError as e:
        return report_user_error(e)
    # after parsing: --help and argument errors answer without importing torch & co.
    # (setup_cfg registers the models)
    from rass.checkpoint import RASSCheckpointer
    from rass.checkpoint.files import check_weight_path
    from rass.config import setup_cfg
    from rass.engine.model_build import build_model_noting_random_weights, seeded_init

    try:
        check_weight_path(a.weights, "--weights")
        check_output_folder(a.out, "--out")  # before the (slow) model build
        # MODEL.WEIGHTS: the "random weights" warnings wait for the checkpoint (dropped when it sets those parts)
        cfg = setup_cfg(a.config_file, list(a.opts) + ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", a.weights])
        if cfg.MODEL.META_ARCHITECTURE != "PromptableSAM":
            raise UserValueError(f"{a.config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; "
                                 "only GleSAM / SAM models (PromptableSAM) export to these formats")
        with seeded_init(a.init_seed):  # what the checkpoint does not set is the same run after run
            model, _ = build_model_noting_random_weights(cfg)
        RASSCheckpointer(model).load(a.weights)
        info = export_glesam(model, a.out)
    except UserError as e:
        return report_user_error(e)
    if info["lora"]:
        print(f"wrote {info['lora']} ({info['lora_bytes']} bytes)")
    print(f"wrote {info['sam']} ({info['sam_keys']} tensors, segment-anything names)")
    return 0


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
