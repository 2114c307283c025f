"""HQ-SAM's mask decoder with the release's data flow, on transformers' `SamHQMaskDecoder` (same modules and
parameter names; only `forward` is replaced).

Why: transformers 5.23's `SamHQMaskDecoder.forward` upscales the decoder's *input* image embeddings (dense prompt
added, before the two-way transformer, and with height and width swapped by its reshape) instead of the
transformer's output keys, which the release (`MaskDecoderHQ.predict_masks`, `src` after `self.transformer`)
and transformers' own `SamMaskDecoder` use. With the same weights its masks differ from the release by ~1 logit
(tiny model) while the IoU scores agree (checked here against SysCV/sam-hq's modules; the fixed forward agrees to
float precision). Everything else follows the release:
  HQ features  = encoder_conv2(GELU(encoder_norm(encoder_conv1(emb)))) + compress_vit_conv2(GELU(compress_vit_norm(
                 compress_vit_conv1(early))))                                     (both B x 32 x 4h x 4w)
  tokens       = [iou, 4 mask tokens, HQ token, prompt tokens] through the two-way transformer
  SAM masks    = hypernetwork MLP_i(mask token i) . upscaled(keys)                (i = 0..3)
  HQ mask      = hq_mask_mlp(HQ token) . (mask_conv2(GELU(mask_norm(mask_conv1(upscaled)))) + HQ features)
  output       = HQ mask if hq_token_only else SAM mask + HQ mask; SAM mask = token 0, or with multimask_output
                 the one of highest predicted IoU among tokens 1-3 (one mask, with its IoU, as released).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from transformers.models.sam_hq.modeling_sam_hq import SamHQMaskDecoder

__all__ = ["ReleasedSamHQMaskDecoder"]


class ReleasedSamHQMaskDecoder(SamHQMaskDecoder):
    """`SamHQMaskDecoder` computing the release's masks (see the module doc); same constructor and names."""

    def _hq_features(self, embeddings: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
        """B x 32 x 4h x 4w: the image embedding's and the early ViT features' upsampled sum."""
        enc = self.encoder_conv2(self.activation(self.encoder_norm(self.encoder_conv1(embeddings))))
        vit = early.permute(0, 3, 1, 2)
        vit = self.compress_vit_conv2(self.activation(self.compress_vit_norm(self.compress_vit_conv1(vit))))
        return enc + vit

    def forward(self, image_embeddings: torch.Tensor, image_positional_embeddings: torch.Tensor,
                sparse_prompt_embeddings: Optional[torch.Tensor], dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool, hq_token_only: bool,
                intermediate_embeddings: Optional[List[torch.Tensor]] = None,
                attention_similarity: Optional[torch.Tensor] = None,
                target_embedding: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Masks [B, P, 1, 4h, 4w] and SAM's IoU prediction [B, P, 1] (arguments as `SamHQMaskDecoder.forward`;
        `intermediate_embeddings[0]` = the first global block's output [B, h, w, C_vit] is required)."""
        if not intermediate_embeddings:
            raise ValueError("HQ-SAM's decoder needs the first global-attention block's output "
                             "(intermediate_embeddings[0], [B, h, w, C_vit])")
        b, c, h, w = image_embeddings.shape
        p = sparse_prompt_embeddings.shape[1] if sparse_prompt_embeddings is not None else 1
        hq_features = self._hq_features(image_embeddings, intermediate_embeddings[0]).repeat_interleave(p, 0)
        tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hq_token.weight], dim=0)
        tokens = tokens.repeat(b, p, 1, 1)
        if sparse_prompt_embeddings is not None:
            tokens = torch.cat([tokens, sparse_prompt_embeddings.to(tokens.dtype)], dim=2)
        src = (image_embeddings + dense_prompt_embeddings).repeat_interleave(p, 0)
        pos = image_positional_embeddings.repeat_interleave(p, 0)
        queries, keys = self.transformer(point_embeddings=tokens, image_embeddings=src, image_positional_embeddings=pos,
                                         attention_similarity=attention_similarity, target_embedding=target_embedding)
        src = keys.transpose(2, 3).reshape(b * p, c, h, w)
        up = self.activation(self.upscale_conv2(self.activation(self.upscale_layer_norm(self.upscale_conv1(src)))))
        up_hq = self.mask_conv2(self.activation(self.mask_norm(self.mask_conv1(up)))) + hq_features
        n_sam = self.num_mask_tokens - 1  # SAM's 4 mask tokens (num_mask_tokens counts the HQ token)
        token_out = queries[:, :, 1:2 + n_sam]
        hyper = torch.stack([mlp(token_out[:, :, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=2)
        hyper_hq = self.hq_mask_mlp(token_out[:, :, n_sam])[:, :, None]
        size = up.shape[-2:]
        masks_sam = (hyper @ up.reshape(b, p, up.shape[1], -1)).reshape(b, p, n_sam, *size)
        masks_hq = (hyper_hq @ up_hq.reshape(b, p, up_hq.shape[1], -1)).reshape(b, p, 1, *size)
        iou = self.iou_prediction_head(queries[:, :, 0])
        if multimask_output:
            iou, best = iou[:, :, 1:n_sam].max(dim=2, keepdim=True)
            index = (best + 1)[..., None, None].expand(-1, -1, -1, *size)
            masks_sam = masks_sam.gather(2, index)
        else:
            iou, masks_sam = iou[:, :, :1], masks_sam[:, :, :1]
        return (masks_hq if hq_token_only else masks_sam + masks_hq), iou
