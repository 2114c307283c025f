"""Reading RAM / DAPE weights and RAM's data files from local paths (nothing is downloaded).

- `load_ram_weights`: the official `ram_swin_large_14m.pth`, strictly: every non-LoRA entry of the
  model must be in the file with its shape and the file may hold nothing else (clear errors
  naming the file and the keys otherwise).
- `load_dape_weights`: `DAPE.pth` (the loralib adapter entries SeeSR saves) on top of RAM,
  non-strictly, with a report of what was loaded and what was not.
- `read_tag_list`, `read_thresholds`: RAM's tag list and per-class thresholds text files.

Checkpoint handling shared by both: `torch.load(weights_only=True)` on CPU; a top-level wrapper
(`model`, `state_dict`, `params`, `params_ema`) is unwrapped; a `module.` prefix is removed; the
official loader's rename `vision_multi` -> `tagging_head` is applied. Buffers derived from the
architecture (`relative_position_index`, `attn_mask`, `position_ids`) are always the model's own,
as the official loader does. Tied tensors (tag encoder / tagging head, decoder / embeddings) load
from whichever copy the file has; if both copies differ, the later one in the model's order wins
(the official result) and a warning names them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence

import torch
from torch import nn

from rass.utils.errors import UserFileNotFoundError, UserKeyError, UserValueError

from .lora import is_lora_key
from .ram import tied_weight_groups

__all__ = ["LoadReport", "read_checkpoint", "load_ram_weights", "load_dape_weights", "read_tag_list", "read_thresholds"]

logger = logging.getLogger(__name__)

_WRAPPERS = ("model", "state_dict", "params", "params_ema")
_MAX_LISTED = 12


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


@dataclass
class LoadReport:
    """What a weight file gave a model.

    Attributes:
        path: the file.
        loaded: model entries set from the file.
        missing: model entries the file did not have (left as they were).
        unexpected: file entries the model does not have (ignored).
        derived: architecture buffers kept from the model (not read from the file).
    """

    path: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    derived: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.path}: loaded {len(self.loaded)} entries"]
        if self.missing:
            lines.append(f"  not in the file (kept as built): {len(self.missing)}: {_listing(self.missing)}")
        if self.unexpected:
            lines.append(f"  in the file but not in the model (ignored): {len(self.unexpected)}: {_listing(self.unexpected)}")
        if self.derived:
            lines.append(f"  architecture buffers kept from the model: {len(self.derived)}")
        return "\n".join(lines)


def read_checkpoint(path: str, key: str = "weights") -> Dict[str, torch.Tensor]:
    """Read a state dict from a `.pth` file on CPU (safe unpickling only).

    Args:
        path: local file.
        key: which config key / argument gave the path, for error messages.
    """
    from rass.checkpoint.files import read_checkpoint_file

    if not path or not os.path.exists(path):
        raise UserFileNotFoundError(f"{key}: weight file not found: {path!r}")
    # torch.load(weights_only=True); a folder, a text file, a damaged or code-carrying pickle: one error naming it
    obj = read_checkpoint_file(path, key=key, expected="a state dict saved with torch.save (.pth)")
    if isinstance(obj, Mapping):
        for name in _WRAPPERS:
            if isinstance(obj.get(name), Mapping):
                obj = obj[name]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserValueError(f"{key}: {path!r} is not a state dict of tensors (nor one wrapped under "
                             f"{list(_WRAPPERS)})")
    names = list(obj.keys())
    strip = "module." if all(n.startswith("module.") for n in names) else ""
    out: Dict[str, torch.Tensor] = {}
    for n in names:
        new = n[len(strip):].replace("vision_multi", "tagging_head")
        out[new] = obj[n]
    return out


def _fill_tied(model: nn.Module, state: Dict[str, torch.Tensor], path: str) -> None:
    """Complete tied groups from whichever copy the file has; warn when the copies differ."""
    for group in tied_weight_groups(model):
        present = [n for n in group if n in state]
        if not present:
            continue
        winner = state[present[-1]]
        for n in present[:-1]:
            t = state[n]
            if t.shape == winner.shape and not torch.equal(t.to(winner.dtype), winner):
                logger.warning("%s: tied entries %s and %s differ; using %s (as the official loader does)",
                               path, n, present[-1], present[-1])
        for n in group:
            state[n] = winner


def _shape_errors(model_sd: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> List[str]:
    bad = []
    for n, t in state.items():
        if n in model_sd and tuple(t.shape) != tuple(model_sd[n].shape):
            hint = " (the tag list's length must match the checkpoint's tags)" if n == "label_embed" else ""
            bad.append(f"{n}: file {list(t.shape)} vs model {list(model_sd[n].shape)}{hint}")
    return bad


def load_ram_weights(model: nn.Module, path: str, key: str = "MODEL.TAGGER.RAM.WEIGHTS") -> LoadReport:
    """Load RAM weights strictly into a `RAM` (LoRA adapters, if any, are not expected in the file).

    Args:
        model: a `RAM` network (or a tagger subclassing it).
        path: `ram_swin_large_14m.pth` or a state dict with the same names.
        key: config key that gave the path (for messages).

    Returns:
        The report (`missing` lists LoRA adapters left at their initial values).

    Raises:
        FileNotFoundError, KeyError (missing/unexpected entries), ValueError (shapes).
    """
    state = read_checkpoint(path, key)
    model_sd = model.state_dict()
    derived = set(model.derived_buffer_names())
    has_text = getattr(model, "has_text_modules", True)
    report = LoadReport(path=path, derived=sorted(derived))
    for n in list(state):
        if n in derived:
            state.pop(n)
        elif not has_text and n.startswith(("tag_encoder.", "text_decoder.")):
            state.pop(n)  # built without the text modules: their entries are not needed
            report.unexpected.append(n)
    _fill_tied(model, state, path)
    expected = [n for n in model_sd if n not in derived and not is_lora_key(n)]
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in model_sd or is_lora_key(n)]
    if missing or unexpected:
        msg = [f"{key}: {path!r} does not match the RAM model"]
        if missing:
            msg.append(f"missing {len(missing)} entries: {_listing(missing)}")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)} entries: {_listing(unexpected)}")
            if any(is_lora_key(n) for n in unexpected):
                msg.append("(LoRA entries: give DAPE adapters to the 'dape' tagger via MODEL.TAGGER.DAPE.WEIGHTS)")
        raise UserKeyError("; ".join(msg))
    bad = _shape_errors(model_sd, state)
    if bad:
        raise UserValueError(f"{key}: {path!r} has {len(bad)} misshapen entries: {_listing(bad)}")
    model.load_state_dict(state, strict=False)
    report.loaded = list(state)
    report.missing = [n for n in model_sd if is_lora_key(n)]
    return report


def load_dape_weights(model: nn.Module, path: str, key: str = "MODEL.TAGGER.DAPE.WEIGHTS") -> LoadReport:
    """Load DAPE adapters (and any other matching entries) non-strictly, reporting what happened.

    Args:
        model: a `RAM` built with LoRA.
        path: `DAPE.pth` (SeeSR's `lora_state_dict`: the 248 `lora_A`/`lora_B` entries).
        key: config key that gave the path (for messages).

    Returns:
        The report: `loaded`, `missing` (model LoRA entries not in the file), `unexpected`.

    Raises:
        FileNotFoundError; ValueError for misshapen entries or a file that matches nothing.
    """
    state = read_checkpoint(path, key)
    model_sd = model.state_dict()
    derived = set(model.derived_buffer_names())
    state = {n: t for n, t in state.items() if n not in derived}
    bad = _shape_errors(model_sd, state)
    if bad:
        raise UserValueError(f"{key}: {path!r} has {len(bad)} misshapen entries: {_listing(bad)}")
    usable = {n: t for n, t in state.items() if n in model_sd}
    if not usable:
        raise UserValueError(f"{key}: no entry of {path!r} matches the DAPE model (first names: "
                             f"{_listing(list(state))})")
    model.load_state_dict(usable, strict=False)
    report = LoadReport(path=path, loaded=list(usable), derived=sorted(derived))
    report.missing = [n for n in model_sd if is_lora_key(n) and n not in usable]
    report.unexpected = [n for n in state if n not in model_sd]
    return report


def read_tag_list(path: str, key: str = "MODEL.TAGGER.RAM.TAG_LIST") -> List[str]:
    """Read a tag list: one tag per line (RAM's `ram_tag_list.txt`, 4585 lines), order = class index.

    Args:
        path: local text file (UTF-8).
        key: config key that gave the path (for messages).
    """
    if not path or not os.path.isfile(path):
        raise UserFileNotFoundError(f"{key}: tag list not found: {path!r} (RAM's ram_tag_list.txt, one tag per line)")
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    empty = [i + 1 for i, t in enumerate(lines) if not t.strip()]
    if empty:
        raise UserValueError(f"{key}: {path!r} has empty lines (line {empty[0]}); one tag per line is expected")
    if not lines:
        raise UserValueError(f"{key}: {path!r} holds no tags")
    return lines


def read_thresholds(path: str, num_classes: int, key: str = "MODEL.TAGGER.RAM.THRESHOLDS") -> torch.Tensor:
    """Read per-class thresholds: one float in [0, 1] per line, as many lines as tags.

    Args:
        path: local text file (RAM's `ram_tag_list_threshold.txt`).
        num_classes: number of tags.
        key: config key that gave the path (for messages).

    Returns:
        float32 tensor [num_classes].
    """
    if not path or not os.path.isfile(path):
        raise UserFileNotFoundError(f"{key}: thresholds file not found: {path!r} (one float per tag)")
    with open(path, "r", encoding="utf-8") as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    values = []
    for i, line in enumerate(lines):
        try:
            v = float(line.strip())
        except ValueError:
            raise UserValueError(f"{key}: {path!r} line {i + 1}: {line!r} is not a number") from None
        if not 0.0 <= v <= 1.0:
            raise UserValueError(f"{key}: {path!r} line {i + 1}: threshold {v} is outside [0, 1]")
        values.append(v)
    if len(values) != num_classes:
        raise UserValueError(f"{key}: {path!r} has {len(values)} thresholds but the tag list has {num_classes} tags")
    return torch.tensor(values, dtype=torch.float32, device="cpu")  # CPU even under a meta-device context
