from .boundary import boundary_counts, boundary_width, label_boundary_band, mask_boundary_band
from .promptable import PromptableMaskEvaluator, format_promptable_table, mask_metrics
from .sod import SODEvaluator, format_sod_table, sod_image_metrics
from .sem_seg import CheckedSemSegEvaluator, argmax_labels, format_class_table, format_results_table, write_eval_results
from .visualize import write_overlays

__all__ = [
    "CheckedSemSegEvaluator",
    "PromptableMaskEvaluator",
    "SODEvaluator",
    "argmax_labels",
    "boundary_counts",
    "boundary_width",
    "format_class_table",
    "format_promptable_table",
    "format_results_table",
    "format_sod_table",
    "label_boundary_band",
    "mask_boundary_band",
    "mask_metrics",
    "sod_image_metrics",
    "write_eval_results",
    "write_overlays",
]
