#!/usr/bin/env python
"""Train or evaluate RASS (and the Mask2Former baselines) with detectron2.

    python train_net.py --config-file configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
Any `KEY VALUE` pairs after the flags override the config.
"""
import os

import torch
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rass.checkpoint import RASSCheckpointer
from rass.config import setup_cfg
from rass.engine import Trainer


def setup(args):
    """Config from `--config-file` + trailing overrides, then detectron2's logging/seeding/dump."""
    cfg = setup_cfg(args.config_file, args.opts)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # processes on one CPU machine share its cores (oversubscribed OpenMP threads thrash)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rass")
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        RASSCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
