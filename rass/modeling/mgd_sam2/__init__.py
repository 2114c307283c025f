"""MGD-SAM2's own modules (arXiv 2503.23786; names as in `sevenshr/MGD-SAM2`): the 5-view split, the
trunk adapter (MPAdapter), the decoder's MCEM and HMIM, the detail refinement head (DRM) and the loss.
The SAM2.1 parts they plug into live in `rass.modeling.sam2`; `build_mgd_sam2` assembles the model (`model.py`),
`mgd_sam2_tta_logits` is the release's test-time augmentation (`tta.py`)."""
from .drm import ME, DetailRefinement
from .hmim import HMIM
from .loss import mgd_sam2_losses, soft_iou_loss
from .mcem import MCEM, CenteredSinePositionEmbedding, DownsampledAttention
from .model import build_mgd_sam2, build_mgd_sam2_parts, check_mgd_sam2_input_size
from .mpadapter import DWConv3DAdapter, MPAdapter
from .tta import mgd_sam2_tta_logits, tta_passes
from .views import from_quadrants, gt_views, image_to_views, quadrants, split_views, tiled_to_views, views_to_tiled

__all__ = [
    "ME", "DetailRefinement", "HMIM", "mgd_sam2_losses", "soft_iou_loss", "MCEM", "CenteredSinePositionEmbedding",
    "DownsampledAttention", "DWConv3DAdapter", "MPAdapter", "from_quadrants", "gt_views", "image_to_views",
    "quadrants", "split_views", "tiled_to_views", "views_to_tiled", "build_mgd_sam2", "build_mgd_sam2_parts",
    "check_mgd_sam2_input_size", "mgd_sam2_tta_logits", "tta_passes",
]
