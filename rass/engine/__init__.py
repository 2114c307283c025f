from .predictor import SemanticPredictor
from .trainer import Trainer

__all__ = ["Trainer", "SemanticPredictor"]
