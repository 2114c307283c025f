from .color_aug import ColorAugSSDTransform
from .promptable import PromptableDatasetMapper
from .semantic import SemanticDatasetMapper
from .sod import MGDSODDatasetMapper

# DATASET_MAPPER_NAME -> mapper class
MAPPERS = {"rass_semantic": SemanticDatasetMapper, "promptable": PromptableDatasetMapper, "mgd_sod": MGDSODDatasetMapper}

__all__ = ["SemanticDatasetMapper", "MGDSODDatasetMapper", "ColorAugSSDTransform", "MAPPERS"]
