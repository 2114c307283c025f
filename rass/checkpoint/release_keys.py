"""Names of the released RASS model (`rass.pth`) -> names of this project's model.

The release nests everything under `backbone.feature_extractor` and splits the UNet LoRA into three
peft adapters; the project keeps a flat backbone and one adapter:

| release | project |
|---|---|
| `backbone.feature_extractor.feature_projections.<i>.<j>.*` | `backbone.projection.blocks.<i>.<j>.*` |
| `backbone.feature_extractor.sd.vae.*` | `backbone.vae.*` |
| `backbone.feature_extractor.sd.unet.*` (`lora_{A,B}.default_{encoder,decoder,others}_s2`) | `backbone.unet.*` (`lora_{A,B}.rass`) |
| `backbone.feature_extractor.sd.text_encoder[.text_model].*` (transformers 4 / 5) | `backbone.text_encoder.*` |
| `backbone.feature_extractor.ram.*` (produces the prompts) | `backbone.tagger.*` with the `ram` tagger, else dropped |
| `backbone.feature_extractor.ram.*.lora_{A,B}` (248 loralib adapters, never trained: B = 0) | dropped (`ram` has no LoRA) |
| `backbone.feature_extractor.dape.*` (stored, never used) | `backbone.tagger.*` with the `dape` tagger, else dropped |
| `backbone.jpeger.*` (JPEG quantisation tables of the release's degradation) | dropped |
| `...text_model.embeddings.position_ids` (a constant buffer) | dropped |
| `sem_seg_head.*`, `criterion.*` | unchanged (Mask2Former names) |

Names outside these groups are returned unchanged, so a loader reports them as unexpected.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Optional

__all__ = ["release_to_project_keys", "is_release_format", "RELEASE_PREFIX", "PROJECT_TAGGER_PREFIX"]

RELEASE_PREFIX = "backbone.feature_extractor."
PROJECT_TAGGER_PREFIX = "backbone.tagger."
_ADAPTER = re.compile(r"\.(lora_[AB])\.default_(?:encoder|decoder|others)_s2\.")
_TRAINABLE_ADAPTER = "rass"  # rass.modeling.diffusion.lora.TRAINABLE_ADAPTER (kept import-free)


def is_release_format(names: Iterable[str]) -> bool:
    """True if any name uses the release's backbone layout."""
    return any(n.startswith(RELEASE_PREFIX) or n.startswith("backbone.jpeger.") for n in names)


def _one(name: str, tagger: str) -> Optional[str]:
    fe = RELEASE_PREFIX
    if name.startswith("backbone.jpeger."):
        return None
    if name.startswith(fe + "feature_projections."):
        return "backbone.projection.blocks." + name[len(fe + "feature_projections."):]
    if name.startswith(fe + "sd.vae."):
        return "backbone.vae." + name[len(fe + "sd.vae."):]
    if name.startswith(fe + "sd.unet."):
        rest = _ADAPTER.sub(rf".\1.{_TRAINABLE_ADAPTER}.", name[len(fe + "sd.unet."):])
        return "backbone.unet." + rest
    if name.startswith(fe + "sd.text_encoder."):
        rest = name[len(fe + "sd.text_encoder."):]
        rest = rest[len("text_model."):] if rest.startswith("text_model.") else rest
        return None if rest == "embeddings.position_ids" else "backbone.text_encoder." + rest
    for which in ("ram", "dape"):
        if name.startswith(fe + which + "."):
            rest = name[len(fe + which + "."):]
            if tagger != which or (which == "ram" and ".lora_" in "." + rest):
                return None
            return PROJECT_TAGGER_PREFIX + rest
    return name


def release_to_project_keys(names: Iterable[str], tagger: str = "ram") -> Dict[str, Optional[str]]:
    """Map released RASS state-dict names (either library era) to this project's names.

    Args:
        names: names from the release (`rass.pth`, or its manifests).
        tagger: the project's tagger ("ram", "dape" or another); selects which of the release's
            two tagger copies becomes `backbone.tagger` (the other one is dropped).

    Returns:
        name -> project name, or None for entries the project does not keep.
    """
    return {n: _one(n, tagger) for n in names}
