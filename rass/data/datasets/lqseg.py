"""Promptable-segmentation datasets: the LQSeg test sets (GleSAM) and "images folder + masks folder".

Dataset dicts: ``{"file_name": image, "mask_file": mask PNG, "image_id": stem, "height": mask H,
"width": mask W}``; metadata ``evaluator_type="promptable_mask"``. One mask PNG per image with the
same stem (0/255; see the promptable mapper for other values); a stem on one side only is an error.
Image and mask sizes may differ (GleSAM's released LQ images are 512×512, their masks keep the
original size): the mapper decides (see `rass.data.dataset_mappers.promptable`).

LQSeg layout under ``$RASS_LQSEG_ROOT`` (default ``$DETECTRON2_DATASETS/LQSeg``), as GleSAM's
`degraded_utils/README.md`::

    test_clear/<clear>/   clean images + masks (<clear>: Thinobject-5K, LVIS, ECSSD, COCO)
    test/<set>/           degraded copies (<set>: Thin, LVIS, ECSSD, COCO), one folder per level

Level folders searched in ``test/<set>/`` for LQ-k (k = 1, 2, 3; GleSAM's down-sampling factor
d = 1, 2, 4): ``LQ-k/images`` (what `tools/degrade_dataset.py --layout image_mask` writes, with
``LQ-k/masks``), then ``*RealLR-ds<d>-orisize/lr`` and ``*RealLR-ds<d>/lr`` (GleSAM's generator:
``<save_dir>/lr``). Clean images: ``test_clear/<clear>/{images,imgs,im}`` or the folder itself;
masks: the level's own ``masks`` folder, else ``test_clear/<clear>/{masks,masks_test,
masks_random,gt,GT}`` or the clean folder itself (its .png files when the images are not .png).
Names: ``lqseg_{thin,lvis,ecssd,coco}_test_lq{1,2,3}`` and ``lqseg_<set>_test_clear``; the generated
set of `tools/make_synthetic_lqseg.py` is ``lqseg_synthetic_test_{clear,lq1,lq2,lq3}`` under
``$RASS_LQSEG_SYNTHETIC_ROOT`` (default ``$DETECTRON2_DATASETS/synthetic_lqseg``).

Training sets (clean image + mask pairs; degraded online with the "lqseg_train" preset):
``train/<set>/`` with <set> Thinobject-5K (also ThinObject5K, Thin), MSRA (also MSRA_10K, MSRA10K)
and LVIS, registered as ``lqseg_{thin,msra,lvis}_train`` (all three: GleSAM's release drops LVIS
from its list). Images in ``train/<set>/{images_train,images,imgs,Imgs,im}`` (LVIS also
``LVIS_train/images``, GleSAM's RobustSeg path) or the folder itself; masks in
``{masks_train,masks,masks_random,gt,GT}`` (LVIS also ``LVIS_train/masks``) or the folder's .png
files (MSRA10K keeps <stem>.jpg and <stem>.png side by side). The generated training split is
``lqseg_synthetic_train`` (``train/Synthetic/{images,masks}`` under the synthetic root).
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rass.utils.errors import UserFileNotFoundError, UserValueError
from rass.utils.inputs import files_by_stem

from .sem_seg import DatasetRoot, report_exif_orientations

__all__ = [
    "EVALUATOR_TYPE",
    "LQSEG_ROOT",
    "LQSEG_SYNTHETIC_ROOT",
    "LQSEG_SETS",
    "LEVELS",
    "load_image_mask_folder",
    "register_image_mask_folder",
    "register_lqseg",
    "register_lqseg_train",
    "lqseg_folders",
    "lqseg_train_folders",
    "LQSEG_TRAIN_SETS",
]

EVALUATOR_TYPE = "promptable_mask"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LQSEG_ROOT = DatasetRoot("RASS_LQSEG_ROOT", "LQSeg")
LQSEG_SYNTHETIC_ROOT = DatasetRoot("RASS_LQSEG_SYNTHETIC_ROOT", "synthetic_lqseg")
LEVELS = (1, 2, 3)  # LQ-1/2/3: GleSAM's second-stage down-sampling factor 1/2/4
_FACTOR = {1: 1, 2: 2, 3: 4}
_CLEAN_IMAGE_DIRS = ("images", "imgs", "im")
_MASK_DIRS = ("masks", "masks_test", "masks_random", "gt", "GT")


@dataclass(frozen=True)
class LQSegSet:
    """One LQSeg test set: its registered key, folder under test/ and folder names under test_clear/."""

    key: str
    test_dir: str
    clear_dirs: Tuple[str, ...]


LQSEG_SETS: Tuple[LQSegSet, ...] = (
    LQSegSet("thin", "Thin", ("Thinobject-5K", "ThinObject5K", "Thin")),
    LQSegSet("lvis", "LVIS", ("LVIS",)),
    LQSegSet("ecssd", "ECSSD", ("ECSSD", "ecssd")),
    LQSegSet("coco", "COCO", ("COCO", "coco")),
)
SYNTHETIC_SET = LQSegSet("synthetic", "Synthetic", ("Synthetic",))


@dataclass(frozen=True)
class LQSegTrainSet:
    """One LQSeg training set: its registered key, folder names under train/ and, inside, the
    image / mask sub-folders searched in order ("." = the set folder itself)."""

    key: str
    dirs: Tuple[str, ...]
    image_dirs: Tuple[str, ...] = ("images_train", "images", "imgs", "Imgs", "im", ".")
    mask_dirs: Tuple[str, ...] = ("masks_train", "masks", "masks_random", "gt", "GT", ".")


LQSEG_TRAIN_SETS: Tuple[LQSegTrainSet, ...] = (
    LQSegTrainSet("thin", ("Thinobject-5K", "ThinObject5K", "Thin")),
    LQSegTrainSet("msra", ("MSRA", "MSRA_10K", "MSRA10K")),
    LQSegTrainSet("lvis", ("LVIS",),
                  image_dirs=("images", "LVIS_train/images", "imgs", "im", "."),
                  mask_dirs=("masks", "LVIS_train/masks", "masks_random", "gt", "GT", ".")),
)
SYNTHETIC_TRAIN_SET = LQSegTrainSet("synthetic", ("Synthetic",), image_dirs=("images",), mask_dirs=("masks",))


def load_image_mask_folder(dataset_name: str, image_dir: str, mask_dir: str, hint: str = "") -> List[dict]:
    """Dataset dicts of an images folder + a masks folder matched by file stem.

    When both are the same folder, its .png files are the masks and the other images the images.

    Args:
        dataset_name: registered name (for messages).
        image_dir: folder of images (.jpg/.png/...).
        mask_dir: folder of one <stem>.png mask per image.
        hint: how the folders are configured (env var), for messages.

    Returns:
        Sorted list of dicts with file_name, mask_file, image_id, height, width (mask size).
    """
    where = f" (configured by {hint})" if hint else ""
    for d, what in ((image_dir, "image"), (mask_dir, "mask")):
        if not os.path.isdir(d):
            raise UserFileNotFoundError(f"Dataset {dataset_name!r}: {what} folder {d!r} does not exist{where}. See "
                                        "datasets/README.md.")
    same = os.path.realpath(image_dir) == os.path.realpath(mask_dir)
    images = files_by_stem(image_dir, tuple(e for e in IMAGE_EXTS if not (same and e == ".png")))
    masks = files_by_stem(mask_dir, (".png",))
    if not images:
        raise UserFileNotFoundError(f"Dataset {dataset_name!r}: no images ({', '.join(IMAGE_EXTS)}) in "
                                    f"{image_dir!r}{where}")
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if no_mask or no_image:
        raise UserValueError(
            f"Dataset {dataset_name!r}: images and masks do not match: {len(no_mask)} image(s) in {image_dir} without "
            f"a <stem>.png mask in {mask_dir} (e.g. {no_mask[:3]}), {len(no_image)} mask(s) without image (e.g. {no_image[:3]})",
            hint="each image needs its mask <stem>.png (same file stem): add the missing ones or move the unpaired "
                 "files out of the dataset",
        )
    dicts = []
    for stem in sorted(images):
        try:
            with Image.open(masks[stem]) as im:
                w, h = im.size
        except Exception as e:  # noqa: BLE001 - any decoding problem, by name
            raise UserValueError(f"Dataset {dataset_name!r}: cannot read mask {masks[stem]}: {type(e).__name__}: "
                                 f"{e}") from e
        dicts.append({"file_name": images[stem], "mask_file": masks[stem], "image_id": stem, "height": h, "width": w})
    report_exif_orientations(dataset_name, [d["file_name"] for d in dicts])
    return dicts


def _register(name: str, loader: Callable[[], List[dict]], evaluator_type: str = EVALUATOR_TYPE, **metadata) -> None:
    """Register `name` (replacing an earlier registration) with its lazy `loader` and metadata."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(evaluator_type=evaluator_type, **metadata)


def register_image_mask_folder(name: str, image_dir: str, mask_dir: str, **metadata) -> None:
    """Register a user's "images folder + masks folder" set for promptable segmentation.

    Args:
        name: dataset name (replaces an earlier registration of it).
        image_dir: folder of images; `~` expanded; read when the dataset is loaded.
        mask_dir: folder of one <stem>.png mask (0/255) per image.
        metadata: further metadata fields.
    """
    image_dir, mask_dir = os.path.expanduser(image_dir), os.path.expanduser(mask_dir)
    _register(name, lambda: load_image_mask_folder(name, image_dir, mask_dir), image_dir=image_dir, mask_dir=mask_dir, **metadata)


def _first_dir(candidates: Sequence[str]) -> Optional[str]:
    for c in candidates:
        if os.path.isdir(c):
            return c
    return None


def _alts(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else "{" + ",".join(names) + "}"


def lqseg_folders(root: str, s: LQSegSet, level: Optional[int]) -> Tuple[str, str, str, str]:
    """(image folder, mask folder, where images were searched, where masks were searched) of set
    `s` at `level` (None: clean), relative descriptions for messages.

    A folder that is not found is returned as its first candidate (the loader then raises).
    """
    clear = [os.path.join(root, "test_clear", c) for c in s.clear_dirs]
    mask_candidates = [os.path.join(c, m) for c in clear for m in _MASK_DIRS] + clear
    mask_desc = f"test_clear/{_alts(s.clear_dirs)}/{_alts(_MASK_DIRS + ('.',))}"
    if level is None:
        candidates = [os.path.join(c, d) for c in clear for d in _CLEAN_IMAGE_DIRS] + clear
        image_desc = f"test_clear/{_alts(s.clear_dirs)}/{_alts(_CLEAN_IMAGE_DIRS + ('.',))}"
    else:
        d = _FACTOR[level]
        base = os.path.join(root, "test", s.test_dir)
        own = os.path.join(base, f"LQ-{level}")
        candidates = [os.path.join(own, "images")]
        for pattern in (f"*RealLR-ds{d}-orisize", f"*RealLR-ds{d}"):
            candidates += sorted(glob.glob(os.path.join(glob.escape(base), pattern, "lr")))
        image_desc = f"test/{s.test_dir}/LQ-{level}/images, test/{s.test_dir}/*RealLR-ds{d}[-orisize]/lr"
        mask_candidates = [os.path.join(own, "masks")] + mask_candidates
        mask_desc = f"test/{s.test_dir}/LQ-{level}/masks, " + mask_desc
    image_dir = _first_dir(candidates) or candidates[0]
    mask_dir = _first_dir(mask_candidates) or mask_candidates[0]
    return image_dir, mask_dir, image_desc, mask_desc


def lqseg_train_folders(root: str, s: LQSegTrainSet) -> Tuple[str, str, str, str]:
    """(image folder, mask folder, where images were searched, where masks were searched) of the
    training set `s`: the first set folder under ``root/train`` that exists, then in it the first
    image and mask sub-folders that exist (a folder that is not found: its first candidate)."""
    sets = [os.path.join(root, "train", d) for d in s.dirs]
    base = _first_dir(sets) or sets[0]
    images = [os.path.normpath(os.path.join(base, d)) for d in s.image_dirs]
    masks = [os.path.normpath(os.path.join(base, d)) for d in s.mask_dirs]
    image_desc = f"train/{_alts(s.dirs)}/{_alts(s.image_dirs)}"
    mask_desc = f"train/{_alts(s.dirs)}/{_alts(s.mask_dirs)}"
    return _first_dir(images) or images[0], _first_dir(masks) or masks[0], image_desc, mask_desc


def _lqseg_loader(name: str, root: DatasetRoot, s: Union[LQSegSet, "LQSegTrainSet"], level: Optional[int]) -> Callable[[], List[dict]]:
    """Loader of test set `s` (an `LQSegSet`) at `level`, or of training set `s` (an `LQSegTrainSet`)."""

    def load() -> List[dict]:
        r = root.resolve()
        if not os.path.isdir(r):
            raise UserFileNotFoundError(f"Dataset {name!r}: LQSeg root {r!r} does not exist (configured by "
                                        f"{root.describe()}). See datasets/README.md (LQSeg).")
        if isinstance(s, LQSegTrainSet):
            image_dir, mask_dir, image_desc, mask_desc = lqseg_train_folders(r, s)
        else:
            image_dir, mask_dir, image_desc, mask_desc = lqseg_folders(r, s, level)
        for folder, what, desc in ((image_dir, "image", image_desc), (mask_dir, "mask", mask_desc)):
            if not os.path.isdir(folder):
                raise UserFileNotFoundError(
                    f"Dataset {name!r}: no {what} folder under the LQSeg root {r!r} (configured by {root.describe()}); "
                    f"searched {desc}. See datasets/README.md (LQSeg), or register the folders with register_image_mask_folder."
                )
        return load_image_mask_folder(name, image_dir, mask_dir, root.describe())

    return load


def register_lqseg(root: DatasetRoot = LQSEG_ROOT, sets: Sequence[LQSegSet] = LQSEG_SETS) -> List[str]:
    """Register the clean and LQ-1/2/3 test sets of each LQSeg set; returns the names."""
    names = []
    for s in sets:
        for level in (None,) + LEVELS:
            name = f"lqseg_{s.key}_test_" + ("clear" if level is None else f"lq{level}")
            _register(name, _lqseg_loader(name, root, s, level), root_env=root.env_var, lqseg_set=s.key,
                      level="clean" if level is None else f"LQ-{level}")
            names.append(name)
    return names


def register_lqseg_train(root: DatasetRoot = LQSEG_ROOT, sets: Sequence[LQSegTrainSet] = LQSEG_TRAIN_SETS) -> List[str]:
    """Register the clean training sets ``lqseg_<key>_train`` (image + mask pairs); returns the names."""
    names = []
    for s in sets:
        name = f"lqseg_{s.key}_train"
        _register(name, _lqseg_loader(name, root, s, None), root_env=root.env_var, lqseg_set=s.key, level="clean", split="train")
        names.append(name)
    return names


def register_all_lqseg() -> None:
    """Register the released LQSeg sets and the generated one, test and train (done on `import rass`)."""
    register_lqseg(LQSEG_ROOT, LQSEG_SETS)
    register_lqseg(LQSEG_SYNTHETIC_ROOT, (SYNTHETIC_SET,))
    register_lqseg_train(LQSEG_ROOT, LQSEG_TRAIN_SETS)
    register_lqseg_train(LQSEG_SYNTHETIC_ROOT, (SYNTHETIC_TRAIN_SET,))


register_all_lqseg()
