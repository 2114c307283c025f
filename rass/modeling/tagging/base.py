"""Tagger interface: images -> one prompt string per image, plus the `none` tagger.

A tagger is an `nn.Module` whose forward takes a float batch B x 3 x H x W in [0, 1] (RGB, any
size, any device) and returns B prompt strings. Taggers are frozen feature providers; they are
built by name from `TAGGER_REGISTRY` (`none`, and `ram` / `dape` from the tagging package).
"""
from __future__ import annotations

from typing import List

import torch
from detectron2.config import configurable
from torch import nn

from rass.utils.registry import NamedRegistry, registered

TAGGER_REGISTRY = NamedRegistry("TAGGER")
TAGGER_REGISTRY.__doc__ = "Image taggers producing text prompts: images -> list of strings."


class Tagger(nn.Module):
    """Base class of taggers. Subclasses implement `forward(images) -> List[str]`."""

    def forward(self, images: torch.Tensor) -> List[str]:  # pragma: no cover - interface
        raise NotImplementedError


@TAGGER_REGISTRY.register_as("none")
class FixedPromptTagger(Tagger):
    """Returns the same prompt for every image (default: the empty prompt).

    Args:
        prompt: the prompt string given to every image.
    """

    @configurable
    def __init__(self, *, prompt: str = "") -> None:
        super().__init__()
        self.prompt = prompt

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"prompt": cfg.MODEL.TAGGER.PROMPT}

    def forward(self, images: torch.Tensor) -> List[str]:
        return [self.prompt] * int(images.shape[0])


def build_tagger(cfg, name: str | None = None) -> Tagger:
    """Build a tagger by registered name.

    Args:
        cfg: the project config.
        name: registry name; default `cfg.MODEL.TAGGER.NAME`.
    """
    name = name if name is not None else cfg.MODEL.TAGGER.NAME
    return registered(TAGGER_REGISTRY, "MODEL.TAGGER.NAME", name)(cfg)
