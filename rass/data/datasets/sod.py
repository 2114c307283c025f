"""Salient-object (SOD) and dichotomous-image (DIS) segmentation datasets: one image + one grey mask.

Dataset dicts as the promptable sets (`rass.data.datasets.lqseg.load_image_mask_folder`, reused):
``{"file_name", "mask_file", "image_id": stem, "height": mask H, "width": mask W}``, paired BY FILE
STEM (MGD-SAM2's release pairs two folders by sorted order); a stem on one side only is an error
that names the files. Metadata ``evaluator_type="sod"`` (`rass.evaluation.sod.SODEvaluator`, the
"mgd_sod" mapper). Registration never touches the disk: folders are searched when a set is loaded.

Roots (each an env var, else a folder under ``$DETECTRON2_DATASETS``) and the published layouts
(first candidate folder that exists wins; the error of a missing set lists every candidate)::

    $RASS_DIS5K_ROOT (DIS5K)       DIS-TR/{im,gt}  DIS-VD/{im,gt}  DIS-TE1..4/{im,gt}
    $RASS_HRSOD_ROOT (HRSOD)       HRSOD_train + HRSOD_train_mask,  HRSOD_test + HRSOD_test_mask
    $RASS_DAVIS_S_ROOT (DAVIS-S)   {im,image,images,imgs} + {gt,mask,masks,GT}
    $RASS_UHRSD_ROOT (UHRSD)       UHRSD_TR[_2K]/{image,mask}  UHRSD_TE[_2K]/{image,mask}
    $RASS_DUTS_ROOT (DUTS)         DUTS-TR/DUTS-TR-{Image,Mask}  DUTS-TE/DUTS-TE-{Image,Mask}
    $RASS_HKUIS_ROOT (HKU-IS)      {test/image,imgs,image,images,Imgs} + {test/mask,gt,mask,masks,GT,Imgs}
    $RASS_SOD_SYNTHETIC_ROOT (synthetic_sod)   {train,test}/{im,gt}  (tools/make_synthetic_sod.py)

Names: ``dis5k_{tr,vd,te1,te2,te3,te4}``, ``hrsod_{train,test}``, ``davis_s_test``,
``uhrsd_{train,test}``, ``duts_{train,test}``, ``hkuis_test``, ``sod_synthetic_{train,test}``.
Any other images folder + masks folder: `register_sod_folder`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

from rass.utils.errors import UserFileNotFoundError

from .lqseg import _register, load_image_mask_folder
from .sem_seg import DatasetRoot

__all__ = ["EVALUATOR_TYPE", "SODSplit", "SOD_SPLITS", "register_sod_folder", "register_sod", "sod_folders", "register_all_sod"]

EVALUATOR_TYPE = "sod"

DIS5K_ROOT = DatasetRoot("RASS_DIS5K_ROOT", "DIS5K")
HRSOD_ROOT = DatasetRoot("RASS_HRSOD_ROOT", "HRSOD")
DAVIS_S_ROOT = DatasetRoot("RASS_DAVIS_S_ROOT", "DAVIS-S")
UHRSD_ROOT = DatasetRoot("RASS_UHRSD_ROOT", "UHRSD")
DUTS_ROOT = DatasetRoot("RASS_DUTS_ROOT", "DUTS")
HKUIS_ROOT = DatasetRoot("RASS_HKUIS_ROOT", "HKU-IS")
SOD_SYNTHETIC_ROOT = DatasetRoot("RASS_SOD_SYNTHETIC_ROOT", "synthetic_sod")


@dataclass(frozen=True)
class SODSplit:
    """One registered SOD / DIS split.

    Args:
        name: registered dataset name.
        root: where the dataset lives.
        image_dirs: candidate image folders relative to the root (first existing wins).
        mask_dirs: candidate mask folders relative to the root (first existing wins).
    """

    name: str
    root: DatasetRoot
    image_dirs: Tuple[str, ...]
    mask_dirs: Tuple[str, ...]


def _dis(name: str, folder: str) -> SODSplit:
    return SODSplit(name, DIS5K_ROOT, (f"{folder}/im",), (f"{folder}/gt",))


SOD_SPLITS: Tuple[SODSplit, ...] = (
    _dis("dis5k_tr", "DIS-TR"),
    _dis("dis5k_vd", "DIS-VD"),
    *(_dis(f"dis5k_te{k}", f"DIS-TE{k}") for k in (1, 2, 3, 4)),
    SODSplit("hrsod_train", HRSOD_ROOT, ("HRSOD_train",), ("HRSOD_train_mask",)),
    SODSplit("hrsod_test", HRSOD_ROOT, ("HRSOD_test",), ("HRSOD_test_mask",)),
    SODSplit("davis_s_test", DAVIS_S_ROOT, ("im", "image", "images", "imgs"), ("gt", "mask", "masks", "GT")),
    SODSplit("uhrsd_train", UHRSD_ROOT, ("UHRSD_TR/image", "UHRSD_TR_2K/image"), ("UHRSD_TR/mask", "UHRSD_TR_2K/mask")),
    SODSplit("uhrsd_test", UHRSD_ROOT, ("UHRSD_TE/image", "UHRSD_TE_2K/image"), ("UHRSD_TE/mask", "UHRSD_TE_2K/mask")),
    SODSplit("duts_train", DUTS_ROOT, ("DUTS-TR/DUTS-TR-Image",), ("DUTS-TR/DUTS-TR-Mask",)),
    SODSplit("duts_test", DUTS_ROOT, ("DUTS-TE/DUTS-TE-Image",), ("DUTS-TE/DUTS-TE-Mask",)),
    SODSplit("hkuis_test", HKUIS_ROOT, ("test/image", "imgs", "image", "images", "Imgs"),
             ("test/mask", "gt", "mask", "masks", "GT", "Imgs")),
    SODSplit("sod_synthetic_train", SOD_SYNTHETIC_ROOT, ("train/im",), ("train/gt",)),
    SODSplit("sod_synthetic_test", SOD_SYNTHETIC_ROOT, ("test/im",), ("test/gt",)),
)


def sod_folders(root: str, split: SODSplit) -> Tuple[str, str]:
    """(image folder, mask folder) of `split` under `root`: the first candidates that exist.

    Raises:
        UserFileNotFoundError: naming the root, its env var and every folder searched.
    """
    found = []
    for cands, what in ((split.image_dirs, "image"), (split.mask_dirs, "mask")):
        paths = [os.path.join(root, c) for c in cands]
        hit = next((p for p in paths if os.path.isdir(p)), None)
        if hit is None:
            raise UserFileNotFoundError(
                f"Dataset {split.name!r}: no {what} folder under {root!r} (configured by {split.root.describe()}); "
                f"searched {', '.join(cands)}. See datasets/README.md (SOD / DIS datasets), or register the folders "
                "with register_sod_folder.")
        found.append(hit)
    return found[0], found[1]


def split_loader(split: SODSplit) -> Callable[[], List[dict]]:
    def load() -> List[dict]:
        root = split.root.resolve()
        image_dir, mask_dir = sod_folders(root, split)
        return load_image_mask_folder(split.name, image_dir, mask_dir, split.root.describe())

    return load


def register_sod_folder(name: str, image_dir: str, mask_dir: str, **metadata) -> None:
    """Register an images folder + masks folder (one ``<stem>.png`` grey mask per image) as a SOD set.

    Args:
        name: dataset name (replaces an earlier registration of it).
        image_dir: folder of images; ``~`` expanded; read when the dataset is loaded.
        mask_dir: folder of the masks (may be `image_dir` itself: its .png files are then the masks).
        metadata: further metadata fields.
    """
    image_dir, mask_dir = os.path.expanduser(image_dir), os.path.expanduser(mask_dir)
    _register(name, lambda: load_image_mask_folder(name, image_dir, mask_dir), evaluator_type=EVALUATOR_TYPE,
              image_dir=image_dir, mask_dir=mask_dir, **metadata)


def register_sod(splits: Sequence[SODSplit] = SOD_SPLITS) -> List[str]:
    """Register `splits` (lazily: nothing is read now); returns their names."""
    for s in splits:
        _register(s.name, split_loader(s), evaluator_type=EVALUATOR_TYPE, root_env=s.root.env_var)
    return [s.name for s in splits]


def register_all_sod() -> None:
    """Register the published SOD / DIS splits and the generated one (done on `import rass`)."""
    register_sod(SOD_SPLITS)
