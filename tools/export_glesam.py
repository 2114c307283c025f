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
import sys
from typing import List, Optional

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


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="the config the model was trained with")
    p.add_argument("--weights", required=True, help="the project checkpoint (.pth) to export")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    a = p.parse_args(argv)
    from detectron2.modeling import build_model

    import rass  # noqa: F401  (registers the models)
    from rass.checkpoint import RASSCheckpointer
    from rass.config import setup_cfg

    if not os.path.isfile(a.weights):
        print(f"error: --weights: checkpoint file not found: {a.weights}", file=sys.stderr)
        return 2
    try:
        cfg = setup_cfg(a.config_file, list(a.opts) + ["MODEL.DEVICE", "cpu"])
        if cfg.MODEL.META_ARCHITECTURE != "PromptableSAM":
            raise ValueError(f"{a.config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; "
                             "only GleSAM / SAM models (PromptableSAM) export to these formats")
        model = build_model(cfg)
        RASSCheckpointer(model).load(a.weights)
        info = export_glesam(model, a.out)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info["lora"]:
        print(f"wrote {info['lora']} ({info['lora_bytes']} bytes)")
    print(f"wrote {info['sam']} ({info['sam_keys']} tensors, segment-anything names)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
