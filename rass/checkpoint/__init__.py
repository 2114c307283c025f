from .checkpointer import RASSCheckpointer
from .release_keys import is_release_format, release_to_project_keys
from .release_loader import LoadReport, ReleaseFormatMixin, convert_release_state_dict, load_weights

__all__ = [
    "RASSCheckpointer", "release_to_project_keys", "is_release_format", "LoadReport", "ReleaseFormatMixin",
    "convert_release_state_dict", "load_weights",
]
