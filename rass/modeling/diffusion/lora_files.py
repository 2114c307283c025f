"""Diffusers-format LoRA files (`pytorch_lora_weights.safetensors`) for peft-wrapped diffusers models.

Written the way diffusers' `save_lora_weights(unet_lora_layers=convert_state_dict_to_diffusers(
get_peft_model_state_dict(unet)))` writes them: safetensors, metadata {"format": "pt"}, one entry per
LoRA matrix named `<prefix><module>.<suffix>` where `<suffix>` is `lora.down.weight` /
`lora.up.weight` for the attention projections `to_q/to_k/to_v/to_out.0` (diffusers' PEFT→diffusers
renaming) and `lora_A.weight` / `lora_B.weight` for every other layer.

Read in any of the key styles in use, all mapped to one canonical form `<module>.lora_A.weight` /
`<module>.lora_B.weight` (peft's names without the adapter):
  `unet.<m>.lora.down.weight` / `.lora.up.weight` (diffusers), `unet.<m>.lora_A.weight` /
  `.lora_B.weight` (diffusers, non-attention layers), `<m>.lora_A.<adapter>.weight` (a peft model's
  own state dict), each with or without the `unet.` prefix.
Loading is strict: every LoRA tensor of the model must be in the file, nothing else may be, and
shape mismatches are listed with both shapes.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from diffusers.utils.state_dict_utils import (
    StateDictType, convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft)
from safetensors.torch import load_file, save
from torch import nn

from rass.utils.errors import UserFileNotFoundError, UserValueError
from rass.utils.io import atomic_open

from .lora import set_lora_merged

__all__ = ["LoRALoadReport", "lora_state_dict", "canonical_lora_key", "canonical_lora_state", "read_lora_file",
           "load_lora_state_dict", "write_lora_file"]

_EXPECTED = ("a diffusers LoRA file such as pytorch_lora_weights.safetensors (or a torch.save'd dict of "
             "LoRA tensors)")
# A canonical LoRA key: "<module>.lora_A.weight" or "<module>.lora_B.weight".
_CANONICAL = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])\.weight$")
# A peft key with an adapter name: "<module>.lora_A.<adapter>.weight".
_PEFT_ADAPTER = re.compile(r"^(?P<module>.+)\.(?P<ab>lora_[AB])\.(?P<adapter>[^.]+)\.weight$")


@dataclass
class LoRALoadReport:
    """What `load_lora_state_dict` loaded.

    Attributes:
        source: file name (or "<dict>").
        tensors: number of LoRA tensors copied.
        layers: number of wrapped layers they belong to.
        values: number of values copied.
        rank: LoRA rank read from the tensors (the smallest dimension of the first A matrix).
    """

    source: str
    tensors: int
    layers: int
    values: int
    rank: int

    def __str__(self) -> str:
        return (f"LoRA {self.source}: loaded {self.tensors} tensors ({self.layers} layers, rank {self.rank}, "
                f"{self.values:,} values); nothing missing or unexpected")


def _model_lora_params(model: nn.Module, adapter_name: str) -> "OrderedDict[str, torch.Tensor]":
    """Canonical key -> parameter, for the LoRA matrices of `adapter_name` in `model`."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for name, param in model.named_parameters():
        m = _PEFT_ADAPTER.match(name)
        if m and m.group("adapter") == adapter_name:
            out[f"{m.group('module')}.{m.group('ab')}.weight"] = param
    return out


def lora_state_dict(model: nn.Module, adapter_name: str = "default", prefix: str = "unet.") -> Dict[str, torch.Tensor]:
    """The LoRA tensors of one adapter with the names a diffusers LoRA file uses.

    Args:
        model: a model with peft LoRA layers (e.g. a `UNet2DConditionModel`).
        adapter_name: the adapter.
        prefix: prepended to every name ("unet." as diffusers' `save_lora_weights` writes).

    Returns:
        Name -> detached tensor, in the model's parameter order.
    """
    params = _model_lora_params(model, adapter_name)
    if not params:
        raise ValueError(f"{type(model).__name__} has no LoRA adapter {adapter_name!r}")
    renamed = convert_state_dict_to_diffusers({k: p.detach() for k, p in params.items()},
                                              original_type=StateDictType.PEFT)
    return {prefix + k: v for k, v in renamed.items()}


def canonical_lora_key(key: str) -> Optional[str]:
    """`<module>.lora_A.weight` / `<module>.lora_B.weight` for a LoRA key of any supported style, else None.

    Args:
        key: e.g. "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight".
    """
    k = key[len("unet."):] if key.startswith("unet.") else key
    k = next(iter(convert_unet_state_dict_to_peft({k: None})))  # lora.down/up -> lora_A/B
    m = _PEFT_ADAPTER.match(k)
    if m:
        k = f"{m.group('module')}.{m.group('ab')}.weight"
    return k if _CANONICAL.match(k) else None


def read_lora_file(path: str, key: str = "LORA_PATH") -> Dict[str, torch.Tensor]:
    """Read a LoRA file (safetensors; or a `torch.save`d dict) into canonical names.

    Args:
        path: the file.
        key: config key named in error messages.

    Returns:
        Canonical key -> tensor, in file order.
    """
    from rass.checkpoint.files import read_checkpoint_file

    if not os.path.exists(path):
        raise UserFileNotFoundError(f"{key}: {path!r} does not exist; expected {_EXPECTED}")
    # any read failure (a text file, a truncated download, ...) is one error naming the file and what it is
    raw = read_checkpoint_file(path, key=key, loader=load_file if path.endswith(".safetensors") else None,
                               expected=_EXPECTED)
    return canonical_lora_state(raw, source=path)


def canonical_lora_state(raw: object, source: str = "<dict>") -> Dict[str, torch.Tensor]:
    """Map a LoRA state dict of any supported key style to canonical names (see the module doc).

    Args:
        raw: name -> tensor.
        source: named in error messages.
    """
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise UserValueError(f"{source}: expected a mapping of names to tensors, got {type(raw).__name__}")
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    bad: List[str] = []
    for name, value in raw.items():
        k = canonical_lora_key(str(name))
        if k is None:
            bad.append(str(name))
            continue
        if k in out:
            raise UserValueError(f"{source}: {name!r} and {origin[k]!r} are the same LoRA tensor ({k!r}) in two key "
                                 "styles")
        out[k], origin[k] = value, str(name)
    if bad:
        raise UserValueError(f"{source}: {len(bad)} entries are not LoRA matrices (expected names ending in "
                             f"lora.down/lora.up/lora_A/lora_B[.<adapter>].weight), e.g. {bad[:5]}")
    if not out:
        raise UserValueError(f"{source}: holds no LoRA tensors")
    return out


def _kind(name: str) -> str:
    """Layer type of a canonical key for grouping messages: e.g. "attn2.to_k.lora_A"."""
    parts = [p for p in name.split(".")[:-1] if not p.isdigit()]
    return ".".join(parts[-3:])


def _describe_mismatches(mismatched: List[Tuple[str, tuple, tuple]], limit: int = 16) -> str:
    groups: "OrderedDict[tuple, List[str]]" = OrderedDict()
    for name, got, want in mismatched:
        groups.setdefault((_kind(name), got, want), []).append(name)
    lines = [f"  {kind}: file {list(got)} vs model {list(want)} ({len(names)} tensors, e.g. {names[0]})"
             for (kind, got, want), names in list(groups.items())[:limit]]
    if len(groups) > limit:
        lines.append(f"  ... and {len(groups) - limit} more groups")
    return "\n".join(lines)


def _hints(mismatched: List[Tuple[str, tuple, tuple]], state: Mapping[str, torch.Tensor],
           params: Mapping[str, torch.Tensor]) -> List[str]:
    hints = []
    cross = [(got, want) for name, got, want in mismatched
             if _kind(name).endswith("attn2.to_k.lora_A") and got[-1] != want[-1]]
    if cross:
        got, want = cross[0]
        names = {768: " (SD-1.x)", 1024: " (SD-2.x)"}
        hints.append(f"the file was trained for cross-attention dim {got[-1]}{names.get(got[-1], '')}, this UNet "
                     f"has {want[-1]}{names.get(want[-1], '')}: use the matching SD folder / ARCH")
    a_keys = [k for k in params if k.endswith("lora_A.weight") and k in state]
    if a_keys:
        file_rank, model_rank = state[a_keys[0]].shape[0], params[a_keys[0]].shape[0]
        if file_rank != model_rank:
            hints.append(f"the file has rank {file_rank}, the model rank {model_rank}: set LORA_RANK {file_rank}")
    return hints


def load_lora_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], adapter_name: str = "default",
                         source: str = "<dict>") -> LoRALoadReport:
    """Copy LoRA tensors (canonical or any supported key style) into `model`'s adapter, strictly.

    Args:
        model: a model with peft LoRA layers of `adapter_name`.
        state: name -> tensor (see `read_lora_file`).
        adapter_name: the adapter to fill.
        source: file name for messages.

    Returns:
        A `LoRALoadReport`. Raises `ValueError` naming missing, unexpected or mismatching tensors
        (both shapes); nothing is copied then.
    """
    state = canonical_lora_state(state, source)
    params = _model_lora_params(model, adapter_name)
    if not params:
        raise UserValueError(f"{source}: the {type(model).__name__} has no LoRA adapter {adapter_name!r} to load into")
    missing = [k for k in params if k not in state]
    unexpected = [k for k in state if k not in params]
    mismatched = [(k, tuple(state[k].shape), tuple(p.shape)) for k, p in params.items()
                  if k in state and tuple(state[k].shape) != tuple(p.shape)]
    if missing or unexpected or mismatched:
        msg = [f"{source}: LoRA file does not fit the model ({len(params)} LoRA tensors expected, "
               f"{len(state)} in the file)"]
        if mismatched:
            msg.append(f"{len(mismatched)} shape mismatches:\n{_describe_mismatches(mismatched)}")
        if missing:
            msg.append(f"{len(missing)} missing, e.g. {missing[:5]}")
        if unexpected:
            msg.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:5]}")
        msg += [f"hint: {h}" for h in _hints(mismatched, state, params)]
        raise UserValueError("\n".join(msg))
    set_lora_merged(model, False)  # a merged layer's base weight holds the old LoRA product: take it out first
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(state[k].to(device=p.device, dtype=p.dtype))
    first_a = next((p for k, p in params.items() if k.endswith("lora_A.weight")), None)
    return LoRALoadReport(source=source, tensors=len(params), layers=len({k.rsplit(".", 2)[0] for k in params}),
                          values=sum(p.numel() for p in params.values()),
                          rank=int(first_a.shape[0]) if first_a is not None else 0)


def write_lora_file(state: Mapping[str, torch.Tensor], path: str, dtype: torch.dtype = torch.float32) -> int:
    """Write LoRA tensors as a safetensors file with metadata {"format": "pt"}, atomically.

    Args:
        state: name -> tensor (e.g. `lora_state_dict(unet)`).
        path: output file.
        dtype: dtype written (float32 as the release).

    Returns:
        The file size in bytes.
    """
    tensors = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt"})
    with atomic_open(path, "wb") as f:
        f.write(data)
    return len(data)
