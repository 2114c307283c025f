"""The Recognize Anything Model (RAM) network, optionally with DAPE's LoRA adapters.

`RAM.state_dict()` has exactly the names and shapes of the official checkpoint
`ram_swin_large_14m.pth` (1042 entries at full size) and, with `lora_rank > 0`, those of the
LoRA variant of SeeSR / RASS (1290 entries: the 1042 plus 248 loralib adapters):

    label_embed                       [num_classes, embed_dim]   frozen tag (CLIP text) embeddings
    visual_encoder.*                  Swin-L image encoder
    tag_encoder.*                     12-layer BERT with cross-attention (unused for tagging)
    text_decoder.{bert,cls}.*         12-layer BERT decoder (unused for tagging)
    tagging_head.encoder.layer.{0,1}  label queries -> image tokens cross-attention + FFN
    wordvec_proj, fc, image_proj      linear maps

Weight tying, as in RAM: `tag_encoder.encoder.layer.{0,1}` share their cross-attention and
feed-forward tensors with `tagging_head.encoder.layer.{0,1}`; the text decoder's output weight and
bias are its word embeddings and `cls.predictions.bias`. With LoRA, the adapters stay separate
and, as loralib does in eval mode, each shared weight receives every sharer's update.

Tagging: logits = fc(head(relu(wordvec_proj(label_embed)), image_proj(swin(x)))).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from transformers import BertConfig

from .bert import RAMBertLMHeadModel, RAMBertModel, ram_head_bert_config, ram_text_bert_config
from .lora import is_lora_key, tie_lora_sharers
from .swin import SwinTransformer

__all__ = ["RAM", "SWIN_L_384", "tied_weight_groups"]

# RAM's Swin-L at 384 input (config_swinL_384): embed 192, depths 2-2-18-2, window 12.
SWIN_L_384: Dict[str, object] = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)


def _copy_config(config: BertConfig, **changes: object) -> BertConfig:
    values = config.to_dict()
    values.update(changes)
    return BertConfig(**values)


def tied_weight_groups(module: nn.Module) -> List[List[str]]:
    """Groups (size > 1) of state-dict parameter names that are one tensor, in name order."""
    groups: Dict[int, List[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


class RAM(nn.Module):
    """RAM (`ram_swin_large_14m` architecture) producing per-tag logits.

    Args:
        num_classes: number of tags (RAM: 4585).
        image_size: input side of the Swin encoder (RAM: 384).
        swin: Swin hyper-parameters (`embed_dim`, `depths`, `num_heads`, `window_size`);
            default Swin-L at 384.
        text_config: BERT config of tag encoder / text decoder; default RAM's.
        head_config: BERT config of the tagging head; default RAM's (2 layers, 4 heads).
        embed_dim: width of label embeddings and projected image tokens (RAM: 512).
        lora_rank: >0 builds the LoRA variant (DAPE): Swin qkv (q, v) and BERT query/key.
        lora_alpha: loralib alpha (update scale alpha / rank; SeeSR uses loralib's default 1).
        text_modules: build `tag_encoder` and `text_decoder` (not used for tagging, but part of the
            checkpoint; False saves ~265M parameters and drops their names).
    """

    def __init__(
        self,
        num_classes: int = 4585,
        image_size: int = 384,
        swin: Optional[Dict[str, object]] = None,
        text_config: Optional[BertConfig] = None,
        head_config: Optional[BertConfig] = None,
        embed_dim: int = 512,
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        text_modules: bool = True,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"RAM: num_classes must be positive, got {num_classes}")
        swin = dict(SWIN_L_384 if swin is None else swin)
        text_config = text_config if text_config is not None else ram_text_bert_config()
        head_config = head_config if head_config is not None else ram_head_bert_config()
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.lora_rank = int(lora_rank)

        # Registration order = state-dict order = load order (the tagging head's copy of a tied
        # tensor is loaded last, as with the official model).
        self.label_embed = nn.Parameter(torch.empty(self.num_classes, embed_dim))
        nn.init.normal_(self.label_embed, std=0.02)  # RAM loads it (frozen tag embeddings); random for tiny builds
        self.visual_encoder = SwinTransformer(image_size=self.image_size, lora_rank=lora_rank, lora_alpha=lora_alpha,
                                              **swin)  # type: ignore[arg-type]
        if text_modules:
            self.tag_encoder = RAMBertModel(_copy_config(text_config, encoder_width=embed_dim),
                                            lora_rank=lora_rank, lora_alpha=lora_alpha)
            self.text_decoder = RAMBertLMHeadModel(text_config, lora_rank=lora_rank, lora_alpha=lora_alpha)
        head_config = _copy_config(head_config, encoder_width=embed_dim, add_cross_attention=True)
        self.tagging_head = RAMBertModel(head_config, embeddings=False, self_attention=False,
                                         lora_rank=lora_rank, lora_alpha=lora_alpha)
        hidden = head_config.hidden_size
        self.wordvec_proj = nn.Linear(embed_dim, hidden) if hidden != embed_dim else nn.Identity()
        self.fc = nn.Linear(hidden, 1)
        self.image_proj = nn.Linear(self.visual_encoder.num_features, embed_dim)
        if text_modules:
            self._tie_head_to_tag_encoder()

    def _tie_head_to_tag_encoder(self) -> None:
        """Make the tag encoder's lowest layers use the tagging head's tensors (RAM's tie)."""
        head_layers = self.tagging_head.encoder.layer
        enc_layers = self.tag_encoder.encoder.layer
        if len(head_layers) > len(enc_layers):
            raise ValueError(f"RAM: tagging head has {len(head_layers)} layers, tag encoder only {len(enc_layers)}")
        for head_layer, enc_layer in zip(head_layers, enc_layers):
            for part in ("crossattention", "intermediate", "output"):
                for name, src in getattr(head_layer, part).named_modules():
                    if not isinstance(src, (nn.Linear, nn.LayerNorm)):
                        continue
                    dst = getattr(enc_layer, part).get_submodule(name)
                    if dst.weight.shape != src.weight.shape:
                        raise ValueError(
                            f"RAM: cannot tie tag_encoder {part}.{name} {tuple(dst.weight.shape)} to tagging_head "
                            f"{tuple(src.weight.shape)}: the two BERT configs must agree in widths"
                        )
                    dst.weight = src.weight
                    dst.bias = src.bias
        tie_lora_sharers(self.modules())

    @property
    def has_text_modules(self) -> bool:
        return hasattr(self, "tag_encoder")

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] -> projected image tokens [B, 1 + L, embed_dim]."""
        return self.image_proj(self.visual_encoder(images))

    def tag_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, 3, S, S] (ImageNet statistics, S = image_size) -> logits [B, num_classes]."""
        tokens = self.image_embeds(images)
        queries = torch.relu(self.wordvec_proj(self.label_embed)).to(tokens.dtype)
        queries = queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        hidden = self.tagging_head(inputs_embeds=queries, encoder_hidden_states=tokens)
        return self.fc(hidden).squeeze(-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Same as `tag_logits`."""
        return self.tag_logits(images)

    def lora_parameter_names(self) -> List[str]:
        """State-dict names of the LoRA adapters (empty without LoRA)."""
        return [k for k in self.state_dict().keys() if is_lora_key(k)]

    def derived_buffer_names(self) -> Tuple[str, ...]:
        """Persistent buffers computed from the architecture (relative-position indices, shift
        masks, BERT position ids): the official loader recomputes rather than loads them."""
        suffixes = ("relative_position_index", "attn_mask", "position_ids")
        return tuple(k for k, _ in self.named_buffers() if k.rsplit(".", 1)[-1] in suffixes)

