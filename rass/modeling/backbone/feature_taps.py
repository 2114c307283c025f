"""Feature taps: the outputs of named sub-modules, captured with forward hooks during one call.

The VAE and UNet are stock diffusers modules; the backbone reads the intermediate block outputs it
needs by hooking them for the duration of a forward pass (no forked model code).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Sequence

import torch
from torch import nn

__all__ = ["capture_outputs", "resolve_taps"]


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
            raise ValueError(f"MODEL.RASS.FEATURE_TAPS: no module {path!r} in the backbone ({e})") from e
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
