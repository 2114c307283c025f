"""The robustness matrix: promptable models x image quality x prompt quality, on one image + mask dataset.

Models are given as config files (optionally with a weight file), so every promptable META_ARCHITECTURE
(PromptableSAM for SAM / GleSAM, PromptableSAMHQ, RobustSAM, StableSAM, PromptableSAM2, ...) is evaluated without
code here: each is built by `Trainer.build_model`, fed the same input dicts (the "promptable" mapper's image, the
protocol's prompts as "boxes" [P, 4] / "point_coords" [P, n, 2] / "point_labels" [P, n]) and must return
"masks" [P, H, W] at the GT size.

Every model must read the images at one size (INPUT.PROMPT.IMAGE_SIZE; 0 = as stored, HQ-SAM's protocol, SAM's
transform then resizes the longest side): the prompts are drawn in that frame.
Image quality: the levels of `rass.engine.robustness` ("clean" or a degradation preset), each a cached degraded
copy made by its `prepare_level` (the same cache and copies as tools/eval_robustness.py).
Prompt quality: the protocols of `rass.data.prompt_quality` (TEST.PROMPT_QUALITY): per object the draw-0 prompt
is scored (IoU and boundary IoU as HQ-SAM computes them: mask logits > threshold at the GT size vs GT > 128,
band 0.02 of the diagonal; `rass.evaluation.promptable.mask_metrics`) and, for the random protocols, all K draws
give the stability (mean pairwise IoU of the K masks). Prompts of one protocol are decoded in one forward per
image (the K draws as K prompts; box protocols share one forward).

Results per (model, level, protocol): "mIoU", "mBIoU" (means over images, fractions 0..1), "stability" (mean over
images; None for a deterministic protocol), "num_images", "notes" (objects prompted by a fallback rule). Files
(atomic): ``robustness_matrix.json`` (+ ``robustness_matrix_per_image.json``), ``robustness_matrix.md`` (a table
per model: rows levels, columns protocols) and ``matrix_<metric>.png`` (a heat map per metric, a panel per model).

Processes: run inside detectron2's `launch` with several processes (gloo on CPU), images are split by index
(i % world == rank), the per-image records gathered on the main process and averaged in sorted order: the numbers
do not depend on the process count (prompts are seeded per object). Degraded copies are written by the main
process first, then the others reuse them.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

from rass.data.prompt_quality import ProtocolSpec, is_random, object_prompts, parse_protocol
from rass.evaluation.promptable import mask_metrics, mean_pairwise_iou
from rass.utils.errors import UserValueError
from rass.utils.io import atomic_open, write_bytes_atomic, write_text_atomic

from .robustness import (
    CLEAN, EvalSet, RobustnessError, _is_promptable, fingerprint, parse_levels, prepare_level, source_split, unregister,
)

__all__ = ["ModelSpec", "parse_model_specs", "build_from_config", "evaluate_image", "run_matrix", "aggregate",
           "format_matrix_markdown", "plot_matrix_png", "write_matrix", "MATRIX_METRICS"]

logger = logging.getLogger("rass")

MATRIX_METRICS = ("mIoU", "mBIoU", "stability")
JSON_NAME, MD_NAME = "robustness_matrix.json", "robustness_matrix.md"
PER_IMAGE_NAME = "robustness_matrix_per_image.json"


@dataclass(frozen=True)
class ModelSpec:
    """One model of the matrix.

    Args:
        name: its name in the results (the config file's stem unless given).
        config_file: its project config.
        weights: a weight file loaded with the project's checkpointer ("" = the files the config names).
    """

    name: str
    config_file: str
    weights: str = ""


def parse_model_specs(items: Sequence[str]) -> List[ModelSpec]:
    """Models from command-line items ``CONFIG``, ``CONFIG=WEIGHTS`` or ``NAME:CONFIG[=WEIGHTS]``.

    Raises:
        UserValueError: no model, a missing config file, or two models with one name.
    """
    specs = []
    for item in items:
        name, rest = (item.split(":", 1) if ":" in item and not os.path.exists(item) else ("", item))
        config, _, weights = rest.partition("=")
        if not os.path.isfile(config):
            raise UserValueError(f"--models {item!r}: config file {config!r} does not exist",
                                 hint="give CONFIG, CONFIG=WEIGHTS or NAME:CONFIG[=WEIGHTS]")
        specs.append(ModelSpec(name or os.path.splitext(os.path.basename(config))[0], config, weights))
    if not specs:
        raise UserValueError("--models: no model given (expected one or more config files)")
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserValueError(f"--models: the name(s) {twice} are used twice; name them as NAME:CONFIG")
    return specs


def build_from_config(spec: ModelSpec, opts: Sequence[str] = (), init_seed: Optional[int] = None):
    """(config, model in eval mode) of one `ModelSpec`: `Trainer.build_model` under `seeded_init` (random parts
    seeded alike in every process), then its weight file through the project's checkpointer.

    Args:
        spec: the model.
        opts: KEY VALUE overrides applied to every model's config.
        init_seed: seed of the parts without weights (None: `seeded_init`'s default).
    """
    from rass.checkpoint import RASSCheckpointer
    from rass.config import setup_cfg
    from rass.engine.model_build import seeded_init

    from .trainer import Trainer

    cfg = setup_cfg(spec.config_file, list(opts) + (["MODEL.WEIGHTS", spec.weights] if spec.weights else []))
    with seeded_init(*(() if init_seed is None else (int(init_seed),))):
        model = Trainer.build_model(cfg)
    if spec.weights:
        RASSCheckpointer(cfg, model).load(spec.weights)
    return cfg, model.eval()


def _groups(protocols: Sequence[str]) -> "OrderedDict[Tuple[str, int], List[str]]":
    """Protocols decoded in one forward: every box-only protocol together, each points / box+points one alone."""
    out: "OrderedDict[Tuple[str, int], List[str]]" = OrderedDict()
    for p in protocols:
        kind, _, n = parse_protocol(p)
        out.setdefault((kind, n), []).append(p)
    return out


def _encoded_once(model: Callable, image: torch.Tensor) -> Optional[Callable[[Dict], Dict]]:
    """A SAM-family model's decoder bound to `image`'s features, computed once for all protocol groups (the
    image encoder is most of a forward's cost); None for other models (each group then runs a whole forward).
    The masks are those of `model([query])`: `decode` is the second half of the models' `forward`."""
    from rass.engine.promptable_predictor import prompt_codec
    from rass.modeling.meta_arch import PromptableSAM

    if not (isinstance(model, PromptableSAM) or hasattr(model, "prompt_features")):
        return None
    encode, decode = prompt_codec(model)
    with torch.no_grad():
        features, valid = encode([image])
        own = tuple(f[0:1] for f in features)
        if getattr(model, "enhancer", None) is not None:  # GleSAM: the decoder reads the enhanced embedding
            own = (model.enhancer(own[0]),) + own[1:]
    return lambda query: decode(query, own, valid[0])


def evaluate_image(model: Callable, inp: Dict, spec: ProtocolSpec, protocols: Sequence[str],
                   object_index: int = 0) -> List[Dict[str, Any]]:
    """The per-protocol records of one image (one object) for one model.

    Args:
        model: a promptable model in eval mode (input dicts -> outputs with "masks" [P, H, W]).
        inp: the "promptable" mapper's dict ("image", "gt_mask", "image_id", "height", "width").
        spec: the protocol settings (draws K, seed).
        protocols: the protocols to run.
        object_index: the object's index in its image (its prompts' seed).

    Returns:
        One record per protocol: protocol, IoU, BoundaryIoU, stability (None for a deterministic protocol), note.
    """
    gt = inp["gt_mask"].cpu().numpy().astype(bool)
    mask = np.where(gt, 255, 0).astype(np.uint8)
    hw = tuple(int(v) for v in inp["image"].shape[-2:])
    image_id = str(inp["image_id"])
    records = []
    decode = _encoded_once(model, inp["image"])
    for group in _groups(protocols).values():
        drawn = [object_prompts(mask, hw, p, image_id, object_index, spec.seed, spec.draws) for p in group]
        keys = drawn[0].as_inputs()
        batch = {k: torch.from_numpy(np.concatenate([d.as_inputs()[k] for d in drawn])) for k in keys}
        query = {"image": inp["image"], "height": inp["height"], "width": inp["width"], "image_id": image_id, **batch}
        with torch.no_grad():
            masks = (decode(query) if decode is not None else model([query])[0])["masks"]
        masks = masks.detach().cpu().numpy().astype(bool)
        total = sum(len(next(iter(d.as_inputs().values()))) for d in drawn)
        if masks.shape != (total, *gt.shape):
            raise ValueError(f"image {image_id!r}: the model returned masks {masks.shape}, expected "
                             f"{(total, *gt.shape)} ({total} prompts at the GT size)")
        start = 0
        for p, d in zip(group, drawn):
            k = len(next(iter(d.as_inputs().values())))
            own = masks[start:start + k]
            start += k
            m = mask_metrics(own[0], gt)
            records.append({"protocol": p, "IoU": m["IoU"], "BoundaryIoU": m["BoundaryIoU"],
                            "stability": mean_pairwise_iou(own) if is_random(p) and k > 1 else None, "note": d.note})
    order = {p: i for i, p in enumerate(protocols)}
    return sorted(records, key=lambda r: order[r["protocol"]])


def aggregate(records: Sequence[Dict], models: Sequence[str], levels: Sequence[str],
              protocols: Sequence[str]) -> Dict[str, Dict[str, Dict[str, Dict[str, Any]]]]:
    """model -> level -> protocol -> {"mIoU", "mBIoU", "stability", "num_images", "notes"} from per-image records
    (averaged in image-id order, so the result does not depend on how records were split over processes)."""
    out: Dict[str, Dict[str, Dict[str, Dict[str, Any]]]] = {}
    keyed: Dict[Tuple[str, str, str], List[Dict]] = {}
    for r in records:
        keyed.setdefault((r["model"], r["level"], r["protocol"]), []).append(r)
    for model in models:
        for level in levels:
            for p in protocols:
                rows = sorted(keyed.get((model, level, p), []), key=lambda r: r["image_id"])
                ids = [r["image_id"] for r in rows]
                if len(set(ids)) != len(ids):
                    raise ValueError(f"robustness matrix: {model}/{level}/{p}: images evaluated more than once")
                st = [r["stability"] for r in rows if r["stability"] is not None]
                out.setdefault(model, {}).setdefault(level, {})[p] = {
                    "mIoU": float(np.mean([r["IoU"] for r in rows])) if rows else None,
                    "mBIoU": float(np.mean([r["BoundaryIoU"] for r in rows])) if rows else None,
                    "stability": float(np.mean(st)) if st else None,
                    "num_images": len(rows), "notes": sum(bool(r["note"]) for r in rows)}
    return out


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{100.0 * v:.1f}"


def format_matrix_markdown(report: Dict) -> str:
    """A table per model: rows = image-quality levels, columns = prompt protocols, cells "mIoU / mBIoU / ST" (%)."""
    run = report["run"]
    lines = [f"# Robustness matrix — {run.get('dataset')}", "",
             f"{run.get('num_images')} image(s) per level; cells: mIoU / mBIoU / stability (%, '-' = none: a "
             f"deterministic protocol); stability = mean pairwise IoU of one object's masks under "
             f"{report['definitions']['draws']} draws.", ""]
    for model in report["models"]:
        lines += [f"## {model}", "", "| level | " + " | ".join(report["protocols"]) + " |",
                  "|---|" + "---|" * len(report["protocols"])]
        for level in report["levels"]:
            cells = [" / ".join(_fmt(report["results"][model][level][p][k]) for k in MATRIX_METRICS)
                     for p in report["protocols"]]
            lines.append(f"| {level} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_matrix_png(report: Dict, metric: str) -> bytes:
    """PNG bytes of the heat map of one metric: a panel per model, levels x protocols, values annotated (%)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models, levels, protocols = report["models"], report["levels"], report["protocols"]
    fig = Figure(figsize=(max(4.0, 0.9 * len(protocols) + 2.0), (0.45 * len(levels) + 1.3) * len(models)), dpi=100)
    FigureCanvasAgg(fig)
    for i, model in enumerate(models):
        ax = fig.add_subplot(len(models), 1, i + 1)
        grid = np.array([[np.nan if report["results"][model][lv][p][metric] is None
                          else 100.0 * report["results"][model][lv][p][metric] for p in protocols] for lv in levels])
        ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
        for (r, c), v in np.ndenumerate(grid):
            ax.text(c, r, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if not np.isnan(v) and v < 60 else "black")
        ax.set_xticks(range(len(protocols)))
        ax.set_xticklabels(protocols if i == len(models) - 1 else [""] * len(protocols), rotation=30, ha="right",
                           fontsize=7)
        ax.set_yticks(range(len(levels)))
        ax.set_yticklabels(levels, fontsize=7)
        ax.set_title(f"{model} — {metric} (%)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_matrix(report: Dict, records: Sequence[Dict], output_dir: str) -> Dict[str, str]:
    """Write the JSON files, the markdown tables and a heat map per metric into `output_dir` (atomically)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, JSON_NAME), "per_image": os.path.join(output_dir, PER_IMAGE_NAME),
             "md": os.path.join(output_dir, MD_NAME)}
    with atomic_open(paths["json"], "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    ordered = sorted(records, key=lambda r: (r["model"], r["level"], r["image_id"], r["protocol"]))
    with atomic_open(paths["per_image"], "w") as f:
        json.dump(ordered, f, indent=0, allow_nan=False)
    write_text_atomic(paths["md"], format_matrix_markdown(report))
    for metric in MATRIX_METRICS:
        paths[metric] = os.path.join(output_dir, f"matrix_{metric}.png")
        write_bytes_atomic(paths[metric], plot_matrix_png(report, metric))
    return paths


def _prepare_levels(dataset: str, levels: Sequence[str], cache_dir: Optional[str], seed: int) -> List[EvalSet]:
    """The levels' registered datasets; copies written by the main process, then reused by the others."""
    if any(lv != CLEAN for lv in levels) and not cache_dir:
        raise RobustnessError("A cache folder for the degraded copies is required (cache_dir)")
    root, split, dicts = source_split(dataset)
    if not _is_promptable(dataset):
        raise RobustnessError(f"Dataset {dataset!r} is not a promptable (image + mask) set: the matrix evaluates "
                              f"promptable models")
    source = (root, split, dicts, fingerprint(dicts) if any(lv != CLEAN for lv in levels) else None)
    items: List[EvalSet] = []
    for turn in (0, 1):  # the main process writes, the others reuse the finished copies
        if (turn == 0) == comm.is_main_process():
            items = [prepare_level(dataset, lv, cache_dir or "", seed, source) for lv in levels]
        comm.synchronize()
    return items


def run_matrix(models: Sequence[ModelSpec], build: Callable[[ModelSpec], Tuple[Any, torch.nn.Module]], dataset: str,
               levels: Sequence[str] = (CLEAN,), spec: Optional[ProtocolSpec] = None, output_dir: Optional[str] = None,
               cache_dir: Optional[str] = None, seed: int = 0, limit: int = 0, info: Optional[Dict] = None,
               progress: Optional[Callable[[str], Any]] = None) -> Optional[Dict]:
    """Evaluate every model on every level x protocol (see the module doc); the main process writes the files.

    Args:
        models: the models (names, configs, weights).
        build: ModelSpec -> (its config, the model in eval mode, weights loaded).
        dataset: a registered promptable (image + mask) dataset, e.g. one of HQ-SAM's four sets (hqseg_dis_val,
            hqseg_thin_test, hqseg_coift, hqseg_hrsod).
        levels: "clean" and/or degradation presets (`rass.engine.robustness.parse_levels`).
        spec: the prompt protocols (default: the first model's TEST.PROMPT_QUALITY).
        output_dir: where the files go (None: not written).
        cache_dir: folder of the degraded copies (required for levels other than "clean").
        seed: base seed of the degraded copies.
        limit: evaluate only the first N images (by image id) of each level; 0 = all.
        info: extra fields stored under "run".
        progress: called with a short line per (model, level).

    Returns:
        The report dict on the main process, None on the others.
    """
    level_names = parse_levels(levels)
    if int(limit) < 0:
        raise UserValueError(f"--limit {limit}: expected N >= 0 (0 = every image)")
    items = _prepare_levels(dataset, level_names, cache_dir, seed)
    world, rank = comm.get_world_size(), comm.get_rank()
    records: List[Dict] = []
    num_images, image_size = 0, None
    try:
        for m in models:
            cfg, model = build(m)
            size = int(cfg.INPUT.PROMPT.IMAGE_SIZE)
            if image_size is not None and size != image_size[1]:
                raise UserValueError(f"INPUT.PROMPT.IMAGE_SIZE differs between the models ({image_size[0]}: "
                                     f"{image_size[1]}, {m.name}: {size}): their prompts would be in other frames",
                                     hint="set one size for all (tools/eval_robustness_matrix.py --image-size)")
            image_size = image_size or (m.name, size)
            spec = spec or ProtocolSpec.from_config(cfg)
            protocols = spec.names()
            from rass.data.dataset_mappers.promptable import PromptableDatasetMapper

            mapper = PromptableDatasetMapper(cfg, is_train=False)
            for item in items:
                dicts = sorted(DatasetCatalog.get(item.dataset), key=lambda d: str(d["image_id"]))
                dicts = dicts[:int(limit)] if limit else dicts
                num_images = len(dicts)
                if progress is not None:
                    progress(f"{m.name} on {item.level}: {len(dicts)} image(s) x {len(protocols)} protocol(s)")
                for i, d in enumerate(dicts):
                    if i % world != rank:
                        continue
                    inp = mapper(d)
                    for r in evaluate_image(model, inp, spec, protocols):
                        records.append({"model": m.name, "level": item.level, "image_id": str(d["image_id"]), **r})
            del model
    finally:
        unregister([it.dataset for it in items if it.dataset != dataset])
    if world > 1:
        gathered = comm.gather(records, dst=0)
        if not comm.is_main_process():
            return None
        records = [r for part in gathered for r in part]
    names = [m.name for m in models]
    report = {
        "run": {"dataset": dataset, "levels": level_names, "seed": int(seed), "cache_dir": cache_dir,
                "limit": int(limit), "num_images": num_images, "image_size": image_size[1] if image_size else None,
                "processes": world, **(info or {})},
        "definitions": {"mIoU": "mean over images of IoU(mask logits > threshold at the GT size, GT > 128)",
                        "mBIoU": "mean over images of boundary IoU (band: 3x3 erosion x round(0.02 * diagonal))",
                        "stability": "mean over images of the mean pairwise IoU of one object's masks under the "
                                     "protocol's draws (random protocols only)",
                        "draws": spec.draws, "prompt_seed": spec.seed,
                        "box_noise": "HQ-SAM box_noise: cx += U(-1,1)*w/2*s, cy += U(-1,1)*h/2*s, w += U(-1,1)*w*s, "
                                     "h += U(-1,1)*h*s; corners sorted, clamped to the image"},
        "models": names, "levels": level_names, "protocols": spec.names(),
        "configs": {m.name: {"config_file": m.config_file, "weights": m.weights} for m in models},
        "results": aggregate(records, names, level_names, spec.names()),
    }
    if output_dir:
        write_matrix(report, records, output_dir)
    return report
