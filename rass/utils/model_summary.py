"""Parameter counts of a model: total / trainable per module name, and a short summary for the log.

`count_parameters` is the counting code shared by `tools/analyze_model.py` (the full per-part table
with FLOPs) and the trainer's log line (`model_summary`, which replaces printing the module tree).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import nn

__all__ = ["count_parameters", "summary_rows", "model_summary"]


def count_parameters(model: nn.Module, prefixes: Sequence[str]) -> Tuple[int, int]:
    """(total, trainable) values of the distinct parameters under any of the module names.

    Args:
        model: the model.
        prefixes: module names (as in `named_modules`); a parameter counts once even if tied.
    """
    seen, total, trainable = set(), 0, 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if not any(name == pre or name.startswith(pre + ".") for pre in prefixes) or id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def summary_rows(model: nn.Module) -> List[Tuple[str, int, int]]:
    """(label, total, trainable) for every top-level child, then its parts when it defines
    ``analysis_parts() -> {part: [child names]}`` (label "<child>/<part>"), then "total"."""
    rows: List[Tuple[str, int, int]] = []
    for name, child in model.named_children():
        rows.append((name, *count_parameters(model, [name])))
        parts = getattr(child, "analysis_parts", None)
        if callable(parts):
            for part, children in parts().items():
                rows.append((f"{name}/{part}", *count_parameters(model, [f"{name}.{c}" for c in children])))
    rows.append(("total", *count_parameters(model, [n for n, _ in model.named_children()])))
    return rows


def _m(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def model_summary(model: nn.Module) -> str:
    """A few lines: the model class, then total / trainable parameters per top-level part."""
    rows = summary_rows(model)
    width = max(len(label) for label, _, _ in rows) + 2
    lines = [f"Model {type(model).__name__}: parameters (total / trainable) per part"]
    for label, total, trainable in rows:
        indent = "    " if "/" in label else "  "
        lines.append(f"{indent}{label:<{width}}{_m(total):>12} {_m(trainable):>12}")
    return "\n".join(lines)
