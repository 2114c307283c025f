"""RobustSAM's mask decoder: SAM's decoder (transformers' `SamMaskDecoder`, composed) + the added modules.

`RobustDecoderAdditions` holds the added modules under their released names (the released files' keys
`mask_decoder.<name>` = this module's `<name>`). `robust_decode` runs SAM's two-way transformer and
upscaling with either SAM's mask tokens (clear=True, the release's teacher path on clear images) or the
robust output tokens (clear=False, always at inference), and adds the AMFG features:

    mask features = AMFG_mask(upscaled decoder features) + AMFG_first(first global block's output)
                    + AMFG_last(image embedding)                       (B x 32 x 4h x 4w)
    robust path:   hyper[p, i, j] = robust_mlp(AOTG(token_i)[j])      (4 tokens i x 4 chunks j)
                   masks[p, 4 j + i] = hyper[p, i, j] . features      (the release's 16-mask layout)
    clear path:    SAM's masks from its hypernetwork MLPs on the upscaled decoder features.

The release computes the robust path for one prompt per forward (its AOTG `view(4, -1)` fails with two);
here every prompt of an image is decoded at once, each exactly as it would be alone (tested).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
from transformers import SamModel

from rass.modeling.default_init import init_like_pytorch
from rass.modeling.transformer_decoder.layers import MLP

from .components import EncoderFeatureBlock, MaskFeatureBlock, TokenBlock

__all__ = ["RobustDecoderAdditions", "robust_decode", "prompt_embeddings", "ROBUST_MASKS"]

# Masks of the release's robust-path layout (4 tokens x 4 AOTG chunks); [0] is the single-mask output.
ROBUST_MASKS = 16


class RobustDecoderAdditions(nn.Module):
    """The modules RobustSAM adds to SAM's mask decoder (names as released).

    Args:
        vit_dim: width of SAM's ViT (768 / 1024 / 1280; tiny 32): channels of the first global block's output.
        transformer_dim: the decoder width (256).
        num_mask_tokens: SAM's mask tokens (4).
    """

    def __init__(self, vit_dim: int, transformer_dim: int = 256, num_mask_tokens: int = 4) -> None:
        super().__init__()
        self.num_mask_tokens = int(num_mask_tokens)
        # robust output token (ROT) and its hypernetwork MLP
        self.custom_robust_token = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.robust_mlp = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
        # AMFG on the mask features, the first global block's output and the image embedding
        self.fourier_mask_features = MaskFeatureBlock(transformer_dim)
        self.fourier_first_layer_features = EncoderFeatureBlock(vit_dim, transformer_dim)
        self.fourier_last_layer_features = EncoderFeatureBlock(transformer_dim, transformer_dim)
        # AOTG
        self.custom_token_block = TokenBlock(self.num_mask_tokens, transformer_dim)

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> "RobustDecoderAdditions":
        """Re-draw every parameter as the release's plain PyTorch modules start (Linear/Conv: kaiming-uniform
        a=sqrt(5) and U(+-1/sqrt(fan_in)) biases; norms: ones/zeros; the token: N(0, 1)), from `generator`."""
        for m in self.modules():
            init_like_pytorch(m, generator)
        return self


def prompt_embeddings(sam: SamModel, point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor]):
    """SAM's prompt encoder on one image's prompts (already in SAM's input frame).

    Args:
        sam: the `SamModel`.
        point_coords: [1, P, N, 2] or None; point_labels: [1, P, N] or None; boxes: [1, P, 4] or None.

    Returns:
        (sparse [1, P, T, 256], dense [1, 256, h, w], image positional encoding [1, 256, h, w]).
    """
    device = sam.mask_decoder.iou_token.weight.device
    sparse, dense = sam.prompt_encoder(
        input_points=None if point_coords is None else point_coords.to(device, torch.float32),
        input_labels=None if point_labels is None else point_labels.to(device, torch.long),
        input_boxes=None if boxes is None else boxes.to(device, torch.float32), input_masks=None)
    return sparse, dense, sam.get_image_wide_positional_embeddings()


def robust_decode(sam: SamModel, additions: RobustDecoderAdditions, image_embedding: torch.Tensor,
                  early_features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, image_pe: torch.Tensor,
                  clear: bool = False) -> Dict[str, torch.Tensor]:
    """RobustSAM's decoder on one image and its P prompts.

    Args:
        sam: the `SamModel` (its `mask_decoder` parts are used).
        additions: the robust modules.
        image_embedding: [1, 256, h, w] SAM image embedding.
        early_features: [1, C_vit, h, w] output of the first global-attention ViT block (channels first).
        sparse, dense, image_pe: `prompt_embeddings` of the image's prompts.
        clear: the release's clear (teacher) path: SAM's own mask tokens and hypernetworks, no DNC/FGM.

    Returns:
        "masks" [P, 16, 4h, 4w] (robust path, the release's layout; [:, 0] is the single-mask output, [:, 1:4]
        the three multimask outputs) or [P, 4, 4h, 4w] (clear path: SAM's 4 masks), "iou" [P, 4] (SAM's IoU
        head), "robust_embeddings" [P, 32, 4h, 4w] (the fused mask features), "robust_tokens" [P, 4, 256] (the
        transformer's outputs of the 4 mask/robust tokens).
    """
    dec = sam.mask_decoder
    n_tok = additions.num_mask_tokens
    complementary = additions.fourier_first_layer_features(early_features.to(image_embedding.dtype), clear=clear)
    robust_features = complementary + additions.fourier_last_layer_features(image_embedding, clear=clear)
    mask_tokens = dec.mask_tokens.weight if clear else additions.custom_robust_token.weight
    n_prompts = sparse.shape[1]
    tokens = torch.cat([dec.iou_token.weight, mask_tokens], dim=0).expand(1, n_prompts, -1, -1)
    tokens = torch.cat([tokens, sparse.to(tokens.dtype)], dim=2)
    src = (image_embedding + dense).repeat_interleave(n_prompts, 0)
    pos = image_pe.repeat_interleave(n_prompts, 0)
    hs, src = dec.transformer(point_embeddings=tokens, image_embeddings=src, image_positional_embeddings=pos,
                              attention_similarity=None)[:2]
    iou_out, token_out = hs[0, :, 0], hs[0, :, 1:1 + n_tok]  # [P, 256], [P, 4, 256]
    c, h, w = image_embedding.shape[1:]
    src = src.transpose(2, 3).reshape(n_prompts, c, h, w)
    upscaled = dec.activation(dec.upscale_layer_norm(dec.upscale_conv1(src)))
    upscaled = dec.activation(dec.upscale_conv2(upscaled))  # SAM's mask features [P, 32, 4h, 4w]
    fused = additions.fourier_mask_features(upscaled, clear=clear) + robust_features
    iou = dec.iou_prediction_head(iou_out)
    ch, hh, ww = upscaled.shape[1:]
    if clear:
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](token_out[:, i]) for i in range(n_tok)], dim=1)
        masks = (hyper @ upscaled.reshape(n_prompts, ch, hh * ww)).reshape(n_prompts, n_tok, hh, ww)
    else:
        hyper = additions.robust_mlp(additions.custom_token_block(token_out))  # [P, token i, chunk j, 32]
        hyper = hyper.transpose(1, 2).reshape(n_prompts, -1, ch)  # row 4 j + i, the release's order
        masks = (hyper @ fused.reshape(n_prompts, ch, hh * ww)).reshape(n_prompts, -1, hh, ww)
    return {"masks": masks, "iou": iou, "robust_embeddings": fused, "robust_tokens": token_out}
