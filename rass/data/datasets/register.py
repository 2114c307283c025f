"""Registration of every dataset the project knows (done on `import rass`).

| name | root | split |
|---|---|---|
| ade20k_sem_seg_train / _val | $DETECTRON2_DATASETS/ADEChallengeData2016 | training / validation |
| ade20k_sem_seg_val_degraded | $RASS_ADE20K_DEGRADED_ROOT or $DETECTRON2_DATASETS/ADEChallengeData2016_degraded | validation |
| ade20k_sem_seg_val_lqseg_{1,2,3} | $RASS_LQSEG_ROOT/lqseg_{k} or $DETECTRON2_DATASETS/ADEChallengeData2016_lqseg_{k} | validation |
| reallq_sem_seg_val | $RASS_REALLQ_ROOT or $DETECTRON2_DATASETS/RealLQ | validation |
| synthetic_sem_seg_train / _val | $RASS_SYNTHETIC_ROOT or $DETECTRON2_DATASETS/synthetic_ade20k | training / validation |
| synthetic_sem_seg_val_degraded | $RASS_SYNTHETIC_DEGRADED_ROOT or $DETECTRON2_DATASETS/synthetic_ade20k_degraded | validation |
| dis5k_*, hrsod_*, davis_s_test, uhrsd_*, duts_*, hkuis_test, sod_synthetic_* | see rass.data.datasets.sod | |
| hqseg_* (HQSeg-44K, HQ-SAM's DIS-VD / ThinObject-5K-TE / COIFT / HRSOD) | see rass.data.datasets.hqseg | |
"""
from __future__ import annotations

from .sem_seg import DatasetRoot, register_sem_seg_split
from .hqseg import register_all_hqseg
from .sod import register_all_sod


ADE20K_ROOT = DatasetRoot("DETECTRON2_DATASETS", "ADEChallengeData2016", "ADEChallengeData2016")
ADE20K_DEGRADED_ROOT = DatasetRoot("RASS_ADE20K_DEGRADED_ROOT", "ADEChallengeData2016_degraded")
REALLQ_ROOT = DatasetRoot("RASS_REALLQ_ROOT", "RealLQ")
SYNTHETIC_ROOT = DatasetRoot("RASS_SYNTHETIC_ROOT", "synthetic_ade20k")
SYNTHETIC_DEGRADED_ROOT = DatasetRoot("RASS_SYNTHETIC_DEGRADED_ROOT", "synthetic_ade20k_degraded")


def lqseg_root(level: int) -> DatasetRoot:
    """Root of the LQSeg level `level` copy of ADE20K-val."""
    return DatasetRoot("RASS_LQSEG_ROOT", f"ADEChallengeData2016_lqseg_{level}", f"lqseg_{level}")


def register_all() -> None:
    """Register all datasets of the project (replaces detectron2's own ADE20K entries)."""
    register_sem_seg_split("ade20k_sem_seg_train", ADE20K_ROOT, "training")
    register_sem_seg_split("ade20k_sem_seg_val", ADE20K_ROOT, "validation")
    register_sem_seg_split("ade20k_sem_seg_val_degraded", ADE20K_DEGRADED_ROOT, "validation")
    for k in (1, 2, 3):
        register_sem_seg_split(f"ade20k_sem_seg_val_lqseg_{k}", lqseg_root(k), "validation")
    register_sem_seg_split("reallq_sem_seg_val", REALLQ_ROOT, "validation")
    register_sem_seg_split("synthetic_sem_seg_train", SYNTHETIC_ROOT, "training")
    register_sem_seg_split("synthetic_sem_seg_val", SYNTHETIC_ROOT, "validation")
    register_sem_seg_split("synthetic_sem_seg_val_degraded", SYNTHETIC_DEGRADED_ROOT, "validation")
    register_all_sod()  # SOD / DIS sets (rass.data.datasets.sod)
    register_all_hqseg()  # HQSeg-44K + HQ-SAM's evaluation sets, promptable (rass.data.datasets.hqseg)
