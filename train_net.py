#!/usr/bin/env python
"""Train or evaluate RASS (and the Mask2Former baselines) with detectron2.

    python train_net.py --config-file configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
Any `KEY VALUE` pairs after the flags override the config. A problem with the input (config, data,
weights) is reported as one `error:` line (exit status 2); `--debug` (or RASS_DEBUG=1) adds the traceback.
"""
import os
import platform
import sys
from typing import Optional, Sequence

import rass  # noqa: F401  (first: registers the project's parts and hides fvcore's TorchScript notice)

import detectron2
import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from rass.checkpoint import RASSCheckpointer
from rass.config import setup_cfg
from rass.engine import Trainer
from rass.utils.cli import DEBUG_FLAG, DEBUG_HELP, LaunchedMain, run_cli
from rass.utils.errors import UserError
from rass.utils.io import write_text_atomic
from rass.utils.outputs import make_output_folder


def setup(args):
    """Config from `--config-file` + trailing overrides; logging, seeding and OUTPUT_DIR/config.yaml.

    This is detectron2's `default_setup` without its colourised dumps of the config file and of the
    full config (the full config is saved to OUTPUT_DIR/config.yaml instead) and with the environment
    table in OUTPUT_DIR/env_info.txt (one line in the log); colour on the console only on a terminal.
    """
    cfg = setup_cfg(args.config_file, args.opts)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_local_size() > 1:
        # processes on one CPU machine share its cores (oversubscribed OpenMP threads thrash)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // comm.get_local_size()))
    out, rank, color = cfg.OUTPUT_DIR, comm.get_rank(), sys.stdout.isatty()
    if comm.is_main_process() and out:
        make_output_folder(out, "OUTPUT_DIR")
    setup_logger(out, distributed_rank=rank, name="fvcore", color=color)
    logger = setup_logger(out, distributed_rank=rank, color=color)
    setup_logger(out, distributed_rank=rank, name="rass", color=color)
    logger.info(f"Rank of current process: {rank}. World size: {comm.get_world_size()}")
    logger.info(f"Environment: Python {platform.python_version()}, torch {torch.__version__}, detectron2 "
                f"{detectron2.__version__}, CUDA available: {torch.cuda.is_available()}, device {cfg.MODEL.DEVICE}")
    logger.info("Command line arguments: " + str(args))
    if comm.is_main_process() and out:
        write_text_atomic(os.path.join(out, "env_info.txt"), collect_env_info() + "\n")
        path = os.path.join(out, "config.yaml")
        write_text_atomic(path, cfg.dump())
        logger.info(f"Config {args.config_file} with overrides {list(args.opts)}; full config saved to {path}, "
                    f"environment details to {os.path.join(out, 'env_info.txt')}")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        RASSCheckpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, check the config once, then run `main` in every process of `launch`."""
    parser = default_argument_parser()
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    if not args.config_file:
        raise UserError("no --config-file given: train_net.py needs a config",
                        hint="e.g. --config-file configs/quickstart/tiny_rass.yaml (the configs are under configs/)")
    setup_cfg(args.config_file, args.opts)  # config errors once, before any process starts
    launch(
        LaunchedMain(main),
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
    return 0


if __name__ == "__main__":
    run_cli(cli)
