from .predictor import SemanticPredictor
from .promptable_predictor import PromptablePredictor
from .trainer import Trainer

__all__ = ["Trainer", "SemanticPredictor", "PromptablePredictor"]
