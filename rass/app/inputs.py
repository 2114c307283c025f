"""The browser demo's inputs and outputs: reading uploads, the seeded degradations, download files."""
from __future__ import annotations

import os
import re
import tempfile
import threading
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from PIL import Image

from rass.app.models import AppError
from rass.app.workdir import remove_oldest
from rass.utils.image_io import read_image_checked
from rass.data.degradation import build_degradation
from rass.utils.choices import APP_DEGRADATIONS, DEFAULT_MAX_PIXELS
from rass.utils.io import save_image_atomic

__all__ = ["DEGRADATIONS", "DEFAULT_MAX_PIXELS", "load_upload", "Degrader", "check_seed", "Downloads"]

# The degradations offered on the page (none, the LQSeg levels, RASS's preset) and the largest upload:
# in the light `rass.utils.choices`, which the command-line parsers read.
DEGRADATIONS = APP_DEGRADATIONS
MAX_SEED = 2**31 - 1
# How Python shows an in-memory file in an exception message (Pillow's "cannot identify image file <...>").
_IN_MEMORY_FILE = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _reason(exc: BaseException, path: str, name: str) -> str:
    """The message of `exc` about the upload at `path`, naming it by its file name `name` (not by its
    temporary path, nor by the in-memory copy the image reader decodes)."""
    return _IN_MEMORY_FILE.sub(name, str(exc).replace(f"'{path}'", name).replace(path, name))


def load_upload(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an uploaded file as H x W x 3 uint8 RGB (the project's reader: EXIF orientation, 16-bit,
    palette, gray+alpha; float images refused), refusing images of more than `max_pixels`.

    Args:
        path: the uploaded file (its base name is the user's file name).
        max_pixels: the largest accepted width x height.
    """
    name = os.path.basename(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise AppError(f"{name}: the image is too large to open safely",
                       hint=f"the demo takes at most {max_pixels / 1e6:.1f} megapixels; make it smaller") from None
    except (OSError, ValueError) as e:
        raise AppError(f"{name}: not an image file this demo can read ({_reason(e, path, name)})") from None
    if w * h > max_pixels:
        raise AppError(f"{name} is {w} x {h} pixels ({w * h / 1e6:.1f} MP): the demo takes at most "
                       f"{max_pixels / 1e6:.1f} MP (--max-pixels)", hint="make the image smaller first")
    try:
        return np.ascontiguousarray(read_image_checked(path, "RGB"))
    except (OSError, ValueError) as e:
        raise AppError(f"{name}: cannot read the image ({_reason(e, path, name)})") from None


class Degrader:
    """The page's degradations (`DEGRADATIONS`), one engine per preset, seeded per call.

    Args:
        num_threads: CPU threads of the engine (None: torch's setting).
    """

    def __init__(self, num_threads: Optional[int] = None) -> None:
        self._engines: Dict[str, Callable] = {}
        self._num_threads = num_threads
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, preset: str, seed: int) -> np.ndarray:
        """Degrade an RGB uint8 image; the same (image, preset, seed) always gives the same result.

        Args:
            image: H x W x 3 uint8 RGB.
            preset: one of `DEGRADATIONS` ("none" returns a copy).
            seed: the image's degradation seed, 0 .. 2**31 - 1.
        """
        if preset not in DEGRADATIONS:
            raise AppError(f"unknown degradation {preset!r}; expected one of {', '.join(DEGRADATIONS)}")
        seed = check_seed(seed)
        if preset == "none":
            return image.copy()
        with self._lock:
            if preset not in self._engines:
                self._engines[preset] = build_degradation(preset, seed=0, num_threads=self._num_threads)
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float() / 255.0
            y = self._engines[preset](x, seeds=[seed])[0]
        return np.ascontiguousarray((y.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy())


def check_seed(seed: object) -> int:
    """The seed as an int in 0 .. 2**31 - 1 (the page's number box may give a float or None)."""
    try:
        value = float(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AppError(f"seed {seed!r}: expected a whole number from 0 to {MAX_SEED}") from None
    if not value.is_integer() or not 0 <= value <= MAX_SEED:
        raise AppError(f"seed {seed!r}: expected a whole number from 0 to {MAX_SEED}")
    return int(value)



class Downloads:
    """PNG files for the page's download lists, one folder per run under `root` (the newest
    `keep` runs are kept), written atomically.

    Args:
        root: folder of the run folders (created).
        keep: how many run folders to keep.
    """

    def __init__(self, root: str, keep: int = 50) -> None:
        self.root = root
        self.keep = keep
        os.makedirs(root, exist_ok=True)
        self._lock = threading.Lock()
        self._runs = 0

    def write(self, stem: str, images: Dict[str, np.ndarray]) -> List[str]:
        """Write `<stem>_<key>.png` for every image; returns the paths.

        Args:
            stem: the input's name without extension.
            images: key -> H x W x 3 uint8 RGB, H x W bool mask (written 0 / 255) or H x W class ids
                (written as uint8).
        """
        with self._lock:
            self._runs += 1
            folder = tempfile.mkdtemp(prefix=f"run{self._runs:07d}-", dir=self.root)  # names sort by age
            remove_oldest(self.root, self.keep)
        paths = []
        for key, image in images.items():
            if image.dtype == bool:
                image = image.astype(np.uint8) * 255
            elif image.dtype != np.uint8:  # class ids
                if image.size and (image.min() < 0 or image.max() > 255):
                    raise AppError(f"{stem}_{key}.png is a uint8 PNG: class ids up to {int(image.max())} do not fit")
                image = image.astype(np.uint8)
            path = os.path.join(folder, f"{stem}_{key}.png")
            save_image_atomic(path, image)
            paths.append(path)
        return paths
