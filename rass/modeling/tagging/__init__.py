from .base import TAGGER_REGISTRY, FixedPromptTagger, Tagger, build_tagger
from .loading import LoadReport, load_dape_weights, load_ram_weights, read_tag_list, read_thresholds
from .lora import LoRALinear, MergedLoRALinear, is_lora_key, lora_state_dict
from .ram import RAM
from .tagger import DAPETagger, RAMTagger
from .tiny import write_tiny_tagger_files

__all__ = [
    "TAGGER_REGISTRY",
    "Tagger",
    "FixedPromptTagger",
    "build_tagger",
    "RAM",
    "RAMTagger",
    "DAPETagger",
    "LoRALinear",
    "MergedLoRALinear",
    "is_lora_key",
    "lora_state_dict",
    "LoadReport",
    "load_ram_weights",
    "load_dape_weights",
    "read_tag_list",
    "read_thresholds",
    "write_tiny_tagger_files",
]
