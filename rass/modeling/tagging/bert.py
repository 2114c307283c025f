"""BERT-shaped modules of RAM: tag encoder, text decoder and the label-query tagging head.

RAM's BERT (from BLIP) differs from transformers' `BertModel` in names and shapes that a
checkpoint sees: no token-type embeddings, a persistent `position_ids` buffer, cross-attention
keys/values reading `encoder_width`-wide image tokens, and a tagging head whose layers have no
self-attention and no embeddings. The attention/embedding containers are therefore the project's
own; the feed-forward and output pieces (`BertSelfOutput`, `BertIntermediate`, `BertOutput`,
`BertOnlyMLMHead`) are transformers' own, whose parameter names match.

Configs are transformers `BertConfig`s with one extra field, `encoder_width` (width of the
tokens the cross-attention reads). Defaults for RAM are built in (`ram_text_bert_config`,
`ram_head_bert_config`); other configs are read from local JSON files (`load_bert_config`).
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertIntermediate, BertOnlyMLMHead, BertOutput, BertSelfOutput

from rass.utils.errors import UserFileNotFoundError, UserValueError

from .lora import LoRALinear

__all__ = [
    "RAMBertModel",
    "RAMBertLMHeadModel",
    "ram_text_bert_config",
    "ram_head_bert_config",
    "load_bert_config",
]

# bert-base-uncased with RAM's two added tokens ([DEC], [ENC]) and cross-attention (RAM's med_config).
_RAM_TEXT_BERT = dict(
    vocab_size=30524, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=2, initializer_range=0.02, layer_norm_eps=1e-12, pad_token_id=0,
    add_cross_attention=True, encoder_width=768,
)
# The Query2Label-style tagging head (RAM's q2l_config): 2 layers, 4 heads.
_RAM_HEAD_BERT = dict(_RAM_TEXT_BERT, vocab_size=30522, num_hidden_layers=2, num_attention_heads=4)


def ram_text_bert_config() -> BertConfig:
    """RAM's config of the tag encoder / text decoder (12-layer bert-base with cross-attention)."""
    return BertConfig(**_RAM_TEXT_BERT)


def ram_head_bert_config() -> BertConfig:
    """RAM's config of the tagging head (2 layers, 4 heads, hidden 768)."""
    return BertConfig(**_RAM_HEAD_BERT)


def load_bert_config(path: str, key: str = "BERT config") -> BertConfig:
    """Read a BERT config JSON (a file, or a folder holding `config.json`); nothing is downloaded.

    Args:
        path: local file or folder.
        key: what the path is (config key), for error messages.
    """
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UserFileNotFoundError(f"{key}: BERT config not found: {file!r} (a JSON file or a folder with "
                                    "config.json)")
    try:
        with open(file, "r", encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError) as e:
        raise UserValueError(f"{key}: cannot read BERT config {file!r}: {e}") from e
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in values]
    if missing:
        raise UserValueError(f"{key}: BERT config {file!r} lacks {missing}")
    return BertConfig(**values)


def _eps(config: BertConfig) -> float:
    return float(getattr(config, "layer_norm_eps", 1e-12))


class RAMBertEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (no token types); persistent `position_ids`."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=_eps(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : input_ids.shape[1]]
        return self.dropout(self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos)))


class RAMBertSelfAttention(nn.Module):
    """Multi-head (cross-)attention projections `query`, `key`, `value`.

    Args:
        config: BERT config.
        kv_width: width of the tokens keys/values read (hidden size, or `encoder_width`).
        lora_rank: >0 puts loralib-style LoRA on `query` and `key` (DAPE).
        lora_alpha: LoRA alpha.
    """

    def __init__(self, config: BertConfig, kv_width: int, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            raise UserValueError(f"BERT: hidden size {hidden} is not divisible by {heads} heads")
        self.num_heads = heads
        self.dropout_p = float(config.attention_probs_dropout_prob)

        def lin(width: int, lora: bool) -> nn.Linear:
            return LoRALinear(width, hidden, lora_rank, lora_alpha) if lora and lora_rank > 0 else nn.Linear(width, hidden)

        self.query = lin(hidden, True)
        self.key = lin(kv_width, True)
        self.value = lin(kv_width, False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """hidden: [B, Q, H]; context: [B, K, W] (None: self-attention); mask: additive, broadcastable
        to [B, heads, Q, K]."""
        kv = hidden if context is None else context
        q, k, v = self._heads(self.query(hidden)), self._heads(self.key(kv)), self._heads(self.value(kv))
        drop = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class RAMBertAttention(nn.Module):
    """`self` (projections + attention) followed by `output` (dense, dropout, residual LayerNorm)."""

    def __init__(self, config: BertConfig, kv_width: int, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        self.self = RAMBertSelfAttention(config, kv_width, lora_rank, lora_alpha)
        self.output = BertSelfOutput(config)

    def forward(self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.output(self.self(hidden, context, mask), hidden)


class RAMBertLayer(nn.Module):
    """A BERT layer: [self-attention], [cross-attention to image tokens], feed-forward.

    Args:
        config: BERT config (`add_cross_attention`, `encoder_width`).
        self_attention: build the self-attention (False for the tagging head, as in Query2Label).
        lora_rank: LoRA rank on query/key of every attention (0: none).
        lora_alpha: LoRA alpha.
    """

    def __init__(self, config: BertConfig, self_attention: bool = True, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        if self_attention:
            self.attention = RAMBertAttention(config, config.hidden_size, lora_rank, lora_alpha)
        if getattr(config, "add_cross_attention", False):
            width = int(getattr(config, "encoder_width", config.hidden_size))
            self.crossattention = RAMBertAttention(config, width, lora_rank, lora_alpha)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None, self_mask: Optional[torch.Tensor] = None,
        context_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if hasattr(self, "attention"):
            hidden = self.attention(hidden, None, self_mask)
        if context is not None:
            if not hasattr(self, "crossattention"):
                raise ValueError("BERT layer built without cross-attention was given image tokens")
            hidden = self.crossattention(hidden, context, context_mask)
        return self.output(self.intermediate(hidden), hidden)


class RAMBertEncoder(nn.Module):
    """`layer`: the stack of `RAMBertLayer`s."""

    def __init__(self, config: BertConfig, self_attention: bool = True, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            RAMBertLayer(config, self_attention, lora_rank, lora_alpha) for _ in range(config.num_hidden_layers)
        )

    def forward(self, hidden: torch.Tensor, context: Optional[torch.Tensor] = None, self_mask: Optional[torch.Tensor] = None,
                context_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, context, self_mask, context_mask)
        return hidden


def _additive_mask(
    attention_mask: Optional[torch.Tensor], like: torch.Tensor, causal_len: int = 0
) -> Optional[torch.Tensor]:
    """Keep-mask [B, K] of 1 (attend) / 0 (pad), optionally combined with a causal mask over
    `causal_len` positions -> additive mask (0 / BERT's -10000) broadcastable to [B, heads, Q, K]."""
    keep = None if attention_mask is None else attention_mask[:, None, None, :].to(like.device).float()
    if causal_len:
        pos = torch.arange(causal_len, device=like.device)
        causal = (pos[None, :] <= pos[:, None]).float()[None, None]
        keep = causal if keep is None else causal * keep
    return None if keep is None else ((1.0 - keep) * -10000.0).to(like.dtype)


class RAMBertModel(nn.Module):
    """RAM's BERT: `embeddings` (optional) + `encoder`.

    As the tag encoder: token ids, self- and cross-attention. As the tagging head
    (`embeddings=False, self_attention=False`): label queries attend to image tokens only.

    Args:
        config: BERT config.
        embeddings: build the token embeddings.
        self_attention: build the self-attention of every layer.
        lora_rank: LoRA rank on query/key (0: none).
        lora_alpha: LoRA alpha.
    """

    def __init__(self, config: BertConfig, embeddings: bool = True, self_attention: bool = True, lora_rank: int = 0,
                 lora_alpha: float = 1.0) -> None:
        super().__init__()
        self.config = config
        if embeddings:
            self.embeddings = RAMBertEmbeddings(config)
        self.encoder = RAMBertEncoder(config, self_attention, lora_rank, lora_alpha)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        std = float(getattr(self.config, "initializer_range", 0.02))
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(
        self,
        input_ids: Optional[torch.Tensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Token ids (through the embeddings) or ready embeddings (e.g. label queries) ->
        last hidden states [B, Q, H]."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("RAMBertModel: give exactly one of input_ids / inputs_embeds")
        if input_ids is not None:
            if not hasattr(self, "embeddings"):
                raise ValueError("RAMBertModel built without embeddings was given token ids")
            hidden = self.embeddings(input_ids)
        else:
            hidden = inputs_embeds
        self_mask = _additive_mask(attention_mask, hidden, hidden.shape[1] if causal else 0)
        return self.encoder(hidden, encoder_hidden_states, self_mask, _additive_mask(encoder_attention_mask, hidden))


class RAMBertLMHeadModel(nn.Module):
    """RAM's text decoder: `bert` + `cls` (transformers' MLM head), output weights tied to the
    word embeddings and `cls.predictions.decoder.bias` tied to `cls.predictions.bias`.

    Args:
        config: BERT config.
        lora_rank: LoRA rank on query/key (0: none).
        lora_alpha: LoRA alpha.
    """

    def __init__(self, config: BertConfig, lora_rank: int = 0, lora_alpha: float = 1.0) -> None:
        super().__init__()
        self.bert = RAMBertModel(config, lora_rank=lora_rank, lora_alpha=lora_alpha)
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                encoder_hidden_states: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Causal language-model logits [B, T, vocab]."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           encoder_hidden_states=encoder_hidden_states, causal=True)
        return self.cls(hidden)
