"""Report of a robustness run: ``robustness.json``, ``robustness.md`` and ``robustness.png``.

Rows are the evaluated levels (or pre-built datasets) in run order. The reference row is
``clean`` when present, else the first row; each row's drop is ``reference - row`` in points
(positive: worse than the reference). Every file is written atomically.
"""
from __future__ import annotations

import io
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence

from rass.utils.io import atomic_open, write_bytes_atomic, write_text_atomic

__all__ = ["METRICS", "build_report", "format_markdown", "plot_png", "write_report"]

METRICS = ("mIoU", "fwIoU", "mACC", "pACC")
JSON_NAME, MD_NAME, PNG_NAME = "robustness.json", "robustness.md", "robustness.png"


def _num(value) -> Optional[float]:
    """float, or None for a missing / NaN value (strict JSON)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def build_report(items: Sequence, results: Mapping[str, Dict], num_images: Mapping[str, int], run: Dict) -> Dict:
    """Collect the metrics of every row into the report dict.

    Args:
        items: the `EvalSet` rows (attributes level, dataset, preset, root), in order.
        results: level -> evaluator result (``{"sem_seg": {metric: value}}``).
        num_images: level -> number of evaluated images.
        run: run description stored under "run".

    Returns:
        ``{"run", "reference", "metrics", "levels": {level: {dataset, preset, root, images,
        mIoU, fwIoU, mACC, pACC, drop: {metric: reference - value}, per_class_IoU: {class: IoU}}}}``;
        NaN (e.g. the IoU of a class absent from the ground truth) becomes None.
    """
    levels: Dict[str, Dict] = {}
    for item in items:
        m = results[item.level].get("sem_seg", results[item.level])
        row = {"dataset": item.dataset, "preset": item.preset, "root": item.root, "images": int(num_images[item.level])}
        row.update({k: _num(m.get(k)) for k in METRICS})
        row["per_class_IoU"] = {k[len("IoU-"):]: _num(v) for k, v in m.items() if k.startswith("IoU-")}
        levels[item.level] = row
    reference = "clean" if "clean" in levels else next(iter(levels))
    ref = levels[reference]
    for row in levels.values():
        row["drop"] = {
            k: None if ref[k] is None or row[k] is None else ref[k] - row[k] for k in METRICS
        }
    return {"run": dict(run), "reference": reference, "metrics": list(METRICS), "levels": levels}


def _fmt(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def format_markdown(report: Dict) -> str:
    """A markdown table: one row per level, the four metrics, then the drop of each vs the reference."""
    ref, run = report["reference"], report["run"]
    what = run.get("weights") or "the model"
    on = f" on `{run['dataset']}`" if run.get("dataset") else ""
    head = ["level", "dataset", "images", *METRICS, *(f"Δ{k}" for k in METRICS)]
    lines = [
        f"# Robustness of `{what}`{on}",
        "",
        f"Metrics in %. Δ = `{ref}` − level, in points (positive: worse than `{ref}`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|",
    ]
    for level, row in report["levels"].items():
        cells = [f"`{level}`", f"`{row['dataset']}`", str(row["images"])]
        cells += [_fmt(row[k]) for k in METRICS] + [_fmt(row["drop"][k], signed=True) for k in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_png(report: Dict) -> bytes:
    """PNG bytes of mIoU per level (matplotlib, Agg canvas; the global pyplot state is untouched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels: List[str] = list(report["levels"])
    values = [report["levels"][k]["mIoU"] for k in labels]
    fig = Figure(figsize=(max(4.0, 1.3 * len(labels) + 1.5), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = [i for i, v in enumerate(values) if v is not None]
    ys = [values[i] for i in xs]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ref = report["levels"][report["reference"]]["mIoU"]
    if ref is not None and len(labels) > 1:
        ax.axhline(ref, color="gray", linestyle="--", linewidth=0.8, label=report["reference"])
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(range(len(labels)))
    slanted = max(len(s) for s in labels) > 10
    ax.set_xticklabels(labels, rotation=20 if slanted else 0, ha="right" if slanted else "center", fontsize=8)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    top = max(ys) if ys else 100.0
    ax.set_ylim(0.0, min(105.0, top * 1.15 + 2.0))
    prebuilt = any(row["preset"] is None and level != "clean" for level, row in report["levels"].items())
    ax.set_xlabel("degradation level / dataset" if prebuilt else "degradation level")
    ax.set_ylabel("mIoU (%)")
    dataset = report["run"].get("dataset")
    ax.set_title("mIoU vs degradation level" + (f" — {dataset}" if dataset else ""), fontsize=10)
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
