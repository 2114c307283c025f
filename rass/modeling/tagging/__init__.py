from .base import TAGGER_REGISTRY, FixedPromptTagger, Tagger, build_tagger

__all__ = ["TAGGER_REGISTRY", "Tagger", "FixedPromptTagger", "build_tagger"]
