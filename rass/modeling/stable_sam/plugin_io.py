"""Stable-SAM plugin files: the plugins' weights alone (about 0.3 MB), tagged with the SAM size they were trained on.

File format (`torch.save`, read with `torch.load(weights_only=True)`): {"format": "stable_sam_plugins",
"version": 1, "sam_size": e.g. "vit_l", "sam_encoder": the encoder hyper-parameters (embed dim, blocks, ...),
"config": {"channels", "kernel_size", "amplitudes", "drp_hidden_dim"}, "state_dict": {"dsp.*", "drp.*"}}.
A file loads onto any SAM of the same size (any checkpoint); another size is refused, naming both.
"""
from __future__ import annotations

import io
from typing import Dict, Mapping, Union

import torch
from torch import nn

from rass.checkpoint.files import read_checkpoint_file
from rass.checkpoint.sam_loader import describe_encoder_shape, file_encoder_shape, model_encoder_shape, encoder_variant_name
from rass.utils.errors import UserValueError
from rass.utils.io import write_bytes_atomic

from .plugins import StableSamPlugins

__all__ = ["PLUGIN_FORMAT", "sam_size_name", "sam_encoder_shape", "plugin_config", "plugin_file_payload",
           "save_plugin_file",
           "load_plugin_file", "plugin_state_from_model_state"]

PLUGIN_FORMAT = "stable_sam_plugins"
PLUGIN_PREFIX = "plugins."


def sam_size_name(sam_shape: Mapping[str, object]) -> str:
    """"vit_b" / "vit_l" / "vit_h" / "tiny", or "custom", of SAM encoder hyper-parameters (`sam_encoder_shape`)."""
    return encoder_variant_name(sam_shape) or "custom"


def sam_encoder_shape(sam: Union[nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, object]:
    """The image-encoder hyper-parameters (embed_dim, depth, ...) of a `SamModel`, or of a SamModel state dict
    (as far as its shapes tell; "sam." prefixes of a StableSAM state dict are stripped)."""
    if isinstance(sam, nn.Module):
        return model_encoder_shape(sam)
    sd = {k[4:] if k.startswith("sam.") else k: v for k, v in sam.items()}
    return file_encoder_shape(sd)


def plugin_config(plugins: Union[StableSamPlugins, Mapping[str, torch.Tensor]]) -> Dict[str, object]:
    """The constructor values that shape the plugins (stored in the file), from the module or its state dict."""
    if isinstance(plugins, StableSamPlugins):
        return {"channels": plugins.dsp.channels, "kernel_size": int(plugins.dsp.dw_conv.kernel_size[0]),
                "amplitudes": plugins.dsp.amplitudes, "drp_hidden_dim": int(plugins.drp.fc1.out_features)}
    try:
        return {"channels": int(plugins["dsp.input_proj.weight"].shape[0]),
                "kernel_size": int(plugins["dsp.dw_conv.weight"].shape[-1]),
                "amplitudes": int(plugins["dsp.offset_proj.weight"].shape[0]) == 3,
                "drp_hidden_dim": int(plugins["drp.fc1.weight"].shape[0])}
    except KeyError as e:
        raise UserValueError(f"Stable-SAM plugin weights lack {e.args[0]!r}; found {sorted(plugins)[:6]}") from None


def plugin_file_payload(plugins_state: Mapping[str, torch.Tensor],
                        sam_shape: Mapping[str, object]) -> Dict[str, object]:
    """The dict a plugin file holds (see the module doc).

    Args:
        plugins_state: the plugins' state dict ("dsp.*", "drp.*").
        sam_shape: `sam_encoder_shape` of the SAM they were trained on.
    """
    return {"format": PLUGIN_FORMAT, "version": 1, "sam_size": sam_size_name(sam_shape),
            "sam_encoder": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sam_shape.items()},
            "config": plugin_config(plugins_state),
            "state_dict": {k: v.detach().cpu().clone() for k, v in plugins_state.items()}}


def save_plugin_file(path: str, plugins_state: Mapping[str, torch.Tensor], sam_shape: Mapping[str, object]) -> int:
    """Write a plugin file atomically; returns its size in bytes.

    Args:
        path: output file.
        plugins_state: the plugins' state dict ("dsp.*", "drp.*").
        sam_shape: `sam_encoder_shape` of the SAM they were trained on (its size is recorded).
    """
    buf = io.BytesIO()
    torch.save(plugin_file_payload(plugins_state, sam_shape), buf)
    write_bytes_atomic(path, buf.getvalue())
    return len(buf.getvalue())


def plugin_state_from_model_state(state: Mapping[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """The "plugins.*" entries of a StableSAM model state dict, without the prefix.

    Raises:
        UserValueError: there are none (names the source).
    """
    out = {k[len(PLUGIN_PREFIX):]: v for k, v in state.items() if k.startswith(PLUGIN_PREFIX)}
    if not out:
        raise UserValueError(f"{source}: no Stable-SAM plugin weights ('{PLUGIN_PREFIX}*') in this checkpoint; "
                             f"expected a StableSAM training checkpoint (e.g. model_final.pth of an RTS run)")
    return out


def load_plugin_file(path: str, plugins: StableSamPlugins, sam: nn.Module,
                     key: str = "MODEL.STABLE_SAM.PLUGIN_WEIGHTS") -> Dict[str, object]:
    """Load a plugin file onto `plugins` (strict), checking it was trained for `sam`'s size.

    Args:
        path: the plugin file (`tools/export_stable_sam.py`).
        plugins: the model's plugins.
        sam: the SAM they are plugged into.
        key: the config key that gave `path`, for messages.

    Returns:
        The file's metadata (everything but the state dict).

    Raises:
        UserValueError: not a plugin file, another SAM size, or other plugin settings.
    """
    payload = read_checkpoint_file(path, key, expected="a Stable-SAM plugin file (tools/export_stable_sam.py)")
    if not isinstance(payload, dict) or payload.get("format") != PLUGIN_FORMAT:
        found = sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
        raise UserValueError(f"{key}: {path} is not a Stable-SAM plugin file (format {PLUGIN_FORMAT!r}); found {found}",
                             hint="make one with tools/export_stable_sam.py from an RTS training checkpoint")
    want_shape = model_encoder_shape(sam)
    file_shape = {k: (tuple(v) if isinstance(v, list) else v) for k, v in payload.get("sam_encoder", {}).items()}
    other = any(v != want_shape.get(k) for k, v in file_shape.items())
    if payload.get("sam_size") != sam_size_name(want_shape) or other:
        theirs = describe_encoder_shape(file_shape) if "embed_dim" in file_shape else str(payload.get("sam_size"))
        raise UserValueError(f"{key}: {path} holds plugins trained on SAM {theirs}, but this model's SAM is "
                             f"{describe_encoder_shape(want_shape)}",
                             hint="use the plugin file exported for this SAM size, or set MODEL.SAM.VARIANT to "
                                  "the file's")
    mine = plugin_config(plugins)
    theirs = dict(payload.get("config", {}))
    if theirs != mine:
        diff = {k: (theirs.get(k), mine[k]) for k in mine if theirs.get(k) != mine[k]}
        raise UserValueError(f"{key}: {path} was made with plugin settings {theirs}, the model has {mine} "
                             f"(differences file/model: {diff})", hint="set the MODEL.STABLE_SAM keys to the file's")
    missing, unexpected = plugins.load_state_dict(payload["state_dict"], strict=False)
    if missing or unexpected:
        raise UserValueError(f"{key}: {path} does not fit the plugins: missing {list(missing)[:4]}, unexpected "
                             f"{list(unexpected)[:4]}")
    return {k: v for k, v in payload.items() if k != "state_dict"}
