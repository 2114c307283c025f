"""Report of a robustness run: ``robustness.json``, ``robustness.md`` and ``robustness.png``.

Rows are the evaluated levels (or pre-built datasets) in run order. The reference row is
``clean`` when present, else the first row; each row's drop is ``reference - row`` in points
(positive: worse than the reference). Semantic rows report mIoU / fwIoU / mACC / pACC (%),
promptable-mask rows IoU / Dice / BoundaryIoU / PixelAcc (fractions 0..1, as GleSAM's tables), SOD / DIS
rows maxF / wF / S / meanE / MAE (0..1, `rass.evaluation.sod`; MAE: lower is better, so its drop is negative
when a level is worse).
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

__all__ = ["METRICS", "PROMPTABLE_METRICS", "SOD_METRICS", "build_report", "format_markdown", "metric_unit",
           "plot_figure", "plot_png", "write_report"]

METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
PROMPTABLE_METRICS = ("IoU", "Dice", "BoundaryIoU", "PixelAcc")
SOD_METRICS = ("maxF", "wF", "S", "meanE", "MAE")  # of `rass.evaluation.sod.SODEvaluator`'s results
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
    if "sod" in result:
        return {k: _num(result["sod"].get(k)) for k in SOD_METRICS}
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
    kinds = {"promptable" if "promptable" in r else "sod" if "sod" in r else "sem_seg"
             for r in (results[item.level] for item in items)}
    if len(kinds) > 1:
        raise ValueError(f"robustness report: rows of different tasks ({', '.join(sorted(kinds))}) cannot share one "
                         "report")
    promptable = bool(kinds & {"promptable", "sod"})  # no per-class IoU
    metrics = PROMPTABLE_METRICS if "promptable" in kinds else SOD_METRICS if "sod" in kinds else METRICS
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
    promptable = metrics in (list(PROMPTABLE_METRICS), list(SOD_METRICS))  # fractions 0..1
    digits = 4 if promptable else 2
    what = run.get("weights") or run.get("config_file") or "the model"
    on = f" on `{run['dataset']}`" if run.get("dataset") else ""
    unit = "fractions 0..1" if promptable else "%"  # the plot's unit too (`metric_unit`)
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
        if "MAE" in metrics:
            intro += " MAE: lower is better (a negative ΔMAE is worse)."
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


# One style per series, so that coinciding lines stay visible: the compared models first, the main model last.
_STYLES = (("tab:orange", "s", "--"), ("tab:green", "^", "-."), ("tab:red", "D", ":"), ("tab:purple", "v", "--"))
_MAIN_STYLE = ("tab:blue", "o", "-")


def metric_unit(report: Dict) -> str:
    """The unit of the report's metrics, as its tables print them: "%" (semantic) or "fraction 0..1" (promptable)."""
    return "fraction 0..1" if list(report.get("metrics", METRICS)) in (list(PROMPTABLE_METRICS), list(SOD_METRICS)) \
        else "%"


def plot_figure(report: Dict):
    """A matplotlib `Figure` (Agg canvas; the global pyplot state is untouched) of the first metric per level.

    Values are plotted in the unit of the tables (`metric_unit`: mIoU in %, promptable IoU as a fraction).
    Each model has its own colour, marker and line style and, with several models, a small horizontal
    offset, so that equal values (e.g. two models with the same IoU) still show every line and marker.

    Args:
        report: the dict of `build_report`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: List[str] = list(report["levels"])
    key = report.get("metrics", METRICS)[0]  # mIoU, or IoU for promptable masks
    unit = metric_unit(report)
    digits = 3 if unit != "%" else 1
    series = [(name, [report["levels"][k]["compare"][name][key] for k in labels], style)
              for name, style in zip(report.get("compared", []), _STYLES)]
    series.append((report["run"].get("model", "model"), [report["levels"][k][key] for k in labels], _MAIN_STYLE))
    fig = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ys: List[float] = []
    width = 0.08 * (len(series) - 1)
    for j, (name, values, (color, marker, style)) in enumerate(series):
        offset = (j / (len(series) - 1) - 0.5) * width if len(series) > 1 else 0.0
        xs = [i for i, v in enumerate(values) if v is not None]
        yv = [values[i] for i in xs]
        ys += yv
        ax.plot([x + offset for x in xs], yv, marker=marker, linestyle=style, color=color, markerfacecolor="none"
                if j < len(series) - 1 else color, label=name if len(series) > 1 else None)
        for x, y in zip(xs, yv):  # labels above the last model's points, below the others'
            below = len(series) > 1 and j < len(series) - 1
            ax.annotate(f"{y:.{digits}f}", (x + offset, y), textcoords="offset points", xytext=(0, -11 if below else 6),
                        ha="center", fontsize=7, color=color)
    ref = report["levels"][report["reference"]][key]
    if len(series) > 1:
        ax.legend(loc="best", fontsize=8)
    elif ref is not None and len(labels) > 1:
        ax.axhline(ref, color="gray", linestyle="--", linewidth=0.8, label=report["reference"])
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)))
    slanted = max(len(s) for s in labels) > 10
    ax.set_xticklabels(labels, rotation=20 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    full = 100.0 if unit == "%" else 1.0
    top = max(ys) if ys else full
    ax.set_ylim(0.0, min(1.05 * full, top * 1.15 + 0.02 * full))
    prebuilt = any(row["preset"] is None and level != "clean" for level, row in report["levels"].items())
    ax.set_xlabel("degradation level / dataset" if prebuilt else "degradation level (preset)")
    ax.set_ylabel(f"{key} ({unit})")
    dataset = report["run"].get("dataset")
    ax.set_title(f"{key} vs degradation level" + (f" — {dataset}" if dataset else ""), fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_png(report: Dict) -> bytes:
    """PNG bytes of `plot_figure(report)`."""
    buf = io.BytesIO()
    plot_figure(report).savefig(buf, format="png")
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
