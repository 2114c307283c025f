"""Feature taps: the outputs of named sub-modules, captured with forward hooks during one call.

The VAE and UNet are stock diffusers modules; the backbone reads the intermediate block outputs it
needs by hooking them for the duration of a forward pass (no forked model code).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Sequence

import torch
from torch import nn

from rass.utils.errors import UserValueError

__all__ = ["capture_outputs", "resolve_taps", "tap_shape"]


def resolve_taps(root: nn.Module, paths: Sequence[str]) -> Dict[str, nn.Module]:
    """Look up tapped modules by dotted path.

    Args:
        root: the module the paths are relative to (the backbone).
        paths: e.g. ["vae.encoder.down_blocks.1", "unet.up_blocks.0"].

    Returns:
        path -> module, in the given order.
    """
    found = {}
    for path in paths:
        try:
            found[path] = root.get_submodule(path)
        except AttributeError as e:
            raise UserValueError(f"MODEL.RASS.FEATURE_TAPS: no module {path!r} in the backbone ({e})") from e
    return found


@contextlib.contextmanager
def capture_outputs(modules: Dict[str, nn.Module]) -> Iterator[Dict[str, torch.Tensor]]:
    """Within the context, the returned dict receives each module's latest forward output.

    Args:
        modules: name -> module to hook.

    Yields:
        A dict filled as the modules run; a tuple/list output contributes its first element.
    """
    store: Dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, _inputs, output):
            store[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def tap_shape(parts_or_configs: Any, tap: str) -> Optional[tuple]:
    """(channels, stride w.r.t. the image) of a tapped VAE-encoder / UNet block, from the configs.

    Args:
        parts_or_configs: an `SDParts` (uses `.vae.config` / `.unet.config`).
        tap: "vae.encoder.down_blocks.<i>" or "unet.up_blocks.<i>" or "unet.down_blocks.<i>".

    Returns:
        (channels, stride), or None for other module paths.
    """
    vae_cfg, unet_cfg = parts_or_configs.vae.config, parts_or_configs.unet.config
    parts = tap.split(".")
    vae_channels = list(vae_cfg.block_out_channels)
    latent_stride = 2 ** (len(vae_channels) - 1)
    unet_channels = list(unet_cfg.block_out_channels)
    n = len(unet_channels)
    index = int(parts[-1]) if parts[-1].isdigit() else -1
    if parts[:3] == ["vae", "encoder", "down_blocks"] and len(parts) == 4 and 0 <= index < len(vae_channels):
        return vae_channels[index], 2 ** min(index + 1, len(vae_channels) - 1)
    if parts[:2] == ["unet", "down_blocks"] and len(parts) == 3 and 0 <= index < n:
        return unet_channels[index], latent_stride * 2 ** min(index + 1, n - 1)
    if parts[:2] == ["unet", "up_blocks"] and len(parts) == 3 and 0 <= index < n:
        return unet_channels[::-1][index], latent_stride * 2 ** max(n - 2 - index, 0)
    return None
