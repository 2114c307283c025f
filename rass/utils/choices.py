"""The fixed name lists the command-line parsers offer (``choices=``) and their defaults.

Light on purpose (standard library only): a parser that takes its choices from here imports no torch,
detectron2 or transformers, so ``--help`` and argument errors return at once. The modules that
implement these names import the lists from here (`rass.utils.image_io`, `rass.data.degradation.offline`,
`rass.app.inputs`); `DEGRADATION_PRESETS` names the keys of `rass.data.degradation.presets.PRESETS`
(a test keeps the two equal).
"""
from __future__ import annotations

__all__ = ["EXIF_POLICIES", "DEGRADATION_PRESETS", "DEGRADE_LAYOUTS", "APP_DEGRADATIONS", "DEFAULT_MAX_PIXELS"]

# INPUT.LABELLED_EXIF values: turn labelled images upright ("apply") or keep their stored pixels ("ignore").
EXIF_POLICIES = ("apply", "ignore")
# Names of the degradation presets (`rass.data.degradation.presets.PRESETS`); lqseg_1 equals rass.
DEGRADATION_PRESETS = ("rass", "realesrgan_x4", "realesrgan_x2", "lqseg_1", "lqseg_2", "lqseg_3", "lqseg_train")
# Folder layouts of the offline degradation tool: ADE20K's images/ + annotations, or images/ + masks/.
DEGRADE_LAYOUTS = ("ade20k", "image_mask")
# The degradations offered by the demo page: none, the three LQSeg levels and RASS's training preset.
APP_DEGRADATIONS = ("none", "lqseg_1", "lqseg_2", "lqseg_3", "rass")
# Largest upload the demo page accepts, width x height.
DEFAULT_MAX_PIXELS = 4096 * 4096
