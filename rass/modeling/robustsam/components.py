"""RobustSAM's added decoder blocks (CVPR 2024; facts: shared reference `stable_sam_and_peers.md` §3).

Module and parameter names are the released ones (`robust_segment_anything/modeling/components.py`), so
the released `robustsam_checkpoint_{b,l,h}.pth` load strictly:

- AMFG (anti-degradation mask feature generation) = DNC -> FGM -> 3x3 conv on the degraded path only,
  then the block's own resampling layers on both paths:
  - `DegradationNormalization` (DNC, released `DNCBlock_combined`): a selective convolution over a
    BatchNorm branch and an InstanceNorm branch (SK-style attention picks per position), concatenated with
    the input and weighted by squeeze-excitation channel attention -> 2C channels;
  - `FourierGuidance` (FGM, released `FGMBlock`): a 1x1 conv on the FFT magnitude, the phase kept;
- AOTG (anti-degradation output token generation, released `TokenBlock`): two instance norms over each
  token, the token cut into 4 chunks, an MLP on each chunk.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamLayerNorm

__all__ = ["Selector", "SelectiveConv", "SelectiveDown", "ChannelAttention", "DegradationNormalization",
           "FourierGuidance", "MaskFeatureBlock", "EncoderFeatureBlock", "TokenBlock", "LN2D_EPS"]

# segment-anything's LayerNorm2d eps (the release builds its resampling layers with it).
LN2D_EPS = 1e-6


def _ln2d(channels: int) -> nn.Module:
    return SamLayerNorm(channels, eps=LN2D_EPS, data_format="channels_first")


class Selector(nn.Module):
    """Spatial selection weights of two branches (softmax over the branches, per channel and 4x4 cell).

    Args:
        channels: channels C of the branches.
        reduction: the bottleneck is C * 16 / reduction wide.
        cells: the attention grid side (4 as released); each cell's weight covers H/cells x W/cells pixels.
    """

    def __init__(self, channels: int, reduction: int = 16, cells: int = 4) -> None:
        super().__init__()
        self.cells = int(cells)
        width = channels * self.cells ** 2
        self.avg_pool = nn.AdaptiveAvgPool2d((self.cells, self.cells))
        self.fc = nn.Sequential(nn.Linear(width, width // reduction, bias=False), nn.ReLU(inplace=True))
        self.att_conv1 = nn.Linear(width // reduction, width)
        self.att_conv2 = nn.Linear(width // reduction, width)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weights (w1, w2), each B x C x H x W, w1 + w2 = 1, nearest-upsampled from the cells."""
        b, c, h, w = x.shape
        y = self.fc(self.avg_pool(x).reshape(b, -1))
        logits = torch.stack([self.att_conv1(y), self.att_conv2(y)]).view(2, b, c, self.cells, self.cells)
        att = logits.softmax(dim=0)
        return (F.interpolate(att[0], size=(h, w), mode="nearest"), F.interpolate(att[1], size=(h, w), mode="nearest"))


class SelectiveConv(nn.Module):
    """Two 3x3 convs, on a BatchNorm+LeakyReLU and an InstanceNorm+LeakyReLU view of the input, mixed by a
    `Selector` on their sum.

    Args:
        channels: input and output channels.
        reduction: the selector's reduction.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.selector = Selector(channels, reduction=reduction)
        self.IN = nn.InstanceNorm2d(channels)
        self.BN = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out1 = self.conv1(F.leaky_relu(self.BN(x)))
        out2 = self.conv2(F.leaky_relu(self.IN(x)))
        w1, w2 = self.selector(out1 + out2)
        return out1 * w1 + out2 * w2


class SelectiveDown(nn.Module):
    """The released `SKDown` wrapper (`maxpool_conv.0` = the `SelectiveConv`; no pooling despite the name)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(SelectiveConv(channels, reduction))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class ChannelAttention(nn.Module):
    """Squeeze-excitation: x * sigmoid(MLP(mean over H, W)).

    Args:
        channels: channels of x.
        reduction: bottleneck = channels // reduction.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.excitation = nn.Sequential(nn.Linear(channels, channels // reduction), nn.ReLU(inplace=True),
                                        nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.excitation(self.squeeze(x).view(b, c)).view(b, c, 1, 1)


class DegradationNormalization(nn.Module):
    """DNC: [x, SelectiveConv(x)] (2C channels) weighted by channel attention.

    Args:
        channels: input channels C (the output has 2C).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(2 * channels)
        self.SEMBlock = SelectiveDown(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_attention(torch.cat([x, self.SEMBlock(x)], dim=1))


class FourierGuidance(nn.Module):
    """FGM: X = FFT2(x); |X| -> 1x1 conv -> M'; output Re(IFFT2(M' * exp(i * angle(X)))) (phase kept).

    Args:
        channels: C; the block works on 2C channels (the DNC output), as released.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.fft2(x.float(), dim=(-2, -1))
        magnitude = self.conv_layer(spectrum.abs().to(self.conv_layer.weight.dtype)).float()
        out = torch.fft.ifft2(torch.polar(magnitude, spectrum.angle()), dim=(-2, -1)).real
        return out.to(x.dtype)


class _AMFG(nn.Module):
    """Shared AMFG body: on the degraded path (clear=False) x -> DNC -> FGM -> 3x3 conv (2C -> C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dnc_block_combined = DegradationNormalization(channels)
        self.fgm_block = FourierGuidance(channels)
        self.conv_layer = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)

    def robust(self, x: torch.Tensor, clear: bool) -> torch.Tensor:
        if clear:
            return x
        return self.conv_layer(self.fgm_block(self.dnc_block_combined(x)))


class MaskFeatureBlock(_AMFG):
    """AMFG on the decoder's mask features (`fourier_mask_features`): C = transformer_dim // 8 channels in and
    out, same size (3x3 conv C -> 2C, LayerNorm2d, GELU, 3x3 conv 2C -> C after the AMFG body).

    Args:
        transformer_dim: the decoder width (256).
    """

    def __init__(self, transformer_dim: int) -> None:
        c = transformer_dim // 8
        super().__init__(c)
        self.downsample_layer = nn.Sequential(nn.Conv2d(c, 2 * c, 3, 1, 1), _ln2d(2 * c), nn.GELU(),
                                              nn.Conv2d(2 * c, c, 3, 1, 1))

    def forward(self, x: torch.Tensor, clear: bool = True) -> torch.Tensor:
        return self.downsample_layer(self.robust(x, clear))


class EncoderFeatureBlock(_AMFG):
    """AMFG on an encoder feature map (`fourier_first_layer_features` on the first global block's output,
    C = the ViT width; `fourier_last_layer_features` on the image embedding, C = transformer_dim), then
    x4 upsampling to the mask-feature grid: ConvT(C -> D, 2, 2), LayerNorm2d, GELU, ConvT(D -> D/8, 2, 2).

    Args:
        in_channels: C.
        transformer_dim: D (256).
    """

    def __init__(self, in_channels: int, transformer_dim: int) -> None:
        super().__init__(in_channels)
        d = transformer_dim
        self.upsample_layer = nn.Sequential(nn.ConvTranspose2d(in_channels, d, kernel_size=2, stride=2), _ln2d(d),
                                            nn.GELU(), nn.ConvTranspose2d(d, d // 8, kernel_size=2, stride=2))

    def forward(self, x: torch.Tensor, clear: bool = True) -> torch.Tensor:
        return self.upsample_layer(self.robust(x, clear))


class TokenBlock(nn.Module):
    """AOTG: each token normalised (zero mean, unit variance over its D values, twice, eps 1e-5), cut into
    `chunks` pieces of D / chunks values, and each piece mapped by Linear -> ReLU -> Linear to D values.

    The release applies this to one token [1, D] at a time (`view(4, -1)`), which fails with more than one
    prompt; here any leading shape works: [..., D] -> [..., chunks, D], each row as the release computes it.

    Args:
        chunks: number of pieces (= the number of mask tokens, 4).
        transformer_dim: token width D (256).
    """

    def __init__(self, chunks: int, transformer_dim: int) -> None:
        super().__init__()
        self.chunks = int(chunks)
        piece = transformer_dim // self.chunks
        self.mlp = nn.Sequential(nn.Linear(piece, piece), nn.ReLU(), nn.Linear(piece, piece * self.chunks))
        self.IN_layer_I = nn.InstanceNorm1d(self.chunks)  # no parameters; named as released
        self.IN_layer_II = nn.InstanceNorm1d(self.chunks)

    @staticmethod
    def _norm(x: torch.Tensor, eps: float) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., D] tokens -> [..., chunks, D]."""
        x = self._norm(self._norm(x, self.IN_layer_I.eps), self.IN_layer_II.eps)
        return self.mlp(x.reshape(*x.shape[:-1], self.chunks, -1))
