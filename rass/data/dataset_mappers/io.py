"""Reading images and label maps with errors that name the file and what was wrong."""
from __future__ import annotations

from typing import Tuple

import numpy as np
from detectron2.data import detection_utils as utils
from PIL import Image


def read_image_checked(path: str, image_format: str = "RGB") -> np.ndarray:
    """Read an image as H x W x 3 uint8, raising `ValueError` naming `path` if it cannot be decoded.

    Args:
        path: image file.
        image_format: detectron2 format ("RGB", "BGR", ...).
    """
    try:
        return utils.read_image(path, format=image_format)
    except FileNotFoundError:
        raise
    except Exception as e:  # PIL raises several types for broken files
        raise ValueError(f"Cannot decode image {path}: {type(e).__name__}: {e}") from e


def load_label(path: str, dtype=np.int64) -> np.ndarray:
    """Read a single-channel label PNG as an H x W array, with named errors.

    Args:
        path: label file.
        dtype: output dtype.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"Cannot decode label image {path}: {type(e).__name__}: {e}") from e
    if arr.ndim != 2:
        raise ValueError(f"Label image {path} must be single-channel (H x W), got shape {arr.shape}")
    return arr.astype(dtype)


def read_label_checked(path: str, image_hw: Tuple[int, int], image_path: str = "") -> np.ndarray:
    """Read a label map and check that its size equals the image's.

    Args:
        path: label file.
        image_hw: (height, width) of the image it annotates.
        image_path: the image file, for the error message.
    """
    label = load_label(path, np.uint8)
    if label.shape != tuple(image_hw):
        raise ValueError(
            f"Annotation {path} has size {label.shape[1]}x{label.shape[0]} (WxH) but image "
            f"{image_path or '?'} has size {image_hw[1]}x{image_hw[0]} (WxH)"
        )
    return label


def check_labels(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
    """Raise `ValueError` naming `path` and the offending values unless every value is a class
    id in ``0..num_classes-1`` or `ignore_label`.
    """
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_label)]
    if bad.size:
        raise ValueError(
            f"Label file {path} has values {bad.tolist()} outside 0..{num_classes - 1} and {ignore_label} "
            f"(official ADE20K annotations must be converted with datasets/prepare_ade20k_sem_seg.py)"
        )
