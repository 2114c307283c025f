"""Stable-SAM's plugins (arXiv 2311.15776, ICLR 2025) on transformers' SAM mask decoder, SAM's weights untouched.

Code and weights of Stable-SAM were never published; this follows the paper's figure and text (see
docs/STABLE_SAM.md for every open choice):

- DSP (deformable sampling plugin) in the token-to-image attention of the SECOND two-way block
  (`mask_decoder.transformer.layers[1].cross_attn_token_to_image`). On the image features x_p
  entering that block (B·P x C x H x W): x*_p = Conv1x1(x_p) (C -> C); offsets from
  DWConv5x5(x*_p) -> LayerNorm2d -> GELU -> Conv1x1 -> Δp (2 channels, in grid cells; + 1 amplitude
  channel m with AMPLITUDES, the ICLR text's "offsets and amplitudes", applied as 2·sigmoid(m));
  deformed features x*_{p+Δp} = bilinear samples of x*_p at p + Δp (zeros outside the map).
- DRP (dynamic routing plugin): LayerNorm -> Linear(C, hidden) -> GELU -> Linear(hidden, 2) -> softmax
  on the output token t_o (mask token 0 as that attention sees it: block 2's query, i.e. the token
  after block 2's self-attention plus its prompt/token embedding), giving α = (α1, α2), α1 + α2 = 1.
- The attention's image keys/values become α1·x*_{p+Δp} + α2·x_p (keys keep SAM's positional
  encoding added); the image-to-token attention and everything else keep the original x_p.

Composition: a forward pre-hook on that attention module rewrites its `key` / `value` arguments, only
inside `StableSamPlugins.active()`; SAM's modules and state-dict names stay as they are, and outside
the context the same `SamModel` is plain SAM. With α = (0, 1) the rewritten key/value are exactly SAM's
(v' = 0·x* + 1·x_p = x_p, key + (v' − x_p) = key). Initialisation: the first 1x1 conv is the identity and the last one
zero (no offset, amplitude 1), the routing head zero (α = (0.5, 0.5)), so an untrained plugin also
gives SAM's outputs exactly (v' − x_p = 0 exactly).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam.modeling_sam import SamLayerNorm

from rass.utils.errors import UserValueError

__all__ = ["DeformableSamplingPlugin", "DynamicRoutingPlugin", "StableSamPlugins", "shift_sample",
           "PLUGIN_BLOCK", "OUTPUT_TOKEN_INDEX"]

# The two-way block that gets the DSP (0-based: the second block), and the token the DRP reads
# (0 = IoU token, 1 = mask token 0, the single-mask output token).
PLUGIN_BLOCK = 1
OUTPUT_TOKEN_INDEX = 1


def shift_sample(features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of `features` at every grid cell moved by `offsets` (zeros outside the map).

    Args:
        features: N x C x H x W.
        offsets: N x 2 x H x W, (Δx, Δy) in grid cells (1 = one cell to the right / down).

    Returns:
        N x C x H x W: out[n, :, y, x] = features[n, :, y + Δy, x + Δx] (bilinear).
    """
    n, _, h, w = features.shape
    if offsets.shape != (n, 2, h, w):
        raise ValueError(f"shift_sample: offsets must be [{n}, 2, {h}, {w}], got {tuple(offsets.shape)}")
    ys = torch.arange(h, device=features.device, dtype=offsets.dtype)
    xs = torch.arange(w, device=features.device, dtype=offsets.dtype)
    gx = (2 * (xs[None, None, :] + offsets[:, 0]) + 1) / w - 1  # align_corners=False cell centres
    gy = (2 * (ys[None, :, None] + offsets[:, 1]) + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).to(features.dtype)
    return F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class DeformableSamplingPlugin(nn.Module):
    """DSP: x*_p = Conv1x1(x_p); Δp (and amplitude) from DWConv-LN-GELU-Conv1x1; x*_{p+Δp} sampled bilinearly.

    Args:
        channels: C, the decoder width (256 for SAM).
        kernel_size: depth-wise kernel (5 in the paper's figure).
        amplitudes: predict a per-cell amplitude (third output channel, 2·sigmoid) as the ICLR text says.
        layer_norm_eps: epsilon of the LayerNorm2d.
    """

    def __init__(self, channels: int, kernel_size: int = 5, amplitudes: bool = True, layer_norm_eps: float = 1e-6):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserValueError(f"MODEL.STABLE_SAM.DSP_KERNEL_SIZE must be an odd number >= 1, got {kernel_size}")
        self.channels = int(channels)
        self.amplitudes = bool(amplitudes)
        self.input_proj = nn.Conv2d(channels, channels, 1)
        self.dw_conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = SamLayerNorm(channels, eps=layer_norm_eps, data_format="channels_first")
        self.act = nn.GELU()
        self.offset_proj = nn.Conv2d(channels, 3 if amplitudes else 2, 1)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Identity input projection, zero offset/amplitude head, PyTorch-style uniform depth-wise conv.

        Args:
            generator: source of the depth-wise conv's random init (None: torch's global RNG).
        """
        c = self.channels
        self.input_proj.weight.copy_(torch.eye(c, dtype=self.input_proj.weight.dtype).view(c, c, 1, 1))
        self.input_proj.bias.zero_()
        bound = 1.0 / (self.dw_conv.weight[0].numel() ** 0.5)
        self.dw_conv.weight.copy_(torch.rand(self.dw_conv.weight.shape, generator=generator) * 2 * bound - bound)
        self.dw_conv.bias.zero_()
        self.norm.reset_parameters()
        self.offset_proj.weight.zero_()
        self.offset_proj.bias.zero_()

    def offsets(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(x*_p, Δp N x 2 x H x W in cells, amplitude N x 1 x H x W or None) of features x_p (N x C x H x W)."""
        x_star = self.input_proj(x)
        out = self.offset_proj(self.act(self.norm(self.dw_conv(x_star))))
        amplitude = 2 * torch.sigmoid(out[:, 2:3]) if self.amplitudes else None
        return x_star, out[:, :2], amplitude

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deformed features x*_{p+Δp} (times the amplitude), N x C x H x W."""
        x_star, delta, amplitude = self.offsets(x)
        sampled = shift_sample(x_star, delta)
        return sampled if amplitude is None else sampled * amplitude


class DynamicRoutingPlugin(nn.Module):
    """DRP: routing weights α = softmax(Linear(GELU(Linear(LN(t_o))))) ∈ (0, 1)², α1 + α2 = 1.

    Args:
        channels: C.
        hidden_dim: the MLP's hidden width.
    """

    def __init__(self, channels: int, hidden_dim: int = 24):
        super().__init__()
        if hidden_dim < 1:
            raise UserValueError(f"MODEL.STABLE_SAM.DRP_HIDDEN_DIM must be >= 1, got {hidden_dim}")
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, 2)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """PyTorch-style uniform first layer, zero last layer (α = (0.5, 0.5) before training)."""
        self.norm.reset_parameters()
        bound = 1.0 / (self.fc1.in_features ** 0.5)
        self.fc1.weight.copy_(torch.rand(self.fc1.weight.shape, generator=generator) * 2 * bound - bound)
        self.fc1.bias.zero_()
        self.fc2.weight.zero_()
        self.fc2.bias.zero_()

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        """[..., C] output token -> [..., 2] routing weights (α1 deformable, α2 regular grid)."""
        return torch.softmax(self.fc2(self.act(self.fc1(self.norm(token)))).float(), dim=-1).to(token.dtype)


class StableSamPlugins(nn.Module):
    """DSP + DRP, hooked into one SAM mask decoder (see the module doc).

    Args:
        channels: C, the decoder width.
        kernel_size: DSP depth-wise kernel.
        amplitudes: DSP amplitudes (ICLR text).
        drp_hidden_dim: DRP hidden width.
        image_size: side of the (square) image-embedding grid the hook reshapes the keys to.
    """

    def __init__(self, channels: int = 256, kernel_size: int = 5, amplitudes: bool = True, drp_hidden_dim: int = 24,
                 image_size: int = 64):
        super().__init__()
        self.dsp = DeformableSamplingPlugin(channels, kernel_size, amplitudes)
        self.drp = DynamicRoutingPlugin(channels, drp_hidden_dim)
        self.grid = int(image_size)
        self._active = 0
        self._handle = None
        # Fixed (α1, α2) instead of the DRP's (tests, ablations: (0, 1) = SAM; (1, 0) = deformable only).
        self.fixed_routing: Optional[Tuple[float, float]] = None
        # α of the last plugged decoder call, B·P x 2 (detached), for inspection.
        self.last_routing: Optional[torch.Tensor] = None

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Initialise both plugins (`DeformableSamplingPlugin.reset_parameters`, `DynamicRoutingPlugin...`)."""
        self.dsp.reset_parameters(generator)
        self.drp.reset_parameters(generator)

    def part_counts(self) -> Dict[str, int]:
        """Parameter count per part: {"dsp", "drp", "total"}."""
        dsp = sum(p.numel() for p in self.dsp.parameters())
        drp = sum(p.numel() for p in self.drp.parameters())
        return {"dsp": dsp, "drp": drp, "total": dsp + drp}

    def attach(self, sam: nn.Module) -> None:
        """Hook the plugins into `sam`'s second two-way block (a no-op unless `active()`).

        Args:
            sam: a transformers `SamModel` whose mask decoder has >= 2 two-way blocks of this width.
        """
        layers = sam.mask_decoder.transformer.layers
        if len(layers) <= PLUGIN_BLOCK:
            raise UserValueError(f"Stable-SAM plugs into two-way block {PLUGIN_BLOCK + 1}, but this SAM's mask decoder "
                                 f"has {len(layers)} block(s)")
        width = int(sam.config.mask_decoder_config.hidden_size)
        if width != self.dsp.channels:
            raise UserValueError(f"Stable-SAM plugins of width {self.dsp.channels} cannot plug into a SAM mask decoder "
                                 f"of width {width}")
        if self._handle is not None:
            self._handle.remove()
        attn = layers[PLUGIN_BLOCK].cross_attn_token_to_image
        self._handle = attn.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside this context the hooked SAM decoder uses the plugins."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    def routing(self, token: torch.Tensor) -> torch.Tensor:
        """α (N x 2) for output tokens N x C: the DRP's, or `fixed_routing`."""
        if self.fixed_routing is None:
            return self.drp(token)
        return torch.tensor(self.fixed_routing, dtype=token.dtype, device=token.device).expand(token.shape[0], 2)

    def plug(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The plugged keys and values of the token-to-image attention.

        Args:
            query: B x P x T x C tokens (+ their embeddings), as the attention gets them.
            key: B·P x 1 x HW x C image features + positional encoding.
            value: B·P x 1 x HW x C image features x_p.

        Returns:
            (key + (v' − x_p), v') with v' = α1·x*_{p+Δp} + α2·x_p: the keys keep their positional
            encoding, and v' = x_p (α = (0, 1), or the untrained plugin) leaves both bit-identical.
        """
        n, _, hw, c = value.shape
        if hw != self.grid * self.grid:
            raise ValueError(f"Stable-SAM: expected {self.grid}x{self.grid} image features, got {hw} positions")
        x = value[:, 0].transpose(1, 2).reshape(n, c, self.grid, self.grid)
        deformed = self.dsp(x).flatten(2).transpose(1, 2)[:, None]  # n x 1 x HW x C
        alpha = self.routing(query[:, :, OUTPUT_TOKEN_INDEX, :].reshape(n, c))
        self.last_routing = alpha.detach()
        a1, a2 = alpha[:, 0].view(n, 1, 1, 1), alpha[:, 1].view(n, 1, 1, 1)
        plugged = (a1 * deformed + a2 * value).contiguous()  # contiguous as SAM's own (same SDPA kernel path)
        return (key + (plugged - value)).contiguous(), plugged

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):
        if not self._active:
            return None
        kwargs = dict(kwargs)
        kwargs["key"], kwargs["value"] = self.plug(kwargs["query"], kwargs["key"], kwargs["value"])
        return args, kwargs

    def extra_repr(self) -> str:
        return f"grid={self.grid}, block={PLUGIN_BLOCK}, fixed_routing={self.fixed_routing}"
