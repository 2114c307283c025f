"""Expanding command-line image arguments (files, folders, glob patterns) into image paths."""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Sequence, Tuple

from rass.utils.errors import UserValueError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_image_paths(specs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Expand files, folders (their images, sorted) and glob patterns into image paths, in order
    and without repeats.

    Args:
        specs: the arguments as given.

    Returns:
        (paths, problems): problems are (spec, reason) for the arguments that gave no image.
    """
    paths: List[str] = []
    problems: List[Tuple[str, str]] = []
    for spec in specs:
        if os.path.isdir(spec):
            found = [os.path.join(spec, n) for n in sorted(os.listdir(spec)) if n.lower().endswith(IMAGE_EXTS)]
            found = [f for f in found if os.path.isfile(f)]
            if not found:
                problems.append((spec, f"folder has no images ({', '.join(IMAGE_EXTS)})"))
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = [f for f in sorted(glob.glob(spec)) if os.path.isfile(f) and f.lower().endswith(IMAGE_EXTS)]
            if not found:
                problems.append((spec, "pattern matches no image"))
        else:
            found = []
            problems.append((spec, "no such file or folder"))
        paths += [f for f in found if f not in paths]
    return paths, problems


def files_by_stem(folder: str, exts: Sequence[str]) -> Dict[str, str]:
    """The files of `folder` with one of the extensions `exts` (case-insensitive; hidden files
    skipped), by stem, sorted by name; two files with one stem are an error naming both.

    Args:
        folder: a folder.
        exts: lower-case extensions with the dot, e.g. (".png",).
    """
    out: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts and not name.startswith("."):
            if stem in out:
                raise UserValueError(f"{folder}: two files share the stem {stem!r}: {os.path.basename(out[stem])}, "
                                     f"{name}")
            out[stem] = os.path.join(folder, name)
    return out
