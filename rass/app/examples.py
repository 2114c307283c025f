"""The demo's bundled example images, written at start-up (nothing is downloaded).

- ``grace_hopper.jpg``: the portrait of Grace Hopper that matplotlib ships as sample data
  (a U.S. Navy photograph, public domain), 512 x 600.
- ``synthetic_scene.png``: a scene of the project's synthetic ADE20K-format generator
  (`rass.data.synthetic.render_scene`), the kind of image the quickstart model is trained on.
- ``synthetic_object.png``: one object on a textured background from the synthetic LQSeg generator
  (`rass.data.synthetic_masks.make_synthetic_object`), to click on in the SAM / GleSAM tab.
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import List

from rass.data.synthetic import render_scene
from rass.data.synthetic_masks import make_synthetic_object
from rass.utils.io import save_image_atomic

__all__ = ["write_examples"]

logger = logging.getLogger(__name__)
SCENE_SEED = 7
SCENE_SIZES = (320, 480)  # smallest and largest side of the synthetic scene
OBJECT_SEED = 3
OBJECT_SIZES = (320, 400)  # smallest and largest side of the synthetic object image


def _sample_photo() -> str:
    """The path of matplotlib's Grace Hopper sample photo ("" when this matplotlib lacks it)."""
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    except ImportError:
        return ""
    return path if os.path.isfile(path) else ""


def write_examples(folder: str) -> List[str]:
    """Write the example images into `folder` (created) and return their paths.

    Args:
        folder: destination folder.
    """
    os.makedirs(folder, exist_ok=True)
    paths = []
    photo = _sample_photo()
    if photo:
        dst = os.path.join(folder, "grace_hopper.jpg")
        shutil.copyfile(photo, dst)
        paths.append(dst)
    else:
        logger.warning("matplotlib's sample photo grace_hopper.jpg is missing: that example is left out")
    image, _ = render_scene(SCENE_SEED, *SCENE_SIZES)
    dst = os.path.join(folder, "synthetic_scene.png")
    save_image_atomic(dst, image)
    paths.append(dst)
    image, _, _ = make_synthetic_object(OBJECT_SEED, 0, *OBJECT_SIZES)
    dst = os.path.join(folder, "synthetic_object.png")
    save_image_atomic(dst, image)
    paths.append(dst)
    return paths
