"""Meta-architectures and segmentation heads."""
from .mask_former import MaskFormer
from .mask_former_head import MaskFormerHead
from .promptable_sam import PromptableSAM
from .rass_model import RASSMaskFormer

__all__ = ["MaskFormer", "MaskFormerHead", "PromptableSAM", "RASSMaskFormer"]
