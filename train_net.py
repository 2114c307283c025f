#!/usr/bin/env python
"""Train or evaluate RASS (and the Mask2Former baselines) with detectron2.

    python train_net.py --config-file configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS path/to/model.pth
    python train_net.py --config-file ... --resume            # continue from OUTPUT_DIR/last_checkpoint
Any `KEY VALUE` pairs after the flags override the config. A problem with the input (config, data,
weights) is reported as one `error:` line (exit status 2); `--debug` (or RASS_DEBUG=1) adds the traceback.
"""
import argparse
import os
import platform
import sys
from typing import Optional, Sequence

import rass  # noqa: F401  (first: hides fvcore's TorchScript notice; light, parsing imports no torch)
from rass.utils.cli import DEBUG_FLAG, DEBUG_HELP, LaunchedMain, check_config_file, run_cli
from rass.utils.errors import UserError


def setup(args):
    """Config from `--config-file` + trailing overrides; logging, seeding and OUTPUT_DIR/config.yaml.

    This is detectron2's `default_setup` without its colourised dumps of the config file and of the
    full config (the full config is saved to OUTPUT_DIR/config.yaml instead) and with the environment
    table in OUTPUT_DIR/env_info.txt (one line in the log); colour on the console only on a terminal.
    """
    import detectron2
    import torch
    from detectron2.utils import comm
    from detectron2.utils.collect_env import collect_env_info
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from rass.config import setup_cfg
    from rass.utils.io import write_text_atomic
    from rass.utils.outputs import make_output_folder

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
    from rass.checkpoint import RASSCheckpointer
    from rass.engine import Trainer

    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        RASSCheckpointer(cfg, model).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch(*args, **kwargs):
    """detectron2's `launch` (imported when called: parsing the command line imports no torch)."""
    from detectron2.engine import launch as d2_launch

    return d2_launch(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """detectron2's `default_argument_parser` (the same options and defaults), built without importing
    torch or detectron2 so that ``--help`` and argument errors return at once; plus ``--debug``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint of OUTPUT_DIR (its last_checkpoint file), "
                             "else start from MODEL.WEIGHTS")
    parser.add_argument("--eval-only", action="store_true", help="perform evaluation only")
    parser.add_argument("--num-gpus", type=int, default=1, help="number of gpus *per machine*")
    parser.add_argument("--num-machines", type=int, default=1, help="total number of machines")
    parser.add_argument("--machine-rank", type=int, default=0, help="the rank of this machine (unique per machine)")
    # detectron2's deterministic port: an orphan process of an earlier run shows as an occupied port
    port = 2**15 + 2**14 + hash(os.getuid() if sys.platform != "win32" else 1) % 2**14
    parser.add_argument("--dist-url", default=f"tcp://127.0.0.1:{port}",
                        help="initialization URL for pytorch distributed backend")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help='config overrides at the end of the command: space-separated "PATH.KEY VALUE" pairs')
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    return parser


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the command line, check the config once, then run `main` in every process of `launch`."""
    args = build_parser().parse_args(argv)
    if not args.config_file:
        raise UserError("no --config-file given: train_net.py needs a config",
                        hint="e.g. --config-file configs/quickstart/tiny_rass.yaml (the configs are under configs/)")
    check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
    from rass.config import setup_cfg

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
