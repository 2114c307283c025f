"""Report of a robustness run: ``robustness.json``, ``robustness.md`` and ``robustness.png``.

Rows are the evaluated levels (or pre-built datasets) in run order. The reference row is
``clean`` when present, else the first row; each row's drop is ``reference - row`` in points
(positive: worse than the reference). Semantic rows report mIoU / fwIoU / mACC / pACC (%),
promptable-mask rows IoU / Dice / BoundaryIoU / PixelAcc (fractions 0..1, as GleSAM's tables).
Models compared on the same rows (e.g. plain SAM next to GleSAM) get their own metrics, drop and
the gain of the main model over them. Every file is written atomically.
"""
from __future__ import annotations

import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

from rass.utils.io import atomic_open, write_bytes_atomic, write_text_atomic

__all__ = ["METRICS", "PROMPTABLE_METRICS", "build_report", "format_markdown", "plot_png", "write_report"]

METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
PROMPTABLE_METRICS = ("IoU", "Dice", "BoundaryIoU", "PixelAcc")
JSON_NAME, MD_NAME, PNG_NAME = "robustness.json", "robustness.md", "robustness.png"


def _num(value) -> Optional[float]:
    """float, or None for a missing / NaN value (strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metrics_of(result: Mapping) -> Dict:
    """(task metrics) of one evaluator result: the "sem_seg" or "promptable" block."""
    if "promptable" in result:
        return {k: _num(result["promptable"].get(k)) for k in PROMPTABLE_METRICS}
    m = result.get("sem_seg", result)
    return {k: _num(m.get(k)) for k in METRICS}


def _drops(rows: Mapping[str, Dict], reference: str, metrics: Sequence[str]) -> None:
    ref = rows[reference]
    for row in rows.values():
        row["drop"] = {k: None if ref[k] is None or row[k] is None else ref[k] - row[k] for k in metrics}


def build_report(items: Sequence, results: Mapping[str, Dict], num_images: Mapping[str, int], run: Dict,
                 compare: Optional[Mapping[str, Mapping[str, Dict]]] = None) -> Dict:
    """Collect the metrics of every row into the report dict.

    Args:
        items: the `EvalSet` rows (attributes level, dataset, preset, root), in order.
        results: level -> evaluator result (``{"sem_seg": {metric: value}}`` or ``{"promptable": ...}``).
        num_images: level -> number of evaluated images.
        run: run description stored under "run".
        compare: model name -> level -> evaluator result of a model compared on the same rows.

    Returns:
        ``{"run", "reference", "metrics", "levels": {level: {dataset, preset, root, images,
        <metrics>, drop: {metric: reference - value}, per_class_IoU: {class: IoU} (semantic),
        compare: {model: {<metrics>, drop, gain: {metric: value - model's}}}}}}``; NaN (e.g. the
        IoU of a class absent from the ground truth) becomes None.
    """
    promptable = any("promptable" in results[item.level] for item in items)
    if promptable and not all("promptable" in results[item.level] for item in items):
        raise ValueError("robustness report: semantic and promptable-mask rows cannot share one report")
    metrics = PROMPTABLE_METRICS if promptable else METRICS
    levels: Dict[str, Dict] = {}
    for item in items:
        res = results[item.level]
        row = {"dataset": item.dataset, "preset": item.preset, "root": item.root, "images": int(num_images[item.level])}
        row.update(_metrics_of(res))
        if not promptable:
            m = res.get("sem_seg", res)
            row["per_class_IoU"] = {k[len("IoU-"):]: _num(v) for k, v in m.items() if k.startswith("IoU-")}
        levels[item.level] = row
    reference = "clean" if "clean" in levels else next(iter(levels))
    _drops(levels, reference, metrics)
    for name, per_level in (compare or {}).items():
        rows = {level: _metrics_of(per_level[level]) for level in levels}
        _drops(rows, reference, metrics)
        for level, row in rows.items():
            main = levels[level]
            row["gain"] = {k: None if main[k] is None or row[k] is None else main[k] - row[k] for k in metrics}
            main.setdefault("compare", {})[name] = row
    return {"run": dict(run), "reference": reference, "metrics": list(metrics), "levels": levels,
            "compared": list(compare or {})}


def _fmt(value: Optional[float], signed: bool = False, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_markdown(report: Dict) -> str:
    """A markdown table: one row per level, the metrics, then the drop of each vs the reference;
    with compared models, the two main metrics of each model side by side and the main model's gain."""
    ref, run = report["reference"], report["run"]
    metrics = list(report.get("metrics", METRICS))
    promptable = metrics == list(PROMPTABLE_METRICS)
    digits = 4 if promptable else 2
    what = run.get("weights") or run.get("config_file") or "the model"
    on = f" on `{run['dataset']}`" if run.get("dataset") else ""
    unit = "fractions 0..1" if promptable else "%"
    compared = list(report.get("compared", []))
    if compared:
        main = run.get("model", "model")
        shown = metrics[:2]
        head = ["level", "dataset", "images"]
        for name in [*compared, main]:
            head += [f"{name} {k}" for k in shown]
        head += [f"gain {k} vs {name}" for name in compared for k in shown]
        intro = f"Metrics in {unit}; gain = {main} − the other model on the same images and prompts."
    else:
        shown = metrics
        head = ["level", "dataset", "images", *metrics, *(f"Δ{k}" for k in metrics)]
        intro = f"Metrics in {unit}. Δ = `{ref}` − level (positive: worse than `{ref}`)."
    lines = [f"# Robustness of `{what}`{on}", "", intro, "", "| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for level, row in report["levels"].items():
        cells = [f"`{level}`", f"`{row['dataset']}`", str(row["images"])]
        if compared:
            for name in compared:
                cells += [_fmt(row["compare"][name][k], digits=digits) for k in shown]
            cells += [_fmt(row[k], digits=digits) for k in shown]
            cells += [_fmt(row["compare"][name]["gain"][k], signed=True, digits=digits) for name in compared
                      for k in shown]
        else:
            cells += [_fmt(row[k], digits=digits) for k in metrics]
            cells += [_fmt(row["drop"][k], signed=True, digits=digits) for k in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_png(report: Dict) -> bytes:
    """PNG bytes of mIoU per level (matplotlib, Agg canvas; the global pyplot state is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: List[str] = list(report["levels"])
    key = report.get("metrics", METRICS)[0]  # mIoU, or IoU for promptable masks
    promptable = key == PROMPTABLE_METRICS[0]
    scale = 100.0 if promptable else 1.0  # plotted in %
    series = [(report["run"].get("model", "model"), [report["levels"][k][key] for k in labels], "tab:blue")]
    for name, color in zip(report.get("compared", []), ("tab:orange", "tab:green", "tab:red", "tab:purple")):
        series.insert(0, (name, [report["levels"][k]["compare"][name][key] for k in labels], color))
    fig = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys: List[float] = []
    for name, values, color in series:
        xs = [i for i, v in enumerate(values) if v is not None]
        yv = [values[i] * scale for i in xs]
        ys += yv
        ax.plot(xs, yv, marker="o", color=color, label=name if len(series) > 1 else None)
        for x, y in zip(xs, yv):
            ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ref = report["levels"][report["reference"]][key]
    if len(series) > 1:
        ax.legend(loc="best", fontsize=8)
    elif ref is not None and len(labels) > 1:
        ax.axhline(ref * scale, color="gray", linestyle="--", linewidth=0.8, label=report["reference"])
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)))
    slanted = max(len(s) for s in labels) > 10
    ax.set_xticklabels(labels, rotation=20 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    top = max(ys) if ys else 100.0
    ax.set_ylim(0.0, min(105.0, top * 1.15 + 2.0))
    prebuilt = any(row["preset"] is None and level != "clean" for level, row in report["levels"].items())
    ax.set_xlabel("degradation level / dataset" if prebuilt else "degradation level")
    ax.set_ylabel(f"{key} (%)")
    dataset = report["run"].get("dataset")
    ax.set_title(f"{key} vs degradation level" + (f" — {dataset}" if dataset else ""), fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_report(report: Dict, output_dir: str) -> Dict[str, str]:
    """Write robustness.json / .md / .png into `output_dir` atomically; returns their paths."""
    names = (("json", JSON_NAME), ("md", MD_NAME), ("png", PNG_NAME))
    paths = {ext: os.path.join(output_dir, name) for ext, name in names}
    with atomic_open(paths["json"], "w") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    write_text_atomic(paths["md"], format_markdown(report))
    write_bytes_atomic(paths["png"], plot_png(report))
    return paths
