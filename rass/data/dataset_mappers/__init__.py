from .color_aug import ColorAugSSDTransform
from .semantic import SemanticDatasetMapper

# DATASET_MAPPER_NAME -> mapper class
MAPPERS = {"rass_semantic": SemanticDatasetMapper}

__all__ = ["SemanticDatasetMapper", "ColorAugSSDTransform", "MAPPERS"]
