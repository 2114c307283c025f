"""Mask2Former's multi-scale masked-attention transformer decoder ("predictor").

Learnable queries attend, layer after layer, to one of three feature scales in round-robin
(lowest resolution first), with cross-attention restricted to the foreground of the mask that
the previous layer predicted. Every layer (and the initial queries) yields class logits and mask
logits; all but the last are returned as `aux_outputs` for deep supervision.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from torch import nn

from rass.utils.errors import UserValueError

from .build import TRANSFORMER_DECODER_REGISTRY
from .layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from .position_encoding import PositionEmbeddingSine

__all__ = ["MultiScaleMaskedTransformerDecoder"]


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder over 3 feature scales.

    Args:
        in_channels: channels of the multi-scale input features.
        mask_classification: must be True (class logits per query).
        num_classes: number of classes (the class head has `num_classes + 1` outputs, the last
            being "no object").
        hidden_dim: query / attention width.
        num_queries: number of queries.
        nheads: attention heads.
        dim_feedforward: hidden width of the FFN blocks.
        dec_layers: number of decoder layers (config DEC_LAYERS - 1: the initial queries also
            get a prediction and a loss).
        pre_norm: pre-LayerNorm blocks.
        mask_dim: channels of the per-pixel mask features.
        enforce_input_project: a 1x1 conv on the inputs even when in_channels == hidden_dim.
        num_feature_levels: number of scales attended to in round-robin (3 in Mask2Former).
    """

    @configurable
    def __init__(
        self,
        in_channels: int,
        mask_classification: bool = True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        # Learnable query features and query positional embeddings.
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, mask_classification: bool) -> Dict:
        if cfg.MODEL.MASK_FORMER.DEC_LAYERS < 1:
            raise UserValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {cfg.MODEL.MASK_FORMER.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": cfg.MODEL.MASK_FORMER.HIDDEN_DIM,
            "num_queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
            "nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            "dim_feedforward": cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD,
            # The learnable queries get their own prediction/loss, counted in DEC_LAYERS.
            "dec_layers": cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1,
            "pre_norm": cfg.MODEL.MASK_FORMER.PRE_NORM,
            "enforce_input_project": cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def forward(
        self, x: Sequence[torch.Tensor], mask_features: torch.Tensor, mask: Optional[torch.Tensor] = None
    ) -> Dict:
        """Run the decoder.

        Args:
            x: `num_feature_levels` feature maps N x C x H_i x W_i, lowest resolution first.
            mask_features: N x mask_dim x H x W per-pixel embeddings (stride 4).
            mask: unused (padding masks are not applied, as in Mask2Former).

        Returns:
            dict with "pred_logits" N x Q x (K+1), "pred_masks" N x Q x H x W (logits) and
            "aux_outputs": a list of such dicts for the initial queries and every layer but the last.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        srcs, poss, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(feat.shape[-2:])
            poss.append(self.pe_layer(feat).flatten(2).transpose(1, 2).to(feat.dtype))
            src = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.transpose(1, 2))  # N x HW x C
        n = srcs[0].shape[0]
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).repeat(n, 1, 1)

        classes: List[torch.Tensor] = []
        masks: List[torch.Tensor] = []
        cls_logits, mask_logits, attn_mask = self.forward_prediction_heads(output, mask_features, sizes[0])
        classes.append(cls_logits)
        masks.append(mask_logits)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # A query whose mask covers no position may attend everywhere.
            attn_mask[attn_mask.all(dim=-1)] = False
            output = self.transformer_cross_attention_layers[i](
                output, srcs[level], memory_mask=attn_mask, pos=poss[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            cls_logits, mask_logits, attn_mask = self.forward_prediction_heads(output, mask_features, next_size)
            classes.append(cls_logits)
            masks.append(mask_logits)
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])],
        }

    def forward_prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor, attn_mask_size):
        """Class logits, mask logits and the next layer's attention mask from the queries.

        Args:
            output: N x Q x C queries.
            mask_features: N x D x H x W.
            attn_mask_size: (h, w) of the feature map attended to next.

        Returns:
            (N x Q x (K+1), N x Q x H x W, (N*heads) x Q x (h*w) bool: True = not attended).
        """
        decoded = self.decoder_norm(output)
        cls_logits = self.class_embed(decoded)
        mask_logits = torch.einsum("nqc,nchw->nqhw", self.mask_embed(decoded), mask_features)
        small = F.interpolate(mask_logits, size=attn_mask_size, mode="bilinear", align_corners=False)
        # Attend only where the predicted mask probability is >= 0.5 (logit >= 0).
        attn_mask = (small.flatten(2) < 0).detach()
        attn_mask = attn_mask.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return cls_logits, mask_logits, attn_mask
