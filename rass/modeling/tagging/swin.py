"""Swin Transformer image encoder of RAM (fixed input size), with optional LoRA on qkv.

timm's Swin cannot load RAM's checkpoint by name (timm puts each stage's patch merging at the
start of the next stage and keeps `relative_position_index` / `attn_mask` out of the state dict),
so the stages are the project's own; the MLP is timm's (`fc1`/`fc2`, same names).

State-dict layout (as RAM's `visual_encoder.*`): `patch_embed.{proj,norm}`,
`layers.<i>.blocks.<j>.{norm1, attn.{relative_position_bias_table, relative_position_index,
qkv, proj}, norm2, mlp.{fc1, fc2}}`, `attn_mask` on shifted blocks, `layers.<i>.downsample.
{reduction, norm}` at the end of every stage but the last, and the final `norm`.
The output is `[B, 1 + L, C]`: the mean token first, then the L last-stage tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn
from torch.nn import functional as F

from .lora import MergedLoRALinear

__all__ = ["SwinTransformer"]


def _relative_position_index(window: int) -> torch.Tensor:
    """[w*w, w*w] index into the (2w-1)^2 relative-bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, window * window, C]."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _merge(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """[B * nW, window * window, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def _shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """[nW, window^2, window^2] additive mask (0 / -100) of the cyclically shifted windows."""
    region = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[:, hs, ws, :] = label
            label += 1
    ids = _partition(region, window).squeeze(-1)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative-position bias.

    Args:
        dim: channels.
        window: window side.
        num_heads: heads.
        lora_rank: >0 puts LoRA (loralib `MergedLinear` layout) on the q and v parts of `qkv`.
        lora_alpha: LoRA alpha (update scale alpha / rank).
    """

    def __init__(self, dim: int, window: int, num_heads: int, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window))
        if lora_rank > 0:
            self.qkv = MergedLoRALinear(dim, 3 * dim, lora_rank, (True, False, True), alpha=lora_alpha)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [B * nW, N, C]; mask: [nW, N, N] additive or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)  # [1, heads, N, N]
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1).to(bias.dtype)).unsqueeze(0)  # [1, nW, heads, N, N]
            bias = bias.expand(bw // nw, -1, -1, -1, -1).reshape(bw, self.num_heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """One (shifted-)window attention block for a fixed input resolution.

    Args:
        dim: channels.
        resolution: (H, W) of the token grid.
        num_heads: heads.
        window: window side (clipped to the resolution, which then disables shifting).
        shift: cyclic shift (0 or window // 2).
        mlp_ratio: MLP hidden width / dim.
        drop_path: stochastic-depth rate.
        lora_rank: LoRA rank on qkv (0: none).
        lora_alpha: LoRA alpha.
    """

    def __init__(
        self,
        dim: int,
        resolution: Tuple[int, int],
        num_heads: int,
        window: int,
        shift: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        if min(self.resolution) <= window:
            window, shift = min(self.resolution), 0
        if self.resolution[0] % window or self.resolution[1] % window:
            raise ValueError(f"Swin: resolution {self.resolution} is not a multiple of window {window}")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, lora_rank, lora_alpha)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        mask = _shift_mask(*self.resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, length, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = _merge(self.attn(_partition(y, self.window), self.attn_mask), self.window, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, length, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concatenation (order (0,0), (1,0), (0,1), (1,1)), LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int, resolution: Tuple[int, int]) -> None:
        super().__init__()
        self.resolution = tuple(resolution)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks (alternating shift) followed by an optional patch merging."""

    def __init__(self, blocks: Sequence[SwinBlock], downsample: Optional[PatchMerging]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection + LayerNorm: [B, 3, H, W] -> [B, H/p * W/p, C]."""

    def __init__(self, image_size: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"Swin encoder expects {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}"
            )
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinTransformer(nn.Module):
    """RAM's Swin image encoder (no classification head).

    Args:
        image_size: input side (fixed; RAM: 384).
        embed_dim: channels of the first stage (Swin-L: 192).
        depths: blocks per stage (Swin-L: [2, 2, 18, 2]).
        num_heads: heads per stage (Swin-L: [6, 12, 24, 48]).
        window_size: attention window side (RAM at 384: 12).
        patch_size: patch side (4).
        mlp_ratio: MLP width ratio (4).
        drop_path_rate: maximal stochastic-depth rate (linearly increasing over blocks).
        lora_rank: >0 adds LoRA to every `qkv` (q and v slices), as DAPE does.
        lora_alpha: LoRA alpha.
    """

    def __init__(
        self,
        image_size: int = 384,
        embed_dim: int = 192,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (6, 12, 24, 48),
        window_size: int = 12,
        patch_size: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"Swin: depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        grid = image_size // patch_size
        if grid * patch_size != image_size or grid % (2 ** (len(depths) - 1)):
            raise ValueError(f"Swin: image size {image_size} does not fit patch {patch_size} and {len(depths)} stages")
        self.patch_embed = PatchEmbed(image_size, patch_size, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim, res = embed_dim * 2**i, (grid // 2**i, grid // 2**i)
            blocks = [
                SwinBlock(dim, res, heads, window_size, 0 if j % 2 == 0 else window_size // 2, mlp_ratio,
                          rates[sum(depths[:i]) + j], lora_rank, lora_alpha)
                for j in range(depth)
            ]
            down = PatchMerging(dim, res) if i < len(depths) - 1 else None
            stages.append(SwinStage(blocks, down))
        self.layers = nn.ModuleList(stages)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, S, S] normalised image -> [B, 1 + L, C] (mean token, then tokens)."""
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        x = self.norm(x)
        return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)
