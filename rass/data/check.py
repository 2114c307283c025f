"""Read every image and annotation of a registered dataset as training and evaluation would, and
list each file that would stop a run (`tools/check_dataset.py`).

A training or evaluation run stops at the first bad file it meets (one ``error:`` line); this check
reads them all and names every problem at once: missing or damaged (e.g. truncated) images and
annotations, image/annotation size mismatches (with the image's EXIF orientation when it has one),
label values outside the classes, unreadable masks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from rass.data.dataset_mappers.promptable import read_binary_mask
from rass.utils.errors import UserError, UserKeyError, UserValueError
from rass.utils.image_io import EXIF_POLICIES, check_labels, read_image_checked, read_label_checked

__all__ = ["DatasetCheck", "check_dataset"]


@dataclass
class DatasetCheck:
    """Result of `check_dataset`.

    Args:
        name: the dataset.
        checked: number of dataset entries read.
        problems: (file, message) of each entry that failed, in the dataset's order.
    """

    name: str
    checked: int = 0
    problems: List[Tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        """One line: how many entries were read and how many failed."""
        return f"{self.name}: {len(self.problems)} of {self.checked} entries have problems"


def _semantic_reader(meta, apply_exif: bool) -> Callable[[Dict], None]:
    classes = meta.get("stuff_classes", None)
    ignore = meta.get("ignore_label", 255)

    def read(d: Dict) -> None:
        image = read_image_checked(d["file_name"], "RGB", apply_exif)
        label = read_label_checked(d["sem_seg_file_name"], image.shape[:2], d["file_name"], apply_exif)
        if classes:
            check_labels(label, len(classes), ignore, d["sem_seg_file_name"])
    return read


def _mask_reader(meta, apply_exif: bool) -> Callable[[Dict], None]:
    def read(d: Dict) -> None:
        read_image_checked(d["file_name"], "RGB", apply_exif)
        read_binary_mask(d["mask_file"])
    return read


def check_dataset(name: str, labelled_exif: str = "apply", progress: Optional[Callable[[Iterable], Iterable]] = None
                  ) -> DatasetCheck:
    """Read every entry of a registered dataset and collect the problems (user errors) by file.

    Args:
        name: registered dataset name.
        labelled_exif: INPUT.LABELLED_EXIF ("apply" or "ignore").
        progress: optional wrapper of the entry iterator (e.g. tqdm).
    """
    if name not in DatasetCatalog.list():
        raise UserKeyError(f"Dataset {name!r} is not registered", hint="see datasets/README.md for the names")
    if labelled_exif not in EXIF_POLICIES:
        raise UserValueError(f"labelled_exif must be one of {EXIF_POLICIES}, got {labelled_exif!r}")
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    apply_exif = labelled_exif == "apply"
    result = DatasetCheck(name)
    semantic, masks = _semantic_reader(meta, apply_exif), _mask_reader(meta, apply_exif)
    for d in (progress(dicts) if progress else dicts):
        if "sem_seg_file_name" in d:
            reader = semantic
        elif "mask_file" in d:
            reader = masks
        else:
            raise UserValueError(f"Dataset {name!r}: entries have neither sem_seg_file_name nor mask_file "
                                 f"(keys {sorted(d)}): not a dataset this project trains or evaluates on")
        result.checked += 1
        try:
            reader(d)
        except UserError as e:
            message = e.message + (f" (hint: {e.hint})" if e.hint else "")
            result.problems.append((os.fspath(d["file_name"]), message))
    return result
