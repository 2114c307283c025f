from .sem_seg import CheckedSemSegEvaluator, format_results_table, write_eval_results
from .visualize import write_overlays

__all__ = ["CheckedSemSegEvaluator", "format_results_table", "write_eval_results", "write_overlays"]
