"""UNet LoRA with peft: the restoration LoRA (OSEDiff format, the release's `scr.pkl`) loaded and
merged, and trainable adapters on selected layers (RASS: `select_lora_targets`, GleSAM:
`match_lora_targets` = peft's own list rule). Reading/writing diffusers-format LoRA files is in
`lora_files.py`.

OSEDiff format — a `torch.save`d dict with
  `rank_unet` (int), `unet_lora_encoder_modules` / `unet_lora_decoder_modules` /
  `unet_lora_others_modules` (lists of UNet module names), and `state_dict_unet`: the peft
  parameters of three adapters named `default_encoder` / `default_decoder` / `default_others`
  (`<module>.lora_A.<adapter>.weight`, `<module>.lora_B.<adapter>.weight`) plus the trained UNet
  `conv_in` weights (`conv_in.base_layer.{weight,bias}` when conv_in is wrapped).
Other entries (e.g. OSEDiff's VAE LoRA) are ignored, as in the release.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, Iterable, List, Mapping, Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

__all__ = [
    "OSEDIFF_ADAPTERS", "TRAINABLE_ADAPTER", "read_osediff_lora", "merge_osediff_lora",
    "select_lora_targets", "match_lora_targets", "add_trainable_lora", "merge_and_unwrap",
]

logger = logging.getLogger(__name__)

# OSEDiff's three adapter names and the payload list naming each one's modules.
OSEDIFF_ADAPTERS = {
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}
# Name of the project's trainable UNet adapter (the release split it into three; see rass.checkpoint).
TRAINABLE_ADAPTER = "rass"
_REQUIRED_KEYS = ("rank_unet", "state_dict_unet", *OSEDIFF_ADAPTERS.values())


def _exact(names: Iterable[str]) -> str:
    """A peft `target_modules` regex matching exactly these module names."""
    return "^(" + "|".join(re.escape(n) for n in sorted(set(names))) + ")$"


def read_osediff_lora(path: str) -> dict:
    """Read and validate an OSEDiff-format LoRA file.

    Args:
        path: the file (MODEL.RASS.RESTORATION_LORA_PATH).

    Returns:
        The payload dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.RASS.RESTORATION_LORA_PATH: {path!r} does not exist; expected an OSEDiff-format LoRA file "
            f"(torch.save of a dict with {list(_REQUIRED_KEYS)}), e.g. the release's preset/model/scr.pkl")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return validate_osediff_payload(payload, path)


def validate_osediff_payload(payload: object, source: str = "<payload>") -> dict:
    """Check the keys of an OSEDiff payload; raise `ValueError` naming the source and what is missing."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"{source}: expected a dict in OSEDiff format, got {type(payload).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"{source}: not an OSEDiff-format LoRA file, missing keys {missing} "
                         f"(found {sorted(map(str, payload))})")
    return dict(payload)


def merge_and_unwrap(model: nn.Module, adapter_names: Sequence[str] | None = None) -> int:
    """Merge peft LoRA layers into their base layers and put the plain layers back.

    Args:
        model: a module with injected peft layers.
        adapter_names: adapters to merge (default: the active ones of each layer).

    Returns:
        The number of layers unwrapped.
    """
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in wrapped:
        if layer.get_base_layer().weight.device.type != "meta":
            layer.merge(adapter_names=list(adapter_names) if adapter_names else None)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    _drop_peft_config(model)
    return len(wrapped)


def _drop_peft_config(model: nn.Module) -> None:
    if "peft_config" in vars(model):
        del model.peft_config


def merge_osediff_lora(unet: nn.Module, payload: dict, alpha: float, source: str = "<payload>") -> None:
    """Load an OSEDiff LoRA payload onto `unet` with peft and merge it (values change, names do not).

    Args:
        unet: a plain `UNet2DConditionModel` (no adapters).
        payload: a validated OSEDiff payload (see `read_osediff_lora`).
        alpha: LoRA alpha the file was trained with (scaling = alpha / rank_unet).
        source: file name used in error messages.
    """
    payload = validate_osediff_payload(payload, source)
    rank = int(payload["rank_unet"])
    modules = dict(unet.named_modules())
    unknown = {adapter: [m for m in payload[key] if m not in modules] for adapter, key in OSEDIFF_ADAPTERS.items()}
    unknown = {k: v for k, v in unknown.items() if v}
    if unknown:
        raise ValueError(
            f"{source}: LoRA module lists name modules the UNet does not have: "
            + "; ".join(f"{OSEDIFF_ADAPTERS[a]}: {v[:8]}{' ...' if len(v) > 8 else ''} ({len(v)})" for a, v in unknown.items())
            + ". Was the file trained on a different UNet (Stable Diffusion 2.1-base expected)?")
    unsupported = [m for a, key in OSEDIFF_ADAPTERS.items() for m in payload[key]
                   if not isinstance(modules[m], (nn.Linear, nn.Conv2d))]
    if unsupported:
        raise ValueError(f"{source}: LoRA targets that are not Linear/Conv2d layers: {unsupported[:8]}")
    for adapter, key in OSEDIFF_ADAPTERS.items():
        if payload[key]:
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=_exact(payload[key]))
            inject_adapter_in_model(config, unet, adapter_name=adapter)
            _drop_peft_config(unet)  # the layers carry their adapters; the model-level record is not needed

    state = payload["state_dict_unet"]
    params = dict(unet.named_parameters())
    expected = [n for n in params if "lora_" in n or n.startswith("conv_in.")]
    missing = [n for n in expected if n not in state]
    if missing:
        raise ValueError(f"{source}: state_dict_unet lacks {len(missing)} entries of the listed modules, e.g. "
                         f"{missing[:8]}")
    extra = [k for k in state if k not in params]
    if extra:
        logger.warning("%s: ignoring %d state_dict_unet entries not in the listed modules, e.g. %s",
                       source, len(extra), extra[:5])
    with torch.no_grad():
        for n in expected:
            value = state[n]
            if tuple(value.shape) != tuple(params[n].shape):
                raise ValueError(f"{source}: state_dict_unet[{n!r}] has shape {tuple(value.shape)}, the UNet "
                                 f"expects {tuple(params[n].shape)}")
            params[n].copy_(value.to(params[n].dtype))
    count = merge_and_unwrap(unet, list(OSEDIFF_ADAPTERS))
    logger.info("Merged the restoration LoRA from %s (rank %d, alpha %g) into %d UNet layers", source, rank, alpha, count)


def select_lora_targets(unet: nn.Module, patterns: Sequence[str]) -> List[str]:
    """The UNet layers that get the trainable adapter, selected as released: every weight whose name
    contains one of `patterns` (bias and norm weights excluded), minus `conv_out`.

    Args:
        unet: the UNet (without adapters).
        patterns: substrings (MODEL.RASS.LORA_TARGETS).

    Returns:
        Module names in the UNet's parameter order.
    """
    targets = []
    for name, _ in unet.named_parameters():
        if not name.endswith(".weight") or "bias" in name or "norm" in name:
            continue
        if any(p in name for p in patterns):
            module = name[: -len(".weight")]
            if module != "conv_out":
                targets.append(module)
    return targets


def match_lora_targets(model: nn.Module, suffixes: Sequence[str], key: str = "LORA_TARGETS") -> List[str]:
    """The Linear/Conv2d layers a peft `LoraConfig(target_modules=<list>)` wraps: every module whose
    name equals one of `suffixes` or ends with "." + one of them (peft's rule for a list).

    Args:
        model: the model (without adapters).
        suffixes: module-name suffixes, e.g. "to_q", "ff.net.0.proj", "conv_in".
        key: config key named in the error when a suffix matches nothing.

    Returns:
        Module names in the model's module order.
    """
    suffixes = list(suffixes)
    found = {s: 0 for s in suffixes}
    targets = []
    for name, module in model.named_modules():
        hits = [s for s in suffixes if name == s or name.endswith("." + s)]
        if hits and isinstance(module, (nn.Linear, nn.Conv2d)):
            targets.append(name)
            for s in hits:
                found[s] += 1
    unused = [s for s, n in found.items() if n == 0]
    if unused:
        raise ValueError(f"{key}: {unused} match no Linear/Conv2d layer of the {type(model).__name__}")
    return targets


def add_trainable_lora(unet: nn.Module, targets: Sequence[str], rank: int, alpha: float,
                       adapter_name: str = TRAINABLE_ADAPTER, init_lora_weights: bool | str = "gaussian",
                       key: str = "MODEL.RASS") -> Dict[str, int]:
    """Inject a trainable adapter on `targets` (B is zero, so the model's output is unchanged).

    Args:
        unet: the UNet (restoration LoRA already merged).
        targets: module names (see `select_lora_targets`, `match_lora_targets`).
        rank: LoRA rank (> 0).
        alpha: LoRA alpha.
        adapter_name: the adapter's name.
        init_lora_weights: peft's A initialisation: "gaussian" (RASS, as released) or True (peft's
            default Kaiming-uniform, GleSAM as released).
        key: config-key prefix named in error messages.

    Returns:
        {"layers": number of wrapped layers, "params": number of LoRA values}.
    """
    if rank <= 0:
        raise ValueError(f"{key}.LORA_RANK must be > 0 to add an adapter, got {rank}")
    if not targets:
        raise ValueError(f"{key}.LORA_TARGETS selects no UNet layer")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=init_lora_weights,
                        target_modules=_exact(targets))
    _drop_peft_config(unet)
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    lora = [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    return {"layers": len(targets), "params": sum(p.numel() for p in lora)}
