"""PyTorch's own initialisation of its plain layers, drawn from a caller's generator: what the released SAM-family
models (segment-anything, SAM2, RobustSAM) start from, since they build plain PyTorch modules, while the
transformers classes the project composes start from `_init_weights` (normal 0.02)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["init_like_pytorch"]


@torch.no_grad()
def init_like_pytorch(module: nn.Module, generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, ...]:
    """Re-draw the parameters of one plain layer as PyTorch constructs it (not its children).

    Linear / Conv2d / ConvTranspose2d: weight kaiming-uniform (a = sqrt(5)), bias U(+-1/sqrt(fan_in)); LayerNorm /
    BatchNorm2d: ones / zeros; Embedding: N(0, 1).

    Args:
        module: any module; only the kinds above are touched.
        generator: the random stream; None draws from torch's global RNG.

    Returns:
        The tensors set (empty for another kind of module).
    """
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            fan_in = module.weight[0].numel()  # PyTorch's fan-in (dim 1 x kernel) for all three kinds
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        return tuple(t for t in (module.weight, module.bias) if t is not None)
    if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):  # transformers' SamLayerNorm is a LayerNorm too
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        return tuple(t for t in (module.weight, module.bias) if t is not None)
    if isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 1.0, generator=generator)
        return (module.weight,)
    return ()
