"""2-D filtering with a different kernel per sample (reflect padding), as one grouped convolution.

`filter2d(x, kernels)` computes, for each sample b, the correlation of every channel of x[b] with
kernels[b] after reflect-padding by k//2 (Real-ESRGAN's filter2D; kernels here are symmetric up
to rotation by π, so correlation = convolution). All samples and channels go through a single
depthwise `conv2d`, whose per-pixel arithmetic does not depend on the other samples (checked by
the determinism tests).

CPU note: oneDNN's depthwise kernel processes channels in blocks of 16, so a single 3-channel
image would waste most of each block. When there are few channels, the padded images are cut
into horizontal strips (with a k−1 row overlap) that become extra channels; the arithmetic per
output pixel is unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["filter2d", "filter2d_separable", "reflect_pad", "reflect_pad_hw"]

_CPU_CHANNEL_BLOCK = 16
_MIN_STRIP_ROWS = 32


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of a reflect padding (edge not repeated) that also works when pad >= n."""
    idx = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - idx, idx)


def reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Reflect-pad the last two dims of x by `pad` (repeated reflection for tiny images).

    Args:
        x: ...×H×W tensor.
        pad: padding on every side.
    """
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    if pad < h and pad < w:
        shape = x.shape
        return F.pad(x.reshape(-1, *shape[-3:]) if x.dim() >= 3 else x[None], (pad,) * 4, mode="reflect").reshape(
            *shape[:-2], h + 2 * pad, w + 2 * pad
        )
    iy = _reflect_index(h, pad, x.device)
    ix = _reflect_index(w, pad, x.device)
    return x.index_select(-2, iy).index_select(-1, ix)


def _strips(b: int, c: int, h: int, device: torch.device) -> int:
    if device.type != "cpu" or b * c >= _CPU_CHANNEL_BLOCK:
        return 1
    return max(1, min(_CPU_CHANNEL_BLOCK // (b * c), h // _MIN_STRIP_ROWS))


def filter2d(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each sample with its own kernel.

    Args:
        x: B×C×H×W float tensor.
        kernels: B×kh×kw (or 1×kh×kw, shared) kernels with odd kh, kw; kh ≠ kw allows the two
            passes of a separable filter.

    Returns:
        B×C×H×W filtered tensor.
    """
    if x.dim() != 4:
        raise ValueError(f"filter2d expects B×C×H×W input, got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if kernels.dim() != 3 or kernels.shape[-1] % 2 == 0 or kernels.shape[-2] % 2 == 0:
        raise ValueError(f"filter2d expects B×kh×kw kernels with odd kh and kw, got shape {tuple(kernels.shape)}")
    if kernels.shape[0] == 1 and b > 1:
        kernels = kernels.expand(b, -1, -1)
    if kernels.shape[0] != b:
        raise ValueError(f"filter2d: {kernels.shape[0]} kernels for {b} samples")
    kh, kw = kernels.shape[-2:]
    s = _strips(b, c, h, x.device)
    rows = -(-h // s)
    extra = s * rows - h  # rows added at the bottom so that the strips have equal heights
    xp = reflect_pad_hw(x, kh // 2, kw // 2, extra)
    if s > 1:  # equal-height overlapping strips; the `extra` output rows are cropped after
        xp = torch.stack([xp[:, :, i * rows : i * rows + rows + kh - 1] for i in range(s)], dim=1)
    weight = kernels.to(dtype=x.dtype)[:, None, None].expand(b, s, c, kh, kw).reshape(b * s * c, 1, kh, kw)
    out = F.conv2d(xp.reshape(1, b * s * c, rows + kh - 1, w + kw - 1), weight, groups=b * s * c)
    out = out.view(b, s, c, rows, w)
    if s > 1:
        out = out.permute(0, 2, 1, 3, 4).reshape(b, c, s * rows, w)[:, :, :h]
    return out.reshape(b, c, h, w)


def filter2d_separable(x: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """Filter with the outer product of per-sample 1-D kernels (a column pass, then a row pass).

    Equal, up to float rounding, to `filter2d` with kernels vertical[b] ⊗ horizontal[b].

    Args:
        x: B×C×H×W float tensor.
        vertical: B×k 1-D kernels applied along H (odd k).
        horizontal: B×k 1-D kernels applied along W (odd k).
    """
    return filter2d(filter2d(x, vertical[:, :, None]), horizontal[:, None, :])


def reflect_pad_hw(x: torch.Tensor, ph: int, pw: int, extra: int = 0) -> torch.Tensor:
    """Reflect-pad the last two dims by ph rows, pw columns (repeated reflection for tiny
    images), plus `extra` rows at the bottom (`filter2d`'s strips: their values only reach
    output rows that are cropped; reflecting them avoids a second copy)."""
    if ph == pw and extra == 0:
        return reflect_pad(x, ph)
    h, w = x.shape[-2:]
    if ph + extra < h and pw < w:
        return F.pad(x, (pw, pw, ph, ph + extra), mode="reflect")
    iy = _reflect_index(h, ph, x.device)
    if extra:
        iy = torch.cat([iy, iy[-1:].expand(extra)])
    ix = _reflect_index(w, pw, x.device)
    return x.index_select(-2, iy).index_select(-1, ix)
