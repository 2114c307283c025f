"""Text conditioning: tagger prompts -> CLIP text embeddings, cached per distinct prompt.

As released, a tagger prompt such as "sky, tree, building" gets ", <suffix>" appended and is then
cleaned before tokenising: surrounding brackets/spaces/commas stripped, quotes removed, commas
turned into spaces. The text encoder's last hidden state (77 tokens) conditions the UNet.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn

__all__ = ["clean_prompt", "PromptEmbeddingCache"]


def clean_prompt(prompt: str, suffix: str = "") -> str:
    """The text the tokenizer sees for a tagger prompt (the release's prompt clean-up).

    Args:
        prompt: tagger output, tags joined with ", ".
        suffix: appended after ", " (MODEL.RASS.PROMPT_SUFFIX).
    """
    text = f"{prompt}, {suffix}".strip("[] ,").replace("'", "")
    return " ".join(text.split(","))


class PromptEmbeddingCache:
    """Encodes prompts with a (frozen) text encoder and keeps an LRU cache of the embeddings.

    The cache is keyed by the cleaned text and is emptied whenever the text encoder's device or
    dtype changes or `clear()` is called (the backbone clears it when weights are loaded).

    Args:
        max_size: number of cached prompts (0 disables caching).
        suffix: prompt suffix (see `clean_prompt`).
    """

    def __init__(self, max_size: int = 512, suffix: str = "") -> None:
        self.max_size = int(max_size)
        self.suffix = suffix
        self._cache: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self._where = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        """Drop every cached embedding."""
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], tokenizer, text_encoder: nn.Module) -> torch.Tensor:
        """Embeddings of a batch of prompts.

        Args:
            prompts: one prompt per image.
            tokenizer: a CLIP tokenizer (padding/truncation to its model_max_length).
            text_encoder: a `CLIPTextModel`.

        Returns:
            B x L x D text embeddings (the text encoder's dtype and device).
        """
        ref = next(text_encoder.parameters())
        where = (ref.device, ref.dtype)
        if where != self._where:
            self._cache.clear()
            self._where = where
        texts = [clean_prompt(p, self.suffix) for p in prompts]
        todo: List[str] = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        fresh = {}
        if todo:
            ids = tokenizer(todo, max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                            return_tensors="pt").input_ids.to(ref.device)
            hidden = text_encoder(ids)[0]
            fresh = {t: h.clone() for t, h in zip(todo, hidden)}
        out = torch.stack([fresh[t] if t in fresh else self._cache[t] for t in texts])
        if self.max_size > 0:
            for t in texts:
                if t in fresh:
                    self._cache[t] = fresh[t]
                self._cache.move_to_end(t)
            while len(self._cache) > self.max_size:
                self._cache.popitem(last=False)
        return out
