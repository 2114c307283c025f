"""The training/evaluation loop: detectron2's `DefaultTrainer` with the project's parts."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Union

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from rass.checkpoint import RASSCheckpointer
from rass.checkpoint.divergence import MARKS_FILE, LossRange, TrainingDivergedError, mark_diverged, read_marks
from rass.checkpoint.resume import apply_config_hyperparameters, snapshot_hyperparameters
from rass.data.dataset_mappers import MAPPERS, MGDSODDatasetMapper, PromptableDatasetMapper, SemanticDatasetMapper
from rass.data.datasets.lqseg import EVALUATOR_TYPE as PROMPTABLE_EVALUATOR_TYPE
from rass.data.datasets.sod import EVALUATOR_TYPE as SOD_EVALUATOR_TYPE
from rass.engine.model_build import build_model_with_summary
from rass.evaluation import CheckedSemSegEvaluator, format_results_table, write_eval_results, write_overlays
from rass.evaluation.promptable import PromptableMaskEvaluator, format_promptable_table
from rass.evaluation.sod import SODEvaluator, format_sod_table
from rass.solver import build_lr_scheduler, build_optimizer
from rass.utils.errors import UserKeyError
from rass.utils.registry import check_datasets_registered

logger = logging.getLogger("rass")


def is_promptable(dataset_name: str) -> bool:
    """Whether a registered dataset is a promptable-mask set (image + one object mask per image)."""
    return MetadataCatalog.get(dataset_name).get("evaluator_type", None) == PROMPTABLE_EVALUATOR_TYPE


def is_sod(dataset_name: str) -> bool:
    """Whether a registered dataset is a salient-object / DIS set (evaluator_type "sod": image + grey mask)."""
    return MetadataCatalog.get(dataset_name).get("evaluator_type", None) == SOD_EVALUATOR_TYPE


def is_promptable_model(cfg) -> bool:
    """Whether MODEL.META_ARCHITECTURE answers point / box prompts: `PromptableSAM` (SAM, GleSAM and its
    subclasses RobustSAM, HQ-SAM, Stable-SAM), `PromptableSAM2`, or a registered class with ``promptable = True``."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from rass.modeling.meta_arch import PromptableSAM
    from rass.modeling.meta_arch.promptable_sam2 import PromptableSAM2

    cls = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE) if cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY \
        else None
    return cls is not None and (issubclass(cls, (PromptableSAM, PromptableSAM2))
                                or bool(getattr(cls, "promptable", False)))


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class LossRangeHook(hooks.HookBase):
    """Marks the checkpoints written after the total loss left its range (`rass.checkpoint.divergence`):
    the one written at iteration k when the loss of iteration k or k + 1 is out of range.

    Args:
        factor: SOLVER.LOSS_RANGE_FACTOR.
    """

    def __init__(self, factor: float) -> None:
        self.range = LossRange(factor=factor)

    def after_step(self) -> None:
        latest = self.trainer.storage.latest().get("total_loss")  # main process only, like the checkpoints
        if latest is not None and latest[1] == self.trainer.iter and self.range.observe(self.trainer.iter, latest[0]):
            self.mark(self.trainer.iter, latest[0])

    def mark(self, iteration: int, loss: float) -> List[str]:
        """Mark the checkpoints of iterations `iteration` - 1 and `iteration` (out-of-range `loss`).

        Args:
            iteration: the iteration whose loss was out of range.
            loss: that loss.

        Returns:
            The file names marked.
        """
        ck = self.trainer.checkpointer
        if not ck.save_dir or not ck.save_to_disk:
            return []
        names = [n for n, k in ck.saved_iterations.items() if k is not None and iteration - 1 <= k <= iteration]
        for name in names:
            mark_diverged(ck.save_dir, name, ck.saved_iterations[name], iteration, loss, self.range.reference)
        return names

    def diverged(self, error: FloatingPointError) -> TrainingDivergedError:
        """The user error for a NaN / inf loss at the current iteration (after marking its checkpoint).

        Args:
            error: detectron2's "Loss became infinite or NaN" error.
        """
        it, ck = self.trainer.iter, self.trainer.checkpointer
        self.range.observe(it, float("nan"))
        self.mark(it, float("nan"))
        msg = f"training diverged: {' '.join(str(error).split())}"
        if self.range.left_at is not None and self.range.left_at < it:
            msg += (f"; the loss left its range at iteration {self.range.left_at} ({self.range.left_loss:.4g}, over "
                    f"{self.range.factor:g} x the median {self.range.left_reference:.4g} of the first losses)")
        marks = read_marks(ck.save_dir) if ck.save_dir else {}
        cfg = getattr(self.trainer, "cfg", None)
        fix = (f"lower SOLVER.BASE_LR{f' (now {cfg.SOLVER.BASE_LR:g})' if cfg is not None else ''} or clip the "
               "gradients (SOLVER.CLIP_GRADIENTS.ENABLED True)")
        if not marks:
            return TrainingDivergedError(msg + "; no checkpoint was written after that", hint=fix)
        good = sorted((k, n) for n, k in ck.saved_iterations.items() if k is not None and n not in marks)
        msg += (f"; the checkpoints written since are marked as diverged in {os.path.join(ck.save_dir, MARKS_FILE)} "
                f"and --resume skips them: {', '.join(sorted(marks))}")
        return TrainingDivergedError(msg, hint=f"{fix}; --resume then continues from {good[-1][1]}" if good else
                                     f"{fix} and start without --resume (no checkpoint before the divergence)")


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
        model = create_ddp_model(  # a model with parameters left out of some losses says so (has_unused_parameters)
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_cuda else None,
            find_unused_parameters=bool(getattr(model, "has_unused_parameters", False)),
        )
        use_amp = cfg.SOLVER.AMP.ENABLED and on_cuda
        if cfg.SOLVER.AMP.ENABLED and not use_amp:
            logger.warning(f"SOLVER.AMP.ENABLED needs CUDA; training in float32 on {cfg.MODEL.DEVICE}")
        self._trainer = (AMPTrainer if use_amp else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RASSCheckpointer(cfg, model, allow_backbone_init=True, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from OUTPUT_DIR's last checkpoint (falling back past broken ones) with the config's
        learning-rate schedule, or load MODEL.WEIGHTS (model only) and start at iteration 0.

        On resume the iteration, model and optimizer moments come from the checkpoint; SOLVER.BASE_LR
        and the other optimizer settings are the current config's (logged when they differ).

        Args:
            resume: resume if OUTPUT_DIR has a `last_checkpoint`.
        """
        resuming = resume and self.checkpointer.has_checkpoint()
        snapshot = snapshot_hyperparameters(self.optimizer, self.scheduler) if resuming else None
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resuming:
            self.start_iter = self.iter + 1
            change = apply_config_hyperparameters(self.optimizer, self.scheduler, snapshot, self.cfg.SOLVER.BASE_LR)
            if change:
                logger.info(f"resuming at iteration {self.start_iter}; {change}")

    @classmethod
    def build_model(cls, cfg) -> torch.nn.Module:
        """The model of `cfg`; logs total / trainable parameters per part instead of the module tree
        (printed in debug mode only) and warns about random weights only when they stay random."""
        return build_model_with_summary(cfg)

    def build_hooks(self) -> list:
        """detectron2's hooks; the periodic checkpointer keeps only the newest
        SOLVER.CHECKPOINT_MAX_TO_KEEP checkpoints when that is > 0 (`model_final.pth` is always kept);
        a `LossRangeHook` after it marks checkpoints written after the loss left its range."""
        hook_list = super().build_hooks()
        keep = int(self.cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP)
        at = len(hook_list)
        for i, h in enumerate(hook_list):
            if isinstance(h, hooks.PeriodicCheckpointer):
                at = i + 1
                if keep > 0:
                    h.max_to_keep = keep
        self.loss_range = LossRangeHook(float(self.cfg.SOLVER.LOSS_RANGE_FACTOR))
        hook_list.insert(at, self.loss_range)  # after the checkpointer: sees what it saved this step
        return hook_list

    def run_step(self) -> None:
        """One iteration; a NaN / inf loss raises `TrainingDivergedError` naming the checkpoints it marked."""
        try:
            super().run_step()
        except FloatingPointError as e:
            if isinstance(e, TrainingDivergedError):
                raise
            raise self.loss_range.diverged(e) from e

    @classmethod
    def build_train_loader(cls, cfg):
        name = cfg.INPUT.DATASET_MAPPER_NAME
        if name not in MAPPERS:
            raise UserKeyError(f"INPUT.DATASET_MAPPER_NAME: unknown mapper {name!r}; known: {sorted(MAPPERS)}")
        check_datasets_registered("DATASETS.TRAIN", cfg.DATASETS.TRAIN)
        return build_detection_train_loader(cfg, mapper=MAPPERS[name](cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        """Test loader of `dataset_name`: the promptable mapper for promptable-mask datasets (LQSeg,
        image + mask folders), "mgd_sod" for SOD / DIS sets, else the semantic mapper. A promptable model
        (`is_promptable_model`, e.g. plain SAM2) on a SOD / DIS set gets the promptable mapper with the
        "box" protocol: the GT mask's bounding box (one object per image; TEST.PROMPT.BOX_NOISE applies),
        evaluated by the SOD evaluator like a prompt-free model."""
        check_datasets_registered("DATASETS.TEST", [dataset_name])
        if is_sod(dataset_name) and is_promptable_model(cfg):
            mapper = PromptableDatasetMapper(cfg, is_train=False, protocol="box")
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)
        if is_sod(dataset_name):
            return build_detection_test_loader(cfg, dataset_name, mapper=MGDSODDatasetMapper(cfg, is_train=False))
        if is_promptable(dataset_name):
            return build_detection_test_loader(cfg, dataset_name, mapper=PromptableDatasetMapper(cfg, is_train=False))
        return build_detection_test_loader(cfg, dataset_name, mapper=SemanticDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: Optional[str] = None) -> DatasetEvaluator:
        """The checked semantic evaluator (per-class Boundary IoU, short log) of `dataset_name`;
        detectron2's files go to `output_folder` (default ``OUTPUT_DIR/inference/<dataset>``)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if is_promptable(dataset_name):
            return PromptableMaskEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                                           num_vis=cfg.TEST.NUM_VIS,
                                           vis_dir=os.path.join(cfg.OUTPUT_DIR, "vis", dataset_name))
        if is_sod(dataset_name):
            return SODEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        return CheckedSemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model: torch.nn.Module, evaluators: Optional[Union[DatasetEvaluator, List[DatasetEvaluator]]] = None) -> Dict:
        """Evaluate on every dataset of DATASETS.TEST.

        Returns `{dataset_name: {"sem_seg": {metric: value}}}`, also written (main process) to
        ``OUTPUT_DIR/eval_results.json`` (the full per-class dict goes only there); the log gets
        each evaluator's per-class table (classes present) and one summary table (mIoU, fwIoU,
        mACC, pACC, mBoundaryIoU per dataset). TEST.NUM_VIS overlay PNGs per dataset go to
        ``OUTPUT_DIR/vis/<dataset>/``.

        Args:
            cfg: the project config.
            model: the model to evaluate.
            evaluators: one evaluator (or a list of them) per DATASETS.TEST entry (default:
                `build_evaluator`).
        """
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"Trainer.test: {len(evaluators)} evaluators given for "
                             f"{len(cfg.DATASETS.TEST)} datasets in DATASETS.TEST {tuple(cfg.DATASETS.TEST)}")
        results: Dict[str, Dict] = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            if isinstance(evaluator, PromptableMaskEvaluator):
                evaluator.use_model(_unwrap(model))  # pictures: the panel's name, GleSAM's plain-SAM mask too
            res = inference_on_dataset(model, loader, evaluator)
            results[name] = res
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(res)  # the summary metrics only: it skips the per-class "-" keys
        if comm.is_main_process() and results:
            semantic = OrderedDict((k, v) for k, v in results.items() if "sem_seg" in v)
            promptable = OrderedDict((k, v) for k, v in results.items() if "promptable" in v)
            sod = OrderedDict((k, v) for k, v in results.items() if "sod" in v)
            if semantic:
                logger.info("Semantic segmentation results:\n" + format_results_table(semantic))
            if promptable:
                logger.info("Promptable segmentation results (fractions 0..1, averaged over images):\n"
                            + format_promptable_table(promptable))
            if sod:
                logger.info("SOD / DIS results:\n" + format_sod_table(sod))
            if cfg.OUTPUT_DIR:
                write_eval_results(results, os.path.join(cfg.OUTPUT_DIR, "eval_results.json"))
                if cfg.TEST.NUM_VIS > 0:
                    mapper = SemanticDatasetMapper(cfg, is_train=False)
                    for name in semantic:
                        out = os.path.join(cfg.OUTPUT_DIR, "vis", name)
                        write_overlays(_unwrap(model), mapper, name, out, cfg.TEST.NUM_VIS)
        comm.synchronize()
        return results
