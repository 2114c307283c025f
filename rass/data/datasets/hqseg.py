"""HQSeg-44K (HQ-SAM's training set) and HQ-SAM's four evaluation sets, as promptable sets (one image + one object
mask, prompts drawn from the mask; evaluator "promptable_mask").

Layout: HQ-SAM's published `data/` folder (`SysCV/sam-hq` train/train.py, README "Data preparation"), found at
``$RASS_HQSEG_ROOT`` (otherwise ``$DETECTRON2_DATASETS/sam-hq-data``); the DIS5K sets come from
``$RASS_DIS5K_ROOT`` (the SOD sets' root, `rass.data.datasets.sod`; point it at ``<data>/DIS5K``)::

    name                      folder (images + <stem>.png masks; one folder = both)          images
    hqseg_dis_train           $RASS_DIS5K_ROOT/DIS-TR/{im,gt}                                 3,000
    hqseg_thin_train          thin_object_detection/ThinObject5K/{images_train,masks_train}   4,500
    hqseg_fss                 cascade_psp/fss_all                                             10,000
    hqseg_duts_train          cascade_psp/DUTS-TR                                             10,553
    hqseg_duts_test           cascade_psp/DUTS-TE                                             5,019
    hqseg_ecssd               cascade_psp/ecssd                                               1,000
    hqseg_msra10k             cascade_psp/MSRA_10K                                            10,000
    (HQSeg-44K = the seven above, 44,072 images)
    hqseg_dis_val             $RASS_DIS5K_ROOT/DIS-VD/{im,gt} (the promptable twin of "dis5k_vd")    470
    hqseg_thin_test           thin_object_detection/ThinObject5K/{images_test,masks_test}     500
    hqseg_coift               thin_object_detection/COIFT/{images,masks}                      280
    hqseg_hrsod               thin_object_detection/HRSOD/{images,masks_max255}               400

Images and masks are paired by file stem (`load_image_mask_folder`, via the SOD sets' loader); a stem on one
side only is an error naming the files. Registration never touches the disk.
"""
from __future__ import annotations

from typing import List, Tuple

from .lqseg import EVALUATOR_TYPE, _register
from .sem_seg import DatasetRoot
from .sod import DIS5K_ROOT, SODSplit, split_loader

__all__ = ["HQSEG_ROOT", "HQSEG_TRAIN_SETS", "HQSEG_EVAL_SETS", "HQSEG_44K", "register_all_hqseg"]

HQSEG_ROOT = DatasetRoot("RASS_HQSEG_ROOT", "sam-hq-data")
_THIN = "thin_object_detection"


def _folder(name: str, folder: str) -> SODSplit:
    return SODSplit(name, HQSEG_ROOT, (folder,), (folder,))


HQSEG_TRAIN_SETS: Tuple[SODSplit, ...] = (
    SODSplit("hqseg_dis_train", DIS5K_ROOT, ("DIS-TR/im",), ("DIS-TR/gt",)),
    SODSplit("hqseg_thin_train", HQSEG_ROOT, (f"{_THIN}/ThinObject5K/images_train",), (f"{_THIN}/ThinObject5K/masks_train",)),
    _folder("hqseg_fss", "cascade_psp/fss_all"),
    _folder("hqseg_duts_train", "cascade_psp/DUTS-TR"),
    _folder("hqseg_duts_test", "cascade_psp/DUTS-TE"),
    _folder("hqseg_ecssd", "cascade_psp/ecssd"),
    _folder("hqseg_msra10k", "cascade_psp/MSRA_10K"),
)
HQSEG_EVAL_SETS: Tuple[SODSplit, ...] = (
    SODSplit("hqseg_dis_val", DIS5K_ROOT, ("DIS-VD/im",), ("DIS-VD/gt",)),
    SODSplit("hqseg_thin_test", HQSEG_ROOT, (f"{_THIN}/ThinObject5K/images_test",), (f"{_THIN}/ThinObject5K/masks_test",)),
    SODSplit("hqseg_coift", HQSEG_ROOT, (f"{_THIN}/COIFT/images",), (f"{_THIN}/COIFT/masks",)),
    SODSplit("hqseg_hrsod", HQSEG_ROOT, (f"{_THIN}/HRSOD/images",), (f"{_THIN}/HRSOD/masks_max255",)),
)
# DATASETS.TRAIN of a full RTS run (configs/hqseg/stable_sam_rts_vit_l.yaml)
HQSEG_44K = tuple(s.name for s in HQSEG_TRAIN_SETS)


def register_all_hqseg() -> List[str]:
    """Register the HQSeg-44K sets and HQ-SAM's evaluation sets (lazily); returns their names."""
    for s in HQSEG_TRAIN_SETS + HQSEG_EVAL_SETS:
        _register(s.name, split_loader(s), evaluator_type=EVALUATOR_TYPE, root_env=s.root.env_var)
    return [s.name for s in HQSEG_TRAIN_SETS + HQSEG_EVAL_SETS]
