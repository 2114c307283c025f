"""SAM2's random initialisation for the project's SAM2 modules (built from transformers classes).

SAM2 builds plain PyTorch modules, so a randomly built SAM2 starts from PyTorch's defaults, not from
transformers' `_init_weights` (normal 0.02): Linear / Conv2d / ConvTranspose2d kaiming-uniform (a = sqrt 5)
with U(+-1/sqrt(fan_in)) biases, LayerNorms ones / zeros, embeddings N(0, 1), the prompt encoder's random
Fourier matrix N(0, 1) (scale 1), Hiera's `pos_embed` / `pos_embed_window` zeros, `no_mem_embed`
truncated-normal std 0.02 (`sam2_base.py`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from transformers import Sam2HieraDetModel
from transformers.models.sam2.modeling_sam2 import Sam2PositionalEmbedding

from rass.modeling.default_init import init_like_pytorch

__all__ = ["init_sam2_weights"]


@torch.no_grad()
def init_sam2_weights(module: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """Re-initialise every parameter (and the Fourier matrix) of a SAM2 module tree as SAM2 starts.

    Args:
        module: an image encoder, prompt encoder, mask decoder or whole `Sam2ImageModel` (not on meta).
        generator: the random stream (a CPU generator); None draws from torch's global RNG.

    Returns:
        The module (initialised in place).

    Raises:
        RuntimeError: a parameter this function has no rule for (a transformers version with new ones).
    """
    done = set()

    def mark(*tensors: Optional[torch.Tensor]) -> None:
        done.update(id(t) for t in tensors if t is not None)

    for name, sub in module.named_modules():
        plain = init_like_pytorch(sub, generator)
        if plain:
            mark(*plain)
        elif isinstance(sub, Sam2PositionalEmbedding):
            nn.init.normal_(sub.positional_embedding, 0.0, float(sub.scale), generator=generator)
        elif isinstance(sub, Sam2HieraDetModel):
            nn.init.zeros_(sub.pos_embed)
            nn.init.zeros_(sub.pos_embed_window)
            mark(sub.pos_embed, sub.pos_embed_window)
    memory = getattr(module, "no_memory_embedding", None)
    if memory is not None:
        nn.init.trunc_normal_(memory, std=0.02, generator=generator)
        mark(memory)
    left = [n for n, p in module.named_parameters() if id(p) not in done]
    if left:
        raise RuntimeError(f"init_sam2_weights: no SAM2 initialisation for {left[:5]}")
    return module
