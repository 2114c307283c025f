"""Meta-architectures and segmentation heads."""
from .mask_former import MaskFormer
from .mask_former_head import MaskFormerHead
from .promptable_sam import PromptableSAM
from .promptable_sam2 import PromptableSAM2
from .mgd_sam2 import MGDSAM2
from .rass_model import RASSMaskFormer
from .robustsam import RobustSAM
from .sam_hq import PromptableSAMHQ
from .stable_sam import StableSAM

__all__ = ["MGDSAM2", "MaskFormer", "MaskFormerHead", "PromptableSAM", "PromptableSAM2", "PromptableSAMHQ", "RASSMaskFormer",
           "RobustSAM", "StableSAM"]
