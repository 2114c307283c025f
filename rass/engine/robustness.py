"""Robustness evaluation: one model, one clean dataset, several fixed degradation levels.

For a registered clean dataset (ADE20K layout, e.g. ``ade20k_sem_seg_val``) and a list of levels
(``clean`` or any degradation preset name, e.g. ``lqseg_1``..``lqseg_3``), each level gets a fixed
degraded copy of the dataset, written once with `rass.data.degradation.offline.degrade_tree` on
the CPU (bit-reproducible) under ``<cache_dir>/<dataset>/<level>_seed<seed>/`` and reused by later
runs; an interrupted copy is completed on the next run with identical bytes. Every image of a
level is degraded with the seed ``derive_seed(seed, split, stem)``, the same for all levels, so
two levels of one image differ only by the preset. A copy is registered for the run as the
temporary dataset ``<dataset>__<level>`` (the clean dataset's metadata), and every set is
evaluated with `rass.engine.Trainer.test` (`CheckedSemSegEvaluator`). Pre-built degraded sets
(``ade20k_sem_seg_val_degraded``, ``reallq_sem_seg_val``, ...) can be added as rows as they are.

This module is the run's orchestration (copies, registration, one `Trainer.test` per row); the
metrics come from `rass.evaluation`'s evaluators and the report from
`rass.evaluation.robustness_report`: ``robustness.json``, ``robustness.md`` and ``robustness.png``
in the output folder, next to the ``eval_results.json`` of all rows.

Promptable-mask datasets (LQSeg, image + mask folders; `rass.data.datasets.lqseg`) work the same
way: their copies keep the image + mask layout (`degrade_tree(layout="image_mask")`, masks
unchanged), rows report IoU / Dice / BoundaryIoU / PixelAcc (fractions), and `compare` adds other
models evaluated on the same rows — e.g. plain SAM next to GleSAM or RobustSAM (`plain_sam_of`), on the
same SAM weights and the same seeded prompts, or models built from other configs (SAM vs RobustSAM vs GleSAM).

SOD / DIS sets (evaluator_type "sod", `rass.data.datasets.sod`: DIS5K, HRSOD, ..., sod_synthetic_test) have
the same image + mask layout and are copied the same way; rows report maxF / wF / S / meanE / MAE (0..1,
`rass.evaluation.sod.SODEvaluator`). MGD-SAM2 runs prompt-free; a promptable model (plain SAM2, SAM) on such a
set is given the GT mask's bounding box (`rass.engine.trainer.Trainer.build_test_loader`).

Single process only: call it outside `torch.distributed` (not through detectron2's `launch` with
several processes); a process group of more than one process is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

from rass.data.datasets import load_sem_seg_split
from rass.data.datasets.lqseg import EVALUATOR_TYPE as PROMPTABLE_EVALUATOR_TYPE
from rass.data.datasets.lqseg import load_image_mask_folder
from rass.data.datasets.sod import EVALUATOR_TYPE as SOD_EVALUATOR_TYPE
from rass.data.degradation.offline import degrade_tree
from rass.data.degradation.presets import PRESETS
from rass.evaluation.robustness_report import build_report, write_report
from rass.evaluation.sem_seg import write_eval_results
from rass.utils.errors import UserError
from rass.utils.io import sha256_file, write_text_atomic

from .trainer import Trainer

__all__ = [
    "CLEAN",
    "DEFAULT_LEVELS",
    "EvalSet",
    "RobustnessError",
    "parse_levels",
    "prepare_level",
    "evaluate_robustness",
    "plain_sam_of",
    "method_name",
]

logger = logging.getLogger("rass")

CLEAN = "clean"
DEFAULT_LEVELS: Tuple[str, ...] = (CLEAN, "lqseg_1", "lqseg_2", "lqseg_3")
SOURCE_INFO = "source.json"  # in each cached copy: which clean data it was made from


class RobustnessError(UserError, RuntimeError):
    """A level or dataset of a robustness run cannot be evaluated because of the user's input (an
    unknown level, an unregistered or unreadable dataset, a stale cached copy); the message names it."""


@dataclass(frozen=True)
class EvalSet:
    """One row of the report.

    Args:
        level: row label ("clean", a preset name, or a pre-built dataset's name).
        dataset: registered dataset that is evaluated.
        preset: degradation preset of a copy made here (None: evaluated as registered).
        root: folder of the degraded copy (None: the dataset's own root).
    """

    level: str
    dataset: str
    preset: Optional[str] = None
    root: Optional[str] = None


def _unknown_level(name: str) -> RobustnessError:
    known = ", ".join(sorted(PRESETS))
    return RobustnessError(f"Level {name!r}: unknown degradation preset; expected {CLEAN!r} or one of {known}")


def _stems(dicts: Sequence[dict]) -> List[str]:
    return sorted(os.path.splitext(os.path.basename(d["file_name"]))[0] for d in dicts)


def parse_levels(levels: Union[str, Sequence[str]]) -> List[str]:
    """Check a level list ("clean,lqseg_1" or a sequence): known names, no repeats, not empty."""
    items = [s.strip() for s in levels.split(",")] if isinstance(levels, str) else [str(s).strip() for s in levels]
    items = [s for s in items if s]
    if not items:
        raise RobustnessError(f"No levels given (expected e.g. {','.join(DEFAULT_LEVELS)})")
    for name in items:
        if name != CLEAN and name not in PRESETS:
            raise _unknown_level(name)
    repeated = sorted({s for s in items if items.count(s) > 1})
    if repeated:
        raise RobustnessError(f"Levels {repeated} are listed more than once in {items}")
    return items


def _dataset_dicts(name: str) -> List[dict]:
    if name not in DatasetCatalog.list():
        raise RobustnessError(f"Dataset {name!r} is not registered (see datasets/README.md)")
    try:
        dicts = DatasetCatalog.get(name)
    except UserError as e:  # a missing root etc.: keep the loader's message, name the dataset (bugs propagate)
        raise RobustnessError(f"Dataset {name!r} cannot be loaded: {e.message}", e.hint) from e
    if not dicts:
        raise RobustnessError(f"Dataset {name!r} has no images")
    return dicts


def _is_promptable(name: str) -> bool:
    return MetadataCatalog.get(name).get("evaluator_type", None) == PROMPTABLE_EVALUATOR_TYPE


def _is_image_mask(name: str) -> bool:
    """Whether a dataset is one images folder + one masks folder (promptable-mask and SOD / DIS sets)."""
    return _is_promptable(name) or MetadataCatalog.get(name).get("evaluator_type", None) == SOD_EVALUATOR_TYPE


def _label_key(d: dict) -> str:
    return "mask_file" if "mask_file" in d else "sem_seg_file_name"


def source_split(name: str) -> Tuple[str, str, List[dict]]:
    """Where a dataset's files are, read off its file paths.

    Returns:
        ADE20K layout: (root, split, dataset dicts), with every image at ``root/images/split/`` and
        every label at ``root/annotations_detectron2/split/``. Promptable-mask sets: (image folder,
        mask folder, dataset dicts).
    """
    dicts = _dataset_dicts(name)
    if _is_image_mask(name):
        image_dir, mask_dir = os.path.dirname(dicts[0]["file_name"]), os.path.dirname(dicts[0]["mask_file"])
        for d in dicts:
            if os.path.dirname(d["file_name"]) != image_dir or os.path.dirname(d["mask_file"]) != mask_dir:
                raise RobustnessError(f"Dataset {name!r}: images and masks must each lie in one folder for degraded "
                                      f"copies ({d['file_name']} / {d['mask_file']} vs {image_dir} / {mask_dir})")
        return image_dir, mask_dir, dicts
    image_dir = os.path.dirname(dicts[0]["file_name"])
    root, split = os.path.dirname(os.path.dirname(image_dir)), os.path.basename(image_dir)
    want_img, want_gt = os.path.join(root, "images", split), os.path.join(root, "annotations_detectron2", split)
    for d in dicts:
        if os.path.dirname(d["file_name"]) != want_img or os.path.dirname(d.get("sem_seg_file_name", "")) != want_gt:
            raise RobustnessError(
                f"Dataset {name!r} is not in the ADE20K layout needed for degraded copies: {d['file_name']} / "
                f"{d.get('sem_seg_file_name')} are not under {want_img} / {want_gt}"
            )
    return root, split, dicts


def fingerprint(dicts: Sequence[dict]) -> str:
    """SHA-256 over the file names and bytes of every image and label of a dataset."""
    h = hashlib.sha256()
    for d in sorted(dicts, key=lambda d: d["file_name"]):
        for key in ("file_name", _label_key(d)):
            h.update(f"{os.path.basename(d[key])}:{sha256_file(d[key])}\n".encode("utf-8"))
    return h.hexdigest()


def _check_source(folder: str, info: Dict) -> None:
    """Record which clean data a cached copy comes from; refuse a copy made from other data."""
    path = os.path.join(folder, SOURCE_INFO)
    if os.path.exists(path):
        with open(path, "r", encoding="utf-8") as f:
            old = json.load(f)
        if old.get("fingerprint") != info["fingerprint"] or old.get("split") != info["split"]:
            raise RobustnessError(
                f"Cached copy {folder} was made from other data than dataset {info['dataset']!r} now holds "
                f"({old.get('num_images')} vs {info['num_images']} images, fingerprint "
                f"{str(old.get('fingerprint'))[:12]} vs {info['fingerprint'][:12]}); "
                "delete it or use another cache folder"
            )
    else:
        os.makedirs(folder, exist_ok=True)
        write_text_atomic(path, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _register_copy(name: str, clean: str, root: str, split: str) -> None:
    """Register a degraded copy under `name` with the clean dataset's metadata (`split` is "" for a
    promptable set: its copy holds ``root/images`` and ``root/masks``)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    meta = {k: v for k, v in MetadataCatalog.get(clean).as_dict().items()
            if k not in ("name", "image_dir", "mask_dir", "root_env")}
    if _is_image_mask(clean):
        images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
        DatasetCatalog.register(name, lambda: load_image_mask_folder(name, images, masks, f"the robustness cache {root}"))
        meta.update(image_dir=images, mask_dir=masks)
    else:
        DatasetCatalog.register(name, lambda: load_sem_seg_split(name, root, split, f"the robustness cache {root}"))
    MetadataCatalog.get(name).set(**meta, degraded_from=clean)


def prepare_level(
    dataset: str,
    level: str,
    cache_dir: str,
    seed: int,
    source: Optional[Tuple] = None,
    progress: Optional[Callable[[int], Any]] = None,
) -> EvalSet:
    """Write (or complete, or reuse) the degraded copy of one level and register it.

    Args:
        dataset: registered clean dataset.
        level: "clean" (the dataset itself) or a degradation preset name.
        cache_dir: folder of the cached copies.
        seed: base seed of the copy.
        source: precomputed ``(root, split, dicts, fingerprint)`` of `dataset` (else computed).
        progress: optional factory ``progress(total)`` of a progress bar (e.g. tqdm) for the images
            still to degrade.

    Returns:
        The `EvalSet` of the level; its dataset is registered (remove it with `unregister`).
    """
    if level == CLEAN:
        return EvalSet(level, dataset)
    if level not in PRESETS:
        raise _unknown_level(level)
    root, split, dicts, fp = source if source is not None else (*source_split(dataset), None)
    fp = fp or fingerprint(dicts)
    folder = os.path.join(cache_dir, dataset, f"{level}_seed{int(seed)}")
    promptable = _is_image_mask(dataset)  # image + mask folders (promptable or SOD / DIS)
    info = {"dataset": dataset, "split": "" if promptable else split, "num_images": len(dicts), "fingerprint": fp,
            "preset": level, "seed": int(seed)}
    _check_source(folder, info)
    if promptable:  # root, split = image folder, mask folder; the copy keeps the image size
        report = degrade_tree(os.path.dirname(root), folder, preset=level, seed=int(seed), device="cpu",
                              progress=progress, layout="image_mask", image_dir=root, mask_dir=split)
        split = ""
    else:
        report = degrade_tree(root, folder, preset=level, seed=int(seed), splits=(split,), device="cpu",
                              progress=progress)
    if report.failures:
        bad = "; ".join(f"{p}: {r}" for p, r in report.failures[:5])
        raise RobustnessError(
            f"Level {level!r} of {dataset!r}: {len(report.failures)} image(s) could not be degraded ({bad})"
        )
    logger.info(f"Robustness level {level}: {report.written} image(s) degraded, {report.skipped} reused from {folder}")
    name = f"{dataset}__{level}"
    _register_copy(name, dataset, folder, split)
    try:
        if _stems(DatasetCatalog.get(name)) != _stems(dicts):
            raise RobustnessError(
                f"Level {level!r}: the copy in {folder} does not hold exactly the images of {dataset!r}"
            )
    except BaseException:
        unregister([name])
        raise
    return EvalSet(level, name, preset=level, root=folder)


def unregister(names: Sequence[str]) -> None:
    """Remove datasets registered by `prepare_level`."""
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


@contextlib.contextmanager
def _temporary(names: List[str]) -> Iterator[List[str]]:
    try:
        yield names
    finally:
        unregister(names)


def _evaluate(cfg, model: torch.nn.Module, item: EvalSet, output_dir: str) -> Dict:
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (item.dataset,)
    cfg.OUTPUT_DIR = output_dir
    cfg.freeze()
    try:
        return Trainer.test(cfg, model)[item.dataset]
    except UserError as e:  # re-raised with the level's name (bugs propagate with their traceback)
        raise RobustnessError(f"Level {item.level!r} (dataset {item.dataset!r}) failed to evaluate: {e.message}",
                              e.hint) from e


def method_name(model: torch.nn.Module) -> str:
    """The report's name of a model: "RobustSAM", "HQ-SAM", "Stable-SAM", "GleSAM + Stable-SAM" (Stable-SAM's
    plugins after GleSAM's enhancement), "GleSAM" (with the latent enhancement), "SAM", "SAM2" or "MGD-SAM2";
    "model" for any other model."""
    from rass.modeling.meta_arch import PromptableSAM, RobustSAM, StableSAM
    from rass.modeling.meta_arch.mgd_sam2 import MGDSAM2
    from rass.modeling.meta_arch.promptable_sam2 import PromptableSAM2
    from rass.modeling.meta_arch.sam_hq import PromptableSAMHQ

    if isinstance(model, MGDSAM2):
        return "MGD-SAM2"
    if isinstance(model, PromptableSAM2):
        return "SAM2"
    if isinstance(model, RobustSAM):
        return "RobustSAM"
    if isinstance(model, PromptableSAMHQ):
        return "HQ-SAM"
    if isinstance(model, StableSAM):
        return "Stable-SAM" if model.enhancer is None else "GleSAM + Stable-SAM"
    if isinstance(model, PromptableSAM):
        return "GleSAM" if model.enhancer is not None else "SAM"
    return "model"


def plain_sam_of(model: torch.nn.Module) -> torch.nn.Module:
    """Plain SAM sharing a GleSAM, RobustSAM or Stable-SAM model's SAM (same weights and prompts, SAM's own
    decoding)."""
    if method_name(model) not in ("GleSAM", "RobustSAM", "Stable-SAM", "GleSAM + Stable-SAM"):
        raise RobustnessError("Comparing with plain SAM needs a GleSAM model (META_ARCHITECTURE 'PromptableSAM' "
                              "with MODEL.GLESAM.ENHANCE True), a RobustSAM or a Stable-SAM model")
    return model.plain_sam()


def evaluate_robustness(
    cfg,
    model: torch.nn.Module,
    output_dir: str,
    dataset: Optional[str] = None,
    levels: Union[str, Sequence[str]] = DEFAULT_LEVELS,
    datasets: Sequence[str] = (),
    seed: int = 0,
    cache_dir: Optional[str] = None,
    info: Optional[Dict] = None,
    progress: Optional[Callable[[int], Any]] = None,
    compare: Optional[Dict[str, Union[torch.nn.Module, Tuple[torch.nn.Module, Any]]]] = None,
    model_name: str = "model",
) -> Dict:
    """Evaluate `model` on every level of `dataset` and on `datasets`; write the report.

    Single process only (see the module docstring).

    Args:
        cfg: project config of the model (DATASETS.TEST and OUTPUT_DIR are replaced per row).
        model: the model, weights loaded.
        output_dir: folder of robustness.json/.md/.png, eval_results.json, inference/ and vis/.
        dataset: registered clean dataset whose degraded copies are evaluated (None: only `datasets`).
        levels: "clean" and/or preset names, e.g. "clean,lqseg_1,lqseg_2,lqseg_3".
        datasets: registered datasets evaluated as they are (one row each, labelled by name).
        seed: base seed of the degraded copies.
        cache_dir: folder of the cached copies (required when a level other than "clean" is used).
        info: extra fields stored under "run" in robustness.json (e.g. config file, weights).
        progress: optional progress-bar factory for the degradation (see `prepare_level`).
        compare: further models evaluated on every row, by name (e.g. {"SAM": plain_sam_of(model)});
            their results go to ``<output_dir>/<name>/`` and into the report. A ``(model, cfg)`` pair is
            evaluated with its own config's test mapper (e.g. plain SAM2 given the GT box next to the
            prompt-free MGD-SAM2 on a SOD set); a bare model with `cfg` (the same prompts as `model`).
        model_name: name of `model` in the report (e.g. "GleSAM").

    Returns:
        The report dict written to robustness.json.
    """
    if comm.get_world_size() > 1:
        raise RobustnessError("Robustness evaluation runs in a single process; do not launch it with several")
    level_names = parse_levels(levels) if dataset is not None else []
    labels = level_names + [str(d) for d in datasets]
    if not labels:
        raise RobustnessError("Nothing to evaluate: give a clean dataset with levels and/or pre-built datasets")
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise RobustnessError(f"Rows {twice} appear more than once (levels and pre-built datasets share one list)")
    if any(lv != CLEAN for lv in level_names) and not cache_dir:
        raise RobustnessError("A cache folder for the degraded copies is required (cache_dir)")
    for name in datasets:
        _dataset_dicts(name)

    items: List[EvalSet] = []
    with _temporary([]) as temp:
        if dataset is not None:
            root, split, dicts = source_split(dataset)
            source = (root, split, dicts, fingerprint(dicts) if any(lv != CLEAN for lv in level_names) else None)
            for level in level_names:
                try:
                    item = prepare_level(dataset, level, cache_dir or "", seed, source, progress)
                except RobustnessError:
                    raise
                except UserError as e:  # re-raised with the level's name (bugs propagate with their traceback)
                    raise RobustnessError(f"Level {level!r} of {dataset!r} could not be prepared: {e.message}",
                                          e.hint) from e
                if item.dataset != dataset:
                    temp.append(item.dataset)
                items.append(item)
        items += [EvalSet(name, name) for name in datasets]

        results: "OrderedDict[str, Dict]" = OrderedDict()
        others: Dict[str, "OrderedDict[str, Dict]"] = {name: OrderedDict() for name in (compare or {})}
        for item in items:
            logger.info(f"Robustness: evaluating level {item.level!r} on {item.dataset}")
            results[item.level] = _evaluate(cfg, model, item, output_dir)
            for name, other in (compare or {}).items():
                logger.info(f"Robustness: evaluating {name} on level {item.level!r}")
                other, other_cfg = other if isinstance(other, tuple) else (other, cfg)
                others[name][item.level] = _evaluate(other_cfg, other, item, os.path.join(output_dir, name))
        num_images = {item.level: len(DatasetCatalog.get(item.dataset)) for item in items}

    by_dataset = OrderedDict((it.dataset, results[it.level]) for it in items)
    write_eval_results(by_dataset, os.path.join(output_dir, "eval_results.json"))
    run = {"dataset": dataset, "seed": int(seed), "cache_dir": cache_dir, "model": model_name, **(info or {})}
    report = build_report(items, results, num_images, run, compare=others)
    write_report(report, output_dir)
    return report
