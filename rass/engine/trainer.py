"""The training/evaluation loop: detectron2's `DefaultTrainer` with the project's parts."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rass.checkpoint import RASSCheckpointer
from rass.data.dataset_mappers import MAPPERS, SemanticDatasetMapper
from rass.evaluation import CheckedSemSegEvaluator, format_results_table, write_eval_results, write_overlays
from rass.solver import build_lr_scheduler, build_optimizer

logger = logging.getLogger("rass")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class Trainer(DefaultTrainer):
    """`DefaultTrainer` with the semantic mapper, checked `SemSegEvaluator`s, AdamW with a
    backbone LR multiplier and full-model clipping, WarmupPolyLR, atomic checkpoints, CPU-capable
    DDP (gloo) and an `eval_results.json` + overlay PNGs after every evaluation.

    Args:
        cfg: the frozen project config.
    """

    def __init__(self, cfg) -> None:  # DefaultTrainer.__init__ hard-codes GPU-only DDP/AMP
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_cuda = torch.device(cfg.MODEL.DEVICE).type == "cuda"
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None
        )
        use_amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning(f"SOLVER.AMP.ENABLED needs CUDA; training in float32 on {cfg.MODEL.DEVICE}")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RASSCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        name = cfg.INPUT.DATASET_MAPPER_NAME
        if name not in MAPPERS:
            raise KeyError(f"INPUT.DATASET_MAPPER_NAME: unknown mapper {name!r}; known: {sorted(MAPPERS)}")
        return build_detection_train_loader(cfg, mapper=MAPPERS[name](cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(cfg, dataset_name, mapper=SemanticDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators: Optional[List[DatasetEvaluator]] = None) -> Dict:
        """Evaluate on every dataset of DATASETS.TEST.

        Returns `{dataset_name: {"sem_seg": {metric: value}}}`, also written (main process) to
        ``OUTPUT_DIR/eval_results.json``; TEST.NUM_VIS overlay PNGs per dataset go to
        ``OUTPUT_DIR/vis/<dataset>/``.
        """
        results: Dict[str, Dict] = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            res = inference_on_dataset(model, loader, evaluator)
            results[name] = res
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(res)
        if comm.is_main_process() and results:
            logger.info("Semantic segmentation results:\n" + format_results_table(results))
            if cfg.OUTPUT_DIR:
                write_eval_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"))
                if cfg.TEST.NUM_VIS > 0:
                    mapper = SemanticDatasetMapper(cfg, is_train=False)
                    for name in cfg.DATASETS.TEST:
                        out = os.path.join(cfg.OUTPUT_DIR, "vis", name)
                        write_overlays(_unwrap(model), mapper, name, out, cfg.TEST.NUM_VIS)
        comm.synchronize()
        return results
