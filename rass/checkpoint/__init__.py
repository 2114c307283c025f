from .checkpointer import RASSCheckpointer
from .divergence import TrainingDivergedError
from .files import CheckpointFileError, read_checkpoint_file
from .fit import CheckpointMismatchError, LoadReport
from .release_keys import is_release_format, release_to_project_keys
from .release_loader import ReleaseFormatMixin, convert_release_state_dict, load_weights
from .safe_pickle import UnsafePickleError
from .sam_keys import hf_to_original_keys, original_to_hf_keys
from .sam_loader import SamLoadReport, load_sam_checkpoint, read_sam_state_dict, save_sam_original

__all__ = [
    "RASSCheckpointer", "release_to_project_keys", "is_release_format", "LoadReport", "ReleaseFormatMixin",
    "convert_release_state_dict", "load_weights", "CheckpointFileError", "CheckpointMismatchError",
    "read_checkpoint_file", "TrainingDivergedError", "UnsafePickleError",
    "original_to_hf_keys", "hf_to_original_keys", "SamLoadReport", "load_sam_checkpoint", "read_sam_state_dict",
    "save_sam_original",
]
