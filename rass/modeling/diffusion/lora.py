"""UNet LoRA with peft: the restoration LoRA (OSEDiff format, the release's `scr.pkl`) loaded and
merged, and trainable adapters on selected layers (RASS: `select_lora_targets`, GleSAM:
`match_lora_targets` = peft's own list rule), and merging adapters into their base weights for
inference while keeping them (`set_lora_merged`). Reading/writing diffusers-format LoRA files is in
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
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from rass.utils.errors import UserFileNotFoundError, UserValueError

__all__ = [
    "OSEDIFF_ADAPTERS", "TRAINABLE_ADAPTER", "read_osediff_lora", "merge_osediff_lora",
    "select_lora_targets", "match_lora_targets", "add_trainable_lora", "merge_and_unwrap",
    "lora_layers", "set_lora_merged", "lora_is_merged", "lora_requires_grad", "unmerged_base_weight",
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
        raise UserFileNotFoundError(
            f"MODEL.RASS.RESTORATION_LORA_PATH: {path!r} does not exist; expected an OSEDiff-format LoRA file "
            f"(torch.save of a dict with {list(_REQUIRED_KEYS)}), e.g. the release's preset/model/scr.pkl")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return validate_osediff_payload(payload, path)


def validate_osediff_payload(payload: object, source: str = "<payload>") -> dict:
    """Check the keys of an OSEDiff payload; raise `ValueError` naming the source and what is missing."""
    if not isinstance(payload, Mapping):
        raise UserValueError(f"{source}: expected a dict in OSEDiff format, got {type(payload).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise UserValueError(f"{source}: not an OSEDiff-format LoRA file, missing keys {missing} "
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
        raise UserValueError(
            f"{source}: LoRA module lists name modules the UNet does not have: "
            + "; ".join(f"{OSEDIFF_ADAPTERS[a]}: {v[:8]}{' ...' if len(v) > 8 else ''} ({len(v)})" for a, v in unknown.items())
            + ". Was the file trained on a different UNet (Stable Diffusion 2.1-base expected)?")
    unsupported = [m for a, key in OSEDIFF_ADAPTERS.items() for m in payload[key]
                   if not isinstance(modules[m], (nn.Linear, nn.Conv2d))]
    if unsupported:
        raise UserValueError(f"{source}: LoRA targets that are not Linear/Conv2d layers: {unsupported[:8]}")
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
        raise UserValueError(f"{source}: state_dict_unet lacks {len(missing)} entries of the listed modules, e.g. "
                             f"{missing[:8]}")
    extra = [k for k in state if k not in params]
    if extra:
        logger.warning("%s: ignoring %d state_dict_unet entries not in the listed modules, e.g. %s",
                       source, len(extra), extra[:5])
    with torch.no_grad():
        for n in expected:
            value = state[n]
            if tuple(value.shape) != tuple(params[n].shape):
                raise UserValueError(f"{source}: state_dict_unet[{n!r}] has shape {tuple(value.shape)}, the UNet "
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
        raise UserValueError(f"{key}: {unused} match no Linear/Conv2d layer of the {type(model).__name__}")
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
        raise UserValueError(f"{key}.LORA_RANK must be > 0 to add an adapter, got {rank}")
    if not targets:
        raise UserValueError(f"{key}.LORA_TARGETS selects no UNet layer")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=init_lora_weights,
                        target_modules=_exact(targets))
    _drop_peft_config(unet)
    inject_adapter_in_model(config, unet, adapter_name=adapter_name)
    lora = [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    return {"layers": len(targets), "params": sum(p.numel() for p in lora)}


# ------------------------------------------------------------------ merging kept adapters (inference)
def lora_layers(model: nn.Module) -> List[LoraLayer]:
    """The peft LoRA layers of `model`, in module order."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def lora_is_merged(model: nn.Module) -> bool:
    """True when every LoRA layer of `model` has its active adapters merged into the base weights."""
    layers = lora_layers(model)
    return bool(layers) and all(layer.merged for layer in layers)


def lora_requires_grad(model: nn.Module) -> bool:
    """True when any LoRA parameter (lora_A / lora_B) of `model` requires a gradient."""
    return any(p.requires_grad for layer in lora_layers(model)
               for p in (*layer.lora_A.parameters(), *layer.lora_B.parameters()))


def _lora_pairs(layer: LoraLayer, adapters: Sequence[str]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.lora_A[a].weight, layer.lora_B[a].weight) for a in adapters]


def _merged_lora_changed(layer: LoraLayer) -> bool:
    """Whether the LoRA values of a merged layer differ from those merged into its base weight (an
    optimizer step, an in-place edit or a copy into the parameters since the merge)."""
    snapshot = getattr(layer, "_rass_merged_lora", None)
    if not layer.merged or snapshot is None:
        return False
    current = _lora_pairs(layer, layer.merged_adapters)
    if len(current) != len(snapshot):
        return True
    if any(a.device != a0.device or a.dtype != a0.dtype for (a, _), (a0, _) in zip(current, snapshot)):
        # the module was moved or cast (`.to()` converts the parameters, not this record): follow it
        snapshot = [(a0.to(a.device, a.dtype), b0.to(b.device, b.dtype)) for (a, b), (a0, b0) in zip(current, snapshot)]
        layer._rass_merged_lora = snapshot
    return any(
        not (torch.equal(a, a0) and torch.equal(b, b0)) for (a, b), (a0, b0) in zip(current, snapshot))


@torch.no_grad()
def _unmerge_layer(layer: LoraLayer) -> None:
    """peft's unmerge, with the LoRA values that were merged (the current ones may have changed since)."""
    snapshot = getattr(layer, "_rass_merged_lora", None)
    if snapshot is None or not _merged_lora_changed(layer):
        layer.unmerge()
    else:
        current = [(a.detach().clone(), b.detach().clone()) for a, b in _lora_pairs(layer, layer.merged_adapters)]
        for (a, b), (a0, b0) in zip(_lora_pairs(layer, layer.merged_adapters), snapshot):
            a.copy_(a0)
            b.copy_(b0)
        adapters = list(layer.merged_adapters)
        layer.unmerge()
        for (a, b), (a1, b1) in zip(_lora_pairs(layer, adapters), current):
            a.copy_(a1)
            b.copy_(b1)
    layer._rass_merged_lora = None


@torch.no_grad()
def _merge_layer(layer: LoraLayer) -> None:
    _install_merge_hooks(layer)
    layer.merge()
    # the merged values, to unmerge exactly what was merged even if the LoRA changes in place later
    layer._rass_merged_lora = [(a.detach().clone(), b.detach().clone())
                               for a, b in _lora_pairs(layer, layer.merged_adapters)]


def unmerged_base_weight(layer: LoraLayer) -> torch.Tensor:
    """The base weight of `layer` without its merged adapters (what unmerging would leave), as a new tensor.

    Args:
        layer: a peft LoRA layer (merged or not).
    """
    weight = layer.get_base_layer().weight.detach()
    if not layer.merged:
        return weight
    if _merged_lora_changed(layer):  # bring the merged delta up to date first
        _unmerge_layer(layer)
        _merge_layer(layer)
    out = weight.clone()
    for adapter in layer.merged_adapters:  # peft's unmerge: weight -= delta (no bias LoRA here)
        out -= layer.get_delta_weight(adapter).to(out.dtype)
    return out


def _state_dict_unmerged(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook of a LoRA layer: report the base weight without the merged adapters, so a
    model saved while merged loads back correctly (base and LoRA apart, as when training)."""
    key = prefix + "base_layer.weight"
    if isinstance(module, LoraLayer) and module.merged and key in state_dict:
        state_dict[key] = unmerged_base_weight(module)


def _unmerge_before_load(module: nn.Module, *args) -> None:
    """load_state_dict pre-hook of a LoRA layer: unmerge first, so loaded base/LoRA values are never
    combined with a delta merged from the old LoRA values (the owner merges again when it wants)."""
    if isinstance(module, LoraLayer) and module.merged:
        _unmerge_layer(module)


def _install_merge_hooks(layer: LoraLayer) -> None:
    if not getattr(layer, "_rass_merge_hooks", False):
        layer.register_state_dict_post_hook(_state_dict_unmerged)
        layer.register_load_state_dict_pre_hook(_unmerge_before_load)
        layer._rass_merge_hooks = True


@torch.no_grad()
def set_lora_merged(model: nn.Module, merged: bool) -> int:
    """Merge the active adapters of every LoRA layer into its base weight (`merged=True`), or take them
    out again (`False`); the adapters are kept, so training and `lora_state_dict` export still work.

    A merged layer computes `base(x)` with W + scale·B·A instead of `base(x) + scale·B(A(x))` (one
    convolution / matmul instead of three). The merged LoRA values are remembered (rank-r copies), so
    a LoRA changed in place since the merge (optimizer step, `copy_`, a loaded file) is merged anew
    here, and unmerging always subtracts what was added. While merged, `state_dict()` still reports
    the unmerged base weight and `load_state_dict` unmerges first. Edit base weights in place only
    while unmerged. Unmerging subtracts the delta again, so a merge/unmerge round trip may change the
    base weight by float rounding (at most about one unit in the last place of the merged value; ~6e-8
    relative in float32). Layers on the meta device are left alone.

    Args:
        model: a module with peft LoRA layers.
        merged: the wanted state.

    Returns:
        The number of layers (un)merged or merged anew.
    """
    changed = 0
    for layer in lora_layers(model):
        if layer.get_base_layer().weight.device.type == "meta":
            continue
        touched = False
        if layer.merged and (not merged or _merged_lora_changed(layer)):
            _unmerge_layer(layer)
            touched = True
        if merged and not layer.merged:
            _merge_layer(layer)
            touched = True
        changed += int(touched)
    return changed
