from .color_aug import ColorAugSSDTransform
from .promptable import PromptableDatasetMapper
from .semantic import SemanticDatasetMapper

# DATASET_MAPPER_NAME -> mapper class
MAPPERS = {"rass_semantic": SemanticDatasetMapper, "promptable": PromptableDatasetMapper}

__all__ = ["SemanticDatasetMapper", "ColorAugSSDTransform", "MAPPERS"]
