"""Prediction overlays: input | ground truth | prediction, side by side, as PNG files."""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from rass.data.dataset_mappers.io import load_label, read_image_checked
from rass.utils.io import save_image_atomic


def colorize(label: np.ndarray, colors: List[List[int]], ignore_label: int = 255) -> np.ndarray:
    """Map an H x W label map to an RGB image (ignored pixels black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    lut[ignore_label] = 0
    return lut[np.clip(label, 0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, label: np.ndarray, colors: List[List[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an RGB uint8 image."""
    col = colorize(label, colors).astype(np.float32)
    return np.clip(image.astype(np.float32) * (1 - alpha) + col * alpha, 0, 255).astype(np.uint8)


@torch.no_grad()
def write_overlays(model: torch.nn.Module, mapper, dataset_name: str, out_dir: str, num: int) -> List[str]:
    """Run `model` on the first `num` images of a dataset and write overlay PNGs.

    Args:
        model: a detectron2 semantic-segmentation model (eval mode is set here and restored).
        mapper: the test dataset mapper (dataset dict -> model input).
        dataset_name: registered dataset.
        out_dir: output folder.
        num: number of images.

    Returns:
        the written file paths.
    """
    meta = MetadataCatalog.get(dataset_name)
    colors = meta.get("stuff_colors")
    dicts = DatasetCatalog.get(dataset_name)[:num]
    was_training = model.training
    model.eval()
    paths = []
    try:
        for d in dicts:
            inp = mapper(dict(d))
            pred = model([inp])[0]["sem_seg"].argmax(0).cpu().numpy()
            image = read_image_checked(d["file_name"], "RGB")
            gt = load_label(d["sem_seg_file_name"])
            panel = np.concatenate([image, overlay(image, gt, colors), overlay(image, pred, colors)], axis=1)
            path = os.path.join(out_dir, os.path.splitext(os.path.basename(d["file_name"]))[0] + ".png")
            save_image_atomic(path, panel)
            paths.append(path)
    finally:
        model.train(was_training)
    return paths
