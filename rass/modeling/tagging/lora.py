"""LoRA linear layers whose parameters are named as the `loralib` package names them.

DAPE (SeeSR) checkpoints store adapters as `<layer>.lora_A` / `<layer>.lora_B` next to the
layer's own `weight` / `bias` (no adapter name, unlike peft). These layers keep exactly that
layout so such files load by name:

- `LoRALinear`: `lora_A` [r, in], `lora_B` [out, r] (BERT query/key in DAPE).
- `MergedLoRALinear`: one fused projection (e.g. Swin `qkv`, out = 3 * C) with adapters on a
  subset of its equal output slices; `lora_A` [r * k, in], `lora_B` [out / n * k, r] where k of the
  n slices are adapted (DAPE: q and v of qkv -> `lora_A` [2r, C], `lora_B` [2C, r]).

The update is `scaling * B @ A` with `scaling = alpha / r` (loralib's default alpha is 1). The
layers never merge in place: the effective weight is formed at forward time, so `state_dict()`
always holds the base weight. Where several LoRA layers share one base weight (RAM ties the
tagging head to the tag encoder), loralib merges every sharer's update into the shared tensor in
`eval()`; `tie_lora_sharers` reproduces that: each sharer then adds all sharers' updates.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LoRALinear",
    "MergedLoRALinear",
    "is_lora_key",
    "lora_state_dict",
    "tie_lora_sharers",
]

LORA_KEY_SUFFIXES: Tuple[str, str] = ("lora_A", "lora_B")


def is_lora_key(name: str) -> bool:
    """Whether a state-dict name is a loralib adapter entry (`...lora_A` / `...lora_B`)."""
    return name.rsplit(".", 1)[-1] in LORA_KEY_SUFFIXES


def lora_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    """The adapter entries of a module's state dict (what SeeSR writes to `DAPE.pth`)."""
    return {k: v for k, v in module.state_dict().items() if is_lora_key(k)}


class _LoRAMixin:
    """Shared behaviour: scaling, sharers of the base weight, effective weight."""

    rank: int
    scaling: float
    weight: nn.Parameter

    def _init_sharers(self) -> None:
        # Plain tuple (not registered as sub-modules): LoRA layers sharing this layer's weight.
        self._sharers: Tuple[nn.Module, ...] = ()

    def own_delta(self) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The scaled update of this layer plus those of every layer sharing its base weight."""
        delta = self.own_delta()
        for other in self._sharers:
            delta = delta + other.own_delta()
        return delta

    def effective_weight(self) -> torch.Tensor:
        """Base weight + LoRA update(s), in the base weight's dtype."""
        return self.weight + self.delta_weight().to(self.weight.dtype)


class LoRALinear(_LoRAMixin, nn.Linear):
    """`nn.Linear` with a rank-r update `scaling * lora_B @ lora_A` (loralib `Linear` layout).

    Args:
        in_features: input width.
        out_features: output width.
        rank: adapter rank r (> 0).
        alpha: loralib `lora_alpha`; the update is scaled by alpha / r.
        bias: whether the base layer has a bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float = 1.0, bias: bool = True) -> None:
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        super().__init__(in_features, out_features, bias=bias)
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.lora_A = nn.Parameter(torch.empty(self.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self._init_sharers()

    def own_delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


class MergedLoRALinear(_LoRAMixin, nn.Linear):
    """A fused projection with LoRA on some of its equal output slices (loralib `MergedLinear`).

    Args:
        in_features: input width.
        out_features: output width (a multiple of `len(enable)`).
        rank: adapter rank r per adapted slice.
        enable: one flag per output slice, e.g. `(True, False, True)` for q and v of a qkv.
        alpha: loralib `lora_alpha`; updates are scaled by alpha / r.
        bias: whether the base layer has a bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        enable: Sequence[bool] = (True, False, True),
        alpha: float = 1.0,
        bias: bool = True,
    ) -> None:
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        enable = tuple(bool(e) for e in enable)
        if not any(enable) or out_features % len(enable):
            raise ValueError(f"MergedLoRALinear: bad enable={enable} for out_features={out_features}")
        super().__init__(in_features, out_features, bias=bias)
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank
        self.enable = enable
        self.slice_size = out_features // len(enable)
        n_on = sum(enable)
        self.lora_A = nn.Parameter(torch.empty(self.rank * n_on, in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.slice_size * n_on, self.rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self._init_sharers()

    def own_delta(self) -> torch.Tensor:
        r, s = self.rank, self.slice_size
        parts: List[torch.Tensor] = []
        j = 0
        for on in self.enable:
            if on:
                parts.append(self.lora_B[j * s:(j + 1) * s] @ self.lora_A[j * r:(j + 1) * r])
                j += 1
            else:
                parts.append(self.lora_A.new_zeros(s, self.in_features))
        return torch.cat(parts, dim=0) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, enable={self.enable}, scaling={self.scaling:g}"


def tie_lora_sharers(modules: Iterable[nn.Module]) -> int:
    """Make LoRA layers that share one base weight each apply all sharers' updates.

    This is loralib's eval-mode behaviour (every sharer merges its update into the one shared
    tensor). Call it after weights are tied.

    Args:
        modules: modules to scan (e.g. `model.modules()`).

    Returns:
        The number of LoRA layers that have at least one sharer.
    """
    groups: Dict[int, List[nn.Module]] = {}
    for m in modules:
        if isinstance(m, _LoRAMixin):
            groups.setdefault(id(m.weight), []).append(m)
    tied = 0
    for members in groups.values():
        for m in members:
            m._sharers = tuple(o for o in members if o is not m)
            tied += bool(m._sharers)
    return tied
