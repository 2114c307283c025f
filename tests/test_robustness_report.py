"""The robustness report's plot: the tables' unit, every line visible when models coincide, labelled axes."""
from collections import namedtuple

import numpy as np
import pytest

from rass.evaluation.robustness_report import build_report, format_markdown, metric_unit, plot_figure, plot_png

Item = namedtuple("Item", "level dataset preset root")
ITEMS = [Item("clean", "set_clear", None, "r"), Item("lqseg_1", "set", "lqseg_1", "r"),
         Item("lqseg_3", "set", "lqseg_3", "r")]
IMAGES = {"clean": 4, "lqseg_1": 4, "lqseg_3": 4}


def _promptable(iou):
    return {"promptable": {"IoU": iou, "Dice": iou + 0.05, "BoundaryIoU": iou / 2, "PixelAcc": 0.9}}


@pytest.fixture(scope="module")
def compared():
    """GleSAM and plain SAM with the same IoU on every level (the coinciding case)."""
    main = {lv: _promptable(v) for lv, v in zip(IMAGES, (0.8, 0.7, 0.5))}
    sam = {lv: _promptable(v) for lv, v in zip(IMAGES, (0.8, 0.7, 0.5))}
    return build_report(ITEMS, main, IMAGES, {"model": "GleSAM"}, compare={"SAM": sam})


def test_promptable_plot_uses_the_tables_fractions_and_labels_its_axes(compared):
    assert metric_unit(compared) == "fraction 0..1"
    assert "fractions 0..1" in format_markdown(compared)
    ax = plot_figure(compared).axes[0]
    assert ax.get_ylabel() == "IoU (fraction 0..1)"
    assert ax.get_xlabel() == "degradation level (preset)"
    assert ax.get_ylim()[1] <= 1.05  # fractions, not %
    data = {ln.get_label(): ln.get_ydata() for ln in ax.get_lines()}
    np.testing.assert_allclose(data["GleSAM"], [0.8, 0.7, 0.5])
    np.testing.assert_allclose(data["SAM"], [0.8, 0.7, 0.5])
    texts = [t.get_text() for t in ax.texts]
    assert "0.800" in texts and "80.0" not in texts


def test_coinciding_lines_stay_visible(compared):
    ax = plot_figure(compared).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    sam, main = lines["SAM"], lines["GleSAM"]
    assert sam.get_marker() != main.get_marker()
    assert sam.get_linestyle() != main.get_linestyle()
    dx = np.asarray(main.get_xdata()) - np.asarray(sam.get_xdata())
    assert np.all(dx > 0.02)  # side by side, not on top of each other
    assert np.all(np.abs(dx) < 0.25)  # still over their level's tick
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SAM", "GleSAM"]


def test_semantic_plot_is_in_percent_with_the_reference_line():
    res = {lv: {"sem_seg": {"mIoU": v, "fwIoU": v, "mACC": v, "pACC": v}} for lv, v in zip(IMAGES, (64.75, 60.0, 50.0))}
    report = build_report(ITEMS, res, IMAGES, {"model": "RASS"})
    assert metric_unit(report) == "%"
    ax = plot_figure(report).axes[0]
    assert ax.get_ylabel() == "mIoU (%)"
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), [64.75, 60.0, 50.0])
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 1, 2])  # one model: no offset
    assert lines[1].get_ydata()[0] == pytest.approx(64.75)  # the clean reference line
    assert "64.8" in [t.get_text() for t in ax.texts]
    assert plot_png(report)[:8] == b"\x89PNG\r\n\x1a\n"
