"""rass.evaluation.visualize: numbers for people, nearest-neighbour enlargement, titled panels, the
legend of the classes present, and the evaluation's input | ground truth | prediction pictures."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rass.evaluation.visualize import (
    MIN_PANEL, display_factor, enlarge, format_score, legend_strip, overlay, scale_prompt, semantic_panels, titled,
    write_overlays)

NAMES = ["wall, brick", "sky", "tree"]
COLORS = [[200, 30, 30], [30, 200, 30], [30, 30, 200]]


def test_scores_sizes_and_enlargement():
    assert [format_score(v) for v in (-0.004, 0.0, 0.8749, 0.875, 1.02)] == ["0.00", "0.00", "0.87", "0.88", "1.00"]
    assert [display_factor(16, 16), display_factor(16, 100), display_factor(200, 100), display_factor(300, 9)] == \
        [MIN_PANEL // 16, MIN_PANEL // 100, 1, 1]
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    big = enlarge(a, 3)
    assert big.shape == (6, 9) and (big[3:6, 6:9] == 5).all() and (big[0:3, 0:3] == 0).all()
    assert enlarge(a, 1) is a
    p = scale_prompt({"points": [[0, 0], [2, 1]], "labels": [1, 0], "box": [0, 0, 2, 1]}, 4)
    assert p == {"points": [[1.5, 1.5], [9.5, 5.5]], "labels": [1, 0], "box": [1.5, 1.5, 9.5, 5.5]}  # pixel centres


def test_titles_sit_above_the_panel_and_panels_stay_aligned():
    panel = np.full((40, 200, 3), 77, np.uint8)
    one, two = titled(panel, "prediction"), titled(panel, "ground truth", "darkened: not annotated")
    assert one.shape == two.shape and one.shape[0] > 40  # the same bar height with one or two lines
    np.testing.assert_array_equal(one[-40:], panel)
    bar = one[:-40]
    assert (bar < 128).any() and (bar == 255).mean() > 0.8  # black text on white
    assert not np.array_equal(one, titled(panel, "input"))
    narrow = titled(np.zeros((10, 30, 3), np.uint8), "a very long title that cannot fit")
    assert narrow.shape[1] == 30  # cut to the panel's width


def test_legend_lists_each_class_colour_and_wraps():
    strip = legend_strip([("wall", COLORS[0]), ("sky", COLORS[1])], 300)
    colours = {tuple(c) for c in strip.reshape(-1, 3)}
    assert tuple(COLORS[0]) in colours and tuple(COLORS[1]) in colours and tuple(COLORS[2]) not in colours
    many = legend_strip([(f"class number {i}", COLORS[i % 3]) for i in range(12)], 300)
    assert many.shape[1] == 300 and many.shape[0] > 2 * strip.shape[0]  # wrapped onto more rows


def test_semantic_panels_titles_and_legend_of_the_classes_present():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    gt = np.zeros((20, 30), np.int64)
    gt[:, 15:] = 1
    gt[:2] = 255  # not annotated
    pred = np.ones((20, 30), np.int64)
    out = semantic_panels(image, gt, pred, NAMES, COLORS)
    k = display_factor(20, 30)
    assert out.shape[1] == 3 * 30 * k + 2 * 4
    grid_h = titled(enlarge(image, k), "input", "x").shape[0]
    np.testing.assert_array_equal(out[grid_h - 20 * k:grid_h, :30 * k], enlarge(image, k))
    pred_panel = out[grid_h - 20 * k:grid_h, 2 * (30 * k + 4):]
    np.testing.assert_array_equal(pred_panel, enlarge(overlay(image, pred, COLORS), k))
    legend = {tuple(c) for c in out[grid_h:].reshape(-1, 3)}
    assert tuple(COLORS[0]) in legend and tuple(COLORS[1]) in legend  # wall (GT) and sky (both)
    assert tuple(COLORS[2]) not in legend  # tree is nowhere
    no_gt = semantic_panels(image, None, pred, NAMES, COLORS)
    assert no_gt.shape[1] == 2 * 30 * k + 4


@pytest.fixture
def toy_dataset(tmp_path):
    rng = np.random.default_rng(2)
    dicts = []
    for i in range(3):
        image = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
        label = np.full((24, 32), 2, np.uint8)
        label[:, :10] = 0
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
        Image.fromarray(label).save(tmp_path / f"im{i}_gt.png")
        dicts.append({"file_name": str(tmp_path / f"im{i}.png"), "sem_seg_file_name": str(tmp_path / f"im{i}_gt.png"),
                      "height": 24, "width": 32})
    name = "test_visualize_toy"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(stuff_classes=NAMES, stuff_colors=COLORS, ignore_label=255)
    yield name, dicts
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


class _SkyEverywhere(torch.nn.Module):
    """A stand-in semantic model: class 1 wherever the red channel is above 127, else class 2."""

    def forward(self, batch):
        out = []
        for x in batch:
            red = x["image"][0].float() > 127
            logits = torch.stack([torch.zeros_like(red, dtype=torch.float32), red.float(), (~red).float() * 0.5])
            out.append({"sem_seg": logits})
        return out


def test_write_overlays_writes_titled_panels_with_a_legend(toy_dataset, tmp_path):
    name, dicts = toy_dataset
    def mapper(d):
        return {"image": torch.from_numpy(np.asarray(Image.open(d["file_name"])).transpose(2, 0, 1).copy())}

    model = _SkyEverywhere().train()
    paths = write_overlays(model, mapper, name, str(tmp_path / "vis"), 2)
    assert model.training  # restored
    assert [os.path.basename(p) for p in paths] == ["im0.png", "im1.png"]
    written = np.asarray(Image.open(paths[1]).convert("RGB"))
    image = np.asarray(Image.open(dicts[1]["file_name"]))
    gt = np.asarray(Image.open(dicts[1]["sem_seg_file_name"]))
    pred = np.where(image[..., 0] > 127, 1, 2)
    np.testing.assert_array_equal(written, semantic_panels(image, gt, pred, NAMES, COLORS))
