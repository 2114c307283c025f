"""Loading and registering semantic-segmentation datasets in the ADE20K/detectron2 layout.

Layout of a split (``<root>/images/<split>/*.jpg|png`` + ``<root>/annotations_detectron2/<split>/*.png``):
images and annotations are matched by file stem; a stem present on one side only is an error.
Roots are resolved when the dataset is loaded, so environment variables set after import count.
Loading also reads every image's header and warns (once per dataset and process) about labelled
images that carry an EXIF orientation (see `report_exif_orientations`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES
from detectron2.utils.logger import log_first_n

from rass.utils.errors import UserFileNotFoundError, UserValueError
from rass.utils.image_io import exif_orientation, orientation_name
from rass.utils.paths import project_path

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
IGNORE_LABEL = 255
NUM_ADE20K_CLASSES = len(ADE20K_SEM_SEG_CATEGORIES)  # 150


def datasets_root() -> str:
    """The detectron2 datasets root: ``$DETECTRON2_DATASETS`` (relative: to the current folder), else the
    repository's ``datasets/`` folder (a built-in default, see `rass.utils.paths`)."""
    value = os.getenv("DETECTRON2_DATASETS")
    return os.path.expanduser(value) if value else project_path("datasets")


@dataclass(frozen=True)
class DatasetRoot:
    """Where a dataset lives: an env var of its own, else a folder under DETECTRON2_DATASETS.

    Args:
        env_var: environment variable that, when set, gives the root (joined with `env_subdir`).
        default_subdir: folder under ``$DETECTRON2_DATASETS`` (default: the repository's ``datasets/``) otherwise.
        env_subdir: sub-folder of the env var's value that is the root ("" = the value itself).
    """

    env_var: str
    default_subdir: str
    env_subdir: str = ""

    def resolve(self) -> str:
        value = os.getenv(self.env_var)
        if value:
            return os.path.join(os.path.expanduser(value), self.env_subdir)
        return os.path.join(datasets_root(), self.default_subdir)

    def describe(self) -> str:
        env = f"${self.env_var}/{self.env_subdir}" if self.env_subdir else f"${self.env_var}"
        if self.env_var == "DETECTRON2_DATASETS":
            return f"{env}, default <repository>/datasets/{self.default_subdir}"
        return f"{env}, otherwise $DETECTRON2_DATASETS/{self.default_subdir}"


def report_exif_orientations(dataset_name: str, image_paths: Sequence[str], first: int = 5) -> List[str]:
    """Warn (once per dataset and process) about labelled images that carry an EXIF orientation.

    Such an image is shown rotated or mirrored by photo viewers; its label must follow the orientation
    INPUT.LABELLED_EXIF reads it in. A label in the other orientation is caught as a size mismatch only
    when a 90° turn swaps a non-square image's sides: otherwise it is used turned, silently.

    Args:
        dataset_name: registered name (for the message).
        image_paths: the dataset's images (their headers are read).
        first: how many names the warning lists.

    Returns:
        The images that carry an orientation other than 1.
    """
    tagged = [(p, o) for p in image_paths for o in (exif_orientation(p),) if o != 1]
    if tagged:
        names = ", ".join(f"{os.path.basename(p)} ({o}: {orientation_name(o)})" for p, o in tagged[:first])
        more = ", ..." if len(tagged) > first else ""
        log_first_n(
            logging.WARNING,
            f"Dataset {dataset_name!r}: {len(tagged)} of {len(image_paths)} labelled images carry an EXIF orientation "
            f"({names}{more}). With INPUT.LABELLED_EXIF 'apply' (the default) they are read upright, so their labels "
            "must follow the upright image (as photo viewers show it); with 'ignore' they are read as stored, so their "
            "labels must follow the stored pixels. A label in the other orientation is caught (as a size mismatch) "
            "only when a 90° turn swaps a non-square image's sides; otherwise (square images, 180° turns, mirrors) "
            "the image is used turned against its label without any error.",
            n=1, name=__name__, key="message",
        )
    return [p for p, _ in tagged]


def _stems(folder: str, exts) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts:
            if stem in out:
                raise UserValueError(f"{folder}: two files share the stem {stem!r}: {os.path.basename(out[stem])}, "
                                     f"{name}")
            out[stem] = os.path.join(folder, name)
    return out


def load_sem_seg_split(dataset_name: str, root: str, split: str, root_hint: str = "") -> List[dict]:
    """Read the file list of one split into detectron2 dataset dicts.

    Args:
        dataset_name: registered name (for error messages).
        root: dataset root folder.
        split: sub-folder name, e.g. "training" or "validation".
        root_hint: how the root is configured (env var), for error messages.

    Returns:
        list of dicts with ``file_name``, ``sem_seg_file_name``, ``image_id``.
    """
    hint = f" (configured by {root_hint})" if root_hint else ""
    if not os.path.isdir(root):
        raise UserFileNotFoundError(
            f"Dataset {dataset_name!r}: root folder {root!r} does not exist{hint}. See datasets/README.md."
        )
    nested = os.path.join(root, "ADEChallengeData2016")
    if not os.path.isdir(os.path.join(root, "images")) and os.path.isdir(os.path.join(nested, "images")):
        root = nested  # a copy that keeps ADE20K's top folder inside its root
    image_dir = os.path.join(root, "images", split)
    gt_dir = os.path.join(root, "annotations_detectron2", split)
    for d in (image_dir, gt_dir):
        if not os.path.isdir(d):
            raise UserFileNotFoundError(f"Dataset {dataset_name!r}: folder {d!r} is missing{hint}. See "
                                        "datasets/README.md.")
    images = _stems(image_dir, IMAGE_EXTS)
    gts = _stems(gt_dir, (".png",))
    if not gts:
        raise UserFileNotFoundError(f"Dataset {dataset_name!r}: no .png annotations in {gt_dir!r}")
    no_gt = sorted(set(images) - set(gts))
    no_img = sorted(set(gts) - set(images))
    if no_gt or no_img:
        raise UserValueError(
            f"Dataset {dataset_name!r}: images and annotations do not match: "
            f"{len(no_gt)} image(s) without annotation in {gt_dir} (e.g. {no_gt[:3]}), "
            f"{len(no_img)} annotation(s) without image in {image_dir} (e.g. {no_img[:3]})",
            hint=f"each image needs its annotation <stem>.png in {gt_dir} (same file stem): add the missing ones or "
                 "move the unpaired files out of the dataset",
        )
    dicts = [{"file_name": images[s], "sem_seg_file_name": gts[s], "image_id": s} for s in sorted(images)]
    report_exif_orientations(dataset_name, [d["file_name"] for d in dicts])
    return dicts


def register_sem_seg_split(
    name: str,
    root: DatasetRoot,
    split: str,
    stuff_classes: Optional[List[str]] = None,
    **extra_metadata,
) -> None:
    """Register one split as a detectron2 dataset (replacing an earlier registration of `name`).

    Args:
        name: dataset name.
        root: where the dataset lives.
        split: sub-folder ("training" / "validation").
        stuff_classes: class names (default ADE20K's 150).
        extra_metadata: further metadata fields.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    loader: Callable[[], List[dict]] = lambda: load_sem_seg_split(name, root.resolve(), split, root.describe())
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes or ADE20K_SEM_SEG_CATEGORIES),
        stuff_colors=palette(len(stuff_classes or ADE20K_SEM_SEG_CATEGORIES)),
        evaluator_type="sem_seg",
        ignore_label=IGNORE_LABEL,
        root_env=root.env_var,
        split=split,
        **extra_metadata,
    )


def palette(n: int) -> List[List[int]]:
    """A fixed, well-spread RGB colour per class (deterministic, independent of any RNG)."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.45 * ((i * 7) % 5) / 4
        v = 0.6 + 0.4 * ((i * 3) % 4) / 3
        k = np.array([5.0, 3.0, 1.0])
        rgb = v - v * s * np.clip(np.minimum((k + h * 6) % 6, 4 - (k + h * 6) % 6), 0, 1)
        cols.append([int(round(c * 255)) for c in rgb])
    return cols
