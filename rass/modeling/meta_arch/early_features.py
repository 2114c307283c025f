"""Prompting for SAM-family models whose mask decoder reads SAM's image embedding AND the output of the image
encoder's first global-attention block (HQ-SAM, RobustSAM): the (encode, decode) pair an interactive caller runs
(`rass.engine.promptable_predictor.prompt_codec`), and a `decode` that refuses the embedding alone."""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

__all__ = ["EarlyFeaturePrompting"]


class EarlyFeaturePrompting:
    """Mixin (before `PromptableSAM` in the bases) for a model that defines `encode_early(images) -> (z, early,
    valid)` and `decode_early(inp, z, early, valid_hw, return_intermediates) -> output dict`; `method_label` names
    the method in messages."""

    method_label = "this model"

    def prompt_features(self, images: List[torch.Tensor]) -> Tuple[Tuple[torch.Tensor, torch.Tensor],
                                                                   List[Tuple[int, int]]]:
        """What decoding a prompt needs of each image, for an interactive caller that keeps them per image:
        ((embeddings, early features) of `encode_early`, each image's resized size).

        Args:
            images: 3 x h x w tensors (any sizes).
        """
        z, early, valid = self.encode_early(images)
        return (z, early), valid

    def decode_features(self, inp: Dict, features: Tuple[torch.Tensor, torch.Tensor], valid_hw: Tuple[int, int],
                        return_intermediates: bool = False) -> Dict:
        """`decode_early` of one image's `prompt_features` (1 x ... each).

        Args:
            inp: one input dict of `forward`.
            features: (embedding, early features) of that image.
            valid_hw: the image's resized size in SAM's frame.
            return_intermediates: see `decode_early`.
        """
        embedding, early = features
        return self.decode_early(inp, embedding, early, valid_hw, return_intermediates=return_intermediates)

    def decode(self, inp: Dict, embedding: torch.Tensor, valid_hw: Tuple[int, int],
               return_intermediates: bool = False) -> Dict:
        raise NotImplementedError(f"{self.method_label} decodes from the image embedding AND the first global "
                                  "block's output: use prompt_features + decode_features")
