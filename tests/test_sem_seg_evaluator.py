"""Semantic evaluation: per-class Boundary IoU against hand counts and the paper's literal
definition, the evaluator's accumulation / ignore handling, and a short evaluation log."""
import json
import logging
import os
import re
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from rass.config import setup_cfg
from rass.evaluation import (
    CheckedSemSegEvaluator,
    boundary_counts,
    boundary_width,
    format_class_table,
    format_results_table,
    label_boundary_band,
    mask_boundary_band,
)
from tests.conftest import REPO

IGNORE = 255


def _square_maps():
    """60 x 80 (H x W) image, diagonal 100 px, so d = round(0.02 * 100) = 2.
    GT: class 1 on the 20 x 20 square rows 20..39, cols 30..49; class 0 elsewhere.
    Prediction: the same square shifted right by one pixel (cols 31..50)."""
    gt = np.zeros((60, 80), np.int64)
    gt[20:40, 30:50] = 1
    pred = np.zeros_like(gt)
    pred[20:40, 31:51] = 1
    return gt, pred


# Hand counts for _square_maps (d = 2, Chebyshev neighbourhoods):
# class 1: band = square - its erosion = 20*20 - 16*16 = 144 pixels, in GT and in the prediction.
#   Overlap of the two 2-px rings: 4 full rows (20, 21, 38, 39) share cols 31..49 -> 4*19 = 76;
#   16 middle rows: GT ring cols {30,31,48,49}, pred ring {31,32,49,50} share {31,49} -> 16*2 = 32.
#   I = 108, U = 144 + 144 - 108 = 180, BoundaryIoU = 108/180 = 0.6.
# class 0: band = 2-px frame along the image border, 60*80 - 56*76 = 544, plus the 2-px ring
#   around the square, 24*24 - 20*20 = 176: 720 pixels, in GT and in the prediction.
#   The frames coincide (544). Rings: 4 rows (18, 19, 40, 41) with cols 28..51 vs 29..52 share
#   23 -> 92; 20 rows (20..39) with cols {28,29,50,51} vs {29,30,51,52} share {29,51} -> 40.
#   I = 544 + 92 + 40 = 676, U = 720 + 720 - 676 = 764, BoundaryIoU = 676/764.
SQUARE_COUNTS = {0: (676, 720, 720), 1: (108, 144, 144)}  # class: (intersection, gt band, pred band)


def _ignore_maps():
    """20 x 20 image (diagonal 28.3 px: d = round(0.566) = 1). GT: class 0 on cols 0..9, ignore on
    cols 10..19. Prediction: class 0 on cols 0..9, class 2 on cols 10..19 (all on ignored pixels)."""
    gt = np.zeros((20, 20), np.int64)
    gt[:, 10:] = IGNORE
    pred = np.zeros_like(gt)
    pred[:, 10:] = 2
    return gt, pred


# Hand counts for _ignore_maps (d = 1): class 0 is a 20 x 10 block; its erosion keeps rows 1..18,
# cols 1..8 (col 9 touches the ignored area, which is not class 0): 200 - 18*8 = 56 band pixels,
# the same in GT and prediction, so I = U = 56. Class 2 lies on ignored pixels only: not counted.
IGNORE_COUNTS = {0: (56, 56, 56)}


def _reference_band(mask: np.ndarray, d: int) -> np.ndarray:
    """The paper's definition, literally: mask - (3x3 erosion iterated d times), outside = 0."""
    m = mask.astype(bool)
    eroded = m.copy()
    for _ in range(d):
        p = np.pad(eroded, 1, constant_values=False)
        out = np.ones_like(eroded)
        for dy in range(3):
            for dx in range(3):
                out &= p[dy:dy + eroded.shape[0], dx:dx + eroded.shape[1]]
        eroded = out
    return m & ~eroded


def test_boundary_width_is_two_percent_of_the_diagonal():
    assert boundary_width(60, 80) == 2  # diagonal 100
    assert boundary_width(512, 683) == 17  # 0.02 * 853.6 = 17.07
    assert boundary_width(20, 20) == 1  # 0.566 rounds to 1
    assert boundary_width(1, 1) == 1  # never below one pixel
    assert boundary_width(600, 800, dilation_ratio=0.01) == 10
    with pytest.raises(ValueError, match="positive"):
        boundary_width(0, 5)


@pytest.mark.parametrize("maps, counts", [(_square_maps, SQUARE_COUNTS), (_ignore_maps, IGNORE_COUNTS)])
def test_boundary_counts_equal_hand_counts(maps, counts):
    gt, pred = maps()
    inter, b_gt, b_pred = boundary_counts(gt, pred, num_classes=3, ignore_label=IGNORE)
    expect = np.zeros((3, 3), np.int64)
    for c, v in counts.items():
        expect[:, c] = v
    np.testing.assert_array_equal(np.stack([inter, b_gt, b_pred]), expect)


def test_square_bands_by_class_match_the_hand_counts_and_the_literal_definition():
    gt, _ = _square_maps()
    band = label_boundary_band(gt, 2)
    assert int((band & (gt == 1)).sum()) == 144 and int((band & (gt == 0)).sum()) == 720
    for c in (0, 1):
        np.testing.assert_array_equal(mask_boundary_band(gt == c, 2), _reference_band(gt == c, 2))


@pytest.mark.parametrize("shape, d, seed", [((31, 47), 1, 0), ((40, 33), 2, 1), ((64, 64), 3, 2), ((9, 70), 5, 3)])
def test_label_band_equals_per_class_erosion_on_random_maps(shape, d, seed):
    g = np.random.default_rng(seed)
    small = g.integers(0, 5, (shape[0] // 4 + 1, shape[1] // 4 + 1))
    label = np.kron(small, np.ones((4, 4), np.int64))[: shape[0], : shape[1]]  # blobs, not noise
    label[g.random(shape) < 0.02] = IGNORE
    band = label_boundary_band(label, d)
    for c in np.unique(label):
        ref = _reference_band(label == c, d)
        np.testing.assert_array_equal(band & (label == c), ref, err_msg=f"class {c}")
        np.testing.assert_array_equal(mask_boundary_band(label == c, d), ref, err_msg=f"class {c}")


def test_boundary_counts_reject_bad_input():
    gt, pred = _square_maps()
    with pytest.raises(ValueError, match="one size"):
        boundary_counts(gt, pred[:-1], 3, IGNORE)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        boundary_counts(gt, pred + 1, 2, IGNORE)


MAPS = (_square_maps, _ignore_maps)
CLASSES = ["floor", "box", "sky"]


def _write_dataset(folder) -> list:
    """Label PNGs of the two hand-made maps; the records (the images are never read: the evaluator
    gets the predictions directly)."""
    records = []
    for i, maps in enumerate(MAPS):
        path = os.path.join(str(folder), f"gt_{i}.png")
        if not os.path.exists(path):
            Image.fromarray(maps()[0].astype(np.uint8)).save(path)
        records.append({"file_name": f"img_{i}.jpg", "sem_seg_file_name": path})
    return records


def _register(name: str, records: list) -> None:
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(stuff_classes=CLASSES, ignore_label=IGNORE)


@pytest.fixture
def two_image_dataset(tmp_path):
    """A registered 3-class dataset of the two hand-made maps, and their predictions."""
    name = f"test_boundary_{uuid.uuid4().hex[:8]}"
    records = _write_dataset(tmp_path)
    _register(name, records)
    yield name, records, [m()[1] for m in MAPS]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _one_hot_scores(pred: np.ndarray, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.from_numpy(pred), k).permute(2, 0, 1).float()


def test_evaluator_accumulates_boundary_iou_over_the_dataset(two_image_dataset, tmp_path, caplog):
    name, records, preds = two_image_dataset
    ev = CheckedSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "inference"))
    ev.reset()
    for rec, pred in zip(records, preds):
        ev.process([{"file_name": rec["file_name"]}], [{"sem_seg": _one_hot_scores(pred, 3)}])
    with caplog.at_level(logging.INFO):
        res = ev.evaluate()["sem_seg"]
    # floor: image 1 gives I 676 / U 764, image 2 gives I 56 / U 56 -> 732 / 820 over the dataset
    assert res["BoundaryIoU-floor"] == pytest.approx(100 * 732 / 820)
    assert res["BoundaryIoU-box"] == pytest.approx(100 * 108 / 180)
    assert "BoundaryIoU-sky" not in res  # predicted on ignored pixels only: absent from both
    assert res["mBoundaryIoU"] == pytest.approx(100 * (732 / 820 + 0.6) / 2)
    # region metrics are detectron2's: box GT 400 px, pred 400 px, overlap 380 -> IoU 380/420
    assert res["IoU-box"] == pytest.approx(100 * 380 / 420)
    assert res["ACC-box"] == pytest.approx(100 * 380 / 400)
    assert np.isnan(res["IoU-sky"])  # not in the ground truth: NaN in the dict (null in the JSON)
    assert not any(k.startswith("min(IoU") for k in res)
    saved = torch.load(tmp_path / "inference" / "sem_seg_evaluation.pth", weights_only=True)
    assert saved["mBoundaryIoU"] == pytest.approx(res["mBoundaryIoU"])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "| floor" in text and "| box" in text and "| sky" not in text
    assert "nan" not in text.lower() and max(map(len, text.splitlines())) < 120
    assert "sem_seg" not in text  # detectron2's whole-dict line was dropped


def test_boundary_counts_are_gathered_across_processes(two_image_dataset, monkeypatch):
    """Two ranks, one image each, without processes: rank 1's evaluate() runs first and records
    what it hands to all_gather; rank 0's all_gather then returns [own, rank 1's] call by call,
    as torch.distributed would (both ranks make the same calls in the same order)."""
    import detectron2.evaluation.sem_seg_evaluation as d2_sem_seg
    import rass.evaluation.sem_seg as rass_sem_seg

    name, records, preds = two_image_dataset
    evs = []
    for rec, pred in zip(records, preds):
        ev = CheckedSemSegEvaluator(name, distributed=True)
        ev.reset()
        ev.process([{"file_name": rec["file_name"]}], [{"sem_seg": _one_hot_scores(pred, 3)}])
        evs.append(ev)
    sent = []

    def gather_as_rank1(obj):
        sent.append(obj)
        return [obj]

    replies = iter(sent)
    for mod in (d2_sem_seg, rass_sem_seg):
        monkeypatch.setattr(mod, "synchronize", lambda: None)
        monkeypatch.setattr(mod, "all_gather", gather_as_rank1)
    monkeypatch.setattr(d2_sem_seg, "is_main_process", lambda: False)
    assert evs[1].evaluate() is None
    assert len(sent) >= 2  # the boundary counts and detectron2's confusion matrix at least
    for mod in (d2_sem_seg, rass_sem_seg):
        monkeypatch.setattr(mod, "all_gather", lambda obj: [obj, next(replies)])
    monkeypatch.setattr(d2_sem_seg, "is_main_process", lambda: True)
    res = evs[0].evaluate()["sem_seg"]
    assert res["BoundaryIoU-floor"] == pytest.approx(100 * 732 / 820)  # both images' counts
    assert res["BoundaryIoU-box"] == pytest.approx(100 * 108 / 180)
    assert res["mBoundaryIoU"] == pytest.approx(100 * (732 / 820 + 0.6) / 2)
    assert "BoundaryIoU-sky" not in res
    assert res["IoU-box"] == pytest.approx(100 * 380 / 420)  # detectron2's gathered matrix too


def test_tables_never_print_nan():
    res = {"d": {"sem_seg": {"mIoU": 50.0, "fwIoU": 60.0, "mACC": float("nan"), "pACC": 70.0}}}
    table = format_results_table(res)
    assert "nan" not in table.lower()
    row = table.splitlines()[-1].split("|")[1:-1]
    assert [c.strip() for c in row] == ["d", "50.00", "60.00", "–", "70.00", "–"]
    cls = format_class_table({"IoU-a": float("nan"), "ACC-a": float("nan"), "BoundaryIoU-a": 0.0}, ["a"])
    assert [c.strip() for c in cls.splitlines()[2].split("|")[1:-1]] == ["a", "–", "–", "0.00"]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.extend(self.format(record).splitlines())


def test_evaluation_log_is_short_and_has_the_tables(synthetic_env, tmp_path):
    from rass.engine import Trainer

    fast = ["DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TEST", "128", "OUTPUT_DIR", str(tmp_path),
            "TEST.NUM_VIS", "0"]
    cfg = setup_cfg(os.path.join(REPO, "configs/quickstart/tiny_semantic_fpn.yaml"), fast)
    torch.manual_seed(0)
    model = Trainer.build_model(cfg).eval()
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("", "rass", "detectron2")]
    old = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    try:
        results = Trainer.test(cfg, model)
    finally:
        for lg, (level, prop) in zip(loggers, old):
            lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = prop
    lines = handler.lines
    assert max(map(len, lines)) <= 300, max(lines, key=len)[:400]
    assert sum(map(len, lines)) < 20_000
    assert not any(re.search(r"\bnan\b", ln, re.IGNORECASE) for ln in lines)
    head = next(i for i, ln in enumerate(lines) if ln.startswith("| dataset"))
    assert [c.strip() for c in lines[head].split("|")[1:-1]] == ["dataset", "mIoU", "fwIoU", "mACC", "pACC", "mBoundaryIoU"]
    m = results["synthetic_sem_seg_val"]["sem_seg"]
    assert lines[head + 2].split("|")[2].strip() == f"{m['mIoU']:.2f}"
    assert lines[head + 2].split("|")[6].strip() == f"{m['mBoundaryIoU']:.2f}"
    names = MetadataCatalog.get("synthetic_sem_seg_val").stuff_classes
    per_class = [ln for ln in lines if ln.startswith("| ") and ln.split("|")[1].strip() in names]
    present = [n for n in names if f"BoundaryIoU-{n}" in m]
    assert 0 < len(per_class) < len(names)
    assert sorted(ln.split("|")[1].strip() for ln in per_class) == sorted(present)  # the classes present
    # the full dict is in the JSON: 150 IoU and Acc entries (null where absent), boundary where present
    saved = json.load(open(tmp_path / "eval_results.json"))["synthetic_sem_seg_val"]["sem_seg"]
    assert sum(k.startswith("IoU-") for k in saved) == len(names) == sum(k.startswith("ACC-") for k in saved)
    assert sorted(k for k in saved if k.startswith("BoundaryIoU-")) == sorted(f"BoundaryIoU-{n}" for n in present)


# --- the evaluator's fast paths against straightforward references -------------------------------
from tests import sem_seg_cases  # noqa: E402


def _reference_boundary_counts(gt, pred, num_classes, ignore, dilation_ratio=0.02):
    """Per class, literally: the bands of ``gt == c`` and ``pred == c`` (`_reference_band`),
    counted on the pixels whose ground truth is a class."""
    d = boundary_width(*gt.shape, dilation_ratio=dilation_ratio)
    valid = (gt != ignore) & (gt >= 0) & (gt < num_classes)
    out = np.zeros((3, num_classes), np.int64)
    for c in range(num_classes):
        band_gt = _reference_band(gt == c, d) & valid
        band_pred = _reference_band(pred == c, d) & valid
        out[:, c] = (band_gt & band_pred).sum(), band_gt.sum(), band_pred.sum()
    return out


@pytest.mark.parametrize("index", range(len(sem_seg_cases.SHAPES)))
@pytest.mark.parametrize("ratio", [0.02, 0.05])
def test_boundary_counts_equal_the_per_class_reference(index, ratio):
    _, gt, scores = sem_seg_cases.cases()[index]
    pred = scores.argmax(0).numpy()
    k = sem_seg_cases.NUM_CLASSES
    fast = np.stack(boundary_counts(gt, pred, k, IGNORE, dilation_ratio=ratio))
    np.testing.assert_array_equal(fast, _reference_boundary_counts(gt, pred, k, IGNORE, ratio))
    # the same counts whatever integer type holds the labels (uint8 / uint16 / float32 morphology)
    np.testing.assert_array_equal(np.stack(boundary_counts(gt + 300, pred + 300, k + 300, IGNORE + 300, ratio))[:, 300:],
                                  fast)
    np.testing.assert_array_equal(np.stack(boundary_counts(gt + 70_000, pred + 70_000, k + 70_000, IGNORE + 70_000,
                                                           ratio))[:, 70_000:], fast)


def test_argmax_labels_is_torch_argmax_with_ties_and_infinities():
    from rass.evaluation import argmax_labels

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (9, 40, 50), generator=g).float()  # ties everywhere
    scores[4, :5] = float("inf")
    scores[:, 5:10] = float("-inf")  # every class -inf: class 0
    scores[7, 10:12] = float("inf")
    got = argmax_labels(scores)
    assert got.dtype == np.int64 and got.shape == (40, 50)
    np.testing.assert_array_equal(got, scores.argmax(0).numpy())
    assert (got[5:10] == 0).all() and (got[:5] == 4).all() and (got[10:12] == 7).all()
    scores[2, 20, 20] = float("nan")  # torch's rule for NaN (the NaN's class) is kept
    np.testing.assert_array_equal(argmax_labels(scores), scores.argmax(0).numpy())
    assert argmax_labels(scores)[20, 20] == 2
    many = torch.randint(0, 4, (300, 6, 7), generator=g).double()  # more classes than uint8 holds, float64
    many[299, 0, 0] = 9
    np.testing.assert_array_equal(argmax_labels(many), many.argmax(0).numpy())
    assert argmax_labels(many)[0, 0] == 299
    for strided in (scores.permute(1, 2, 0).contiguous().permute(2, 0, 1), scores.transpose(1, 2)):  # any layout
        assert not strided.is_contiguous()
        np.testing.assert_array_equal(argmax_labels(strided), strided.argmax(0).numpy())
    half = scores[:, :4].half()  # a type numpy's path does not take: torch's argmax
    np.testing.assert_array_equal(argmax_labels(half), half.argmax(0).numpy())


def test_label_rles_equal_pycocotools_per_class():
    import pycocotools.mask as mask_util

    from rass.evaluation.rle import label_rles

    maps = [gt for _, gt, _ in sem_seg_cases.cases()] + [np.full((4, 6), 3), np.arange(12).reshape(3, 4)]
    for label in maps:
        classes, rles = label_rles(label)
        np.testing.assert_array_equal(classes, np.unique(label))
        for c, rle in zip(classes, rles):
            assert rle == mask_util.encode(np.asfortranarray((label == c).astype(np.uint8)[:, :, None]))[0]


@pytest.fixture
def generated_dataset(tmp_path):
    name = f"test_sem_seg_cases_{uuid.uuid4().hex[:8]}"
    sem_seg_cases.register(name, sem_seg_cases.write_labels(str(tmp_path)))
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_evaluator_equals_detectron2_and_the_boundary_reference(generated_dataset, tmp_path):
    """Region metrics, confusion matrix and sem_seg_predictions.json as detectron2's own
    SemSegEvaluator computes them; boundary counts as the per-class reference."""
    from detectron2.evaluation import SemSegEvaluator

    ours = CheckedSemSegEvaluator(generated_dataset, distributed=False, output_dir=str(tmp_path / "ours"))
    ref = SemSegEvaluator(generated_dataset, distributed=False, output_dir=str(tmp_path / "d2"),
                          sem_seg_loading_fn=lambda path, dtype: np.array(Image.open(path), dtype=dtype))  # numpy 2
    ref._compute_boundary_iou = False  # its own label-map boundary IoU is another metric
    k = sem_seg_cases.NUM_CLASSES
    expect = np.zeros((3, k), np.int64)
    for ev in (ours, ref):
        ev.reset()
    for name, gt, scores in sem_seg_cases.cases():
        for ev in (ours, ref):
            ev.process([{"file_name": name}], [{"sem_seg": scores}])
        expect += _reference_boundary_counts(gt, scores.argmax(0).numpy(), k, IGNORE)
    np.testing.assert_array_equal(ours._conf_matrix, ref._conf_matrix)
    np.testing.assert_array_equal(np.stack([ours._b_inter, ours._b_gt, ours._b_pred]), expect)
    res, res_ref = ours.evaluate()["sem_seg"], ref.evaluate()["sem_seg"]
    common = [key for key in res_ref if key in res]
    assert len(common) == 4 + 2 * k
    assert [res[key] for key in common] == [res_ref[key] for key in common]  # exactly (no NaN here)
    union = expect[1] + expect[2] - expect[0]
    assert [res[f"BoundaryIoU-{c}"] for c in sem_seg_cases.CLASSES] == list(100 * (expect[0] / union))
    assert (tmp_path / "ours" / "sem_seg_predictions.json").read_bytes() == \
        (tmp_path / "d2" / "sem_seg_predictions.json").read_bytes()


def test_evaluator_refuses_bad_labels_sizes_and_class_counts_by_name(two_image_dataset):
    from rass.utils.errors import UserError

    name, records, preds = two_image_dataset
    ev = CheckedSemSegEvaluator(name, distributed=False)
    ev.reset()
    first = {"file_name": records[0]["file_name"]}
    with pytest.raises(UserError) as e:  # a prediction of another size than the annotation
        ev.process([first], [{"sem_seg": _one_hot_scores(preds[0][:, :-1], 3)}])
    assert e.value.message == (f"Annotation {records[0]['sem_seg_file_name']} has size 80x60 (WxH) but image "
                               "img_0.jpg gives a prediction of size 79x60 (WxH, the image's size)")
    with pytest.raises(UserError, match=r"^The model gives 4 class scores for img_0\.jpg but test_boundary_\w+ "
                                        r"has 3 classes\n  hint: MODEL\.SEM_SEG_HEAD\.NUM_CLASSES must match"):
        ev.process([first], [{"sem_seg": _one_hot_scores(preds[0], 4)}])
    bad = preds[0].copy()
    bad[0, :3] = [7, 9, 7]
    Image.fromarray(bad.astype(np.uint8)).save(records[0]["sem_seg_file_name"])
    with pytest.raises(UserError) as e:  # a label value that is no class and not the ignore label
        ev.process([first], [{"sem_seg": _one_hot_scores(preds[0], 3)}])
    assert e.value.message.startswith(f"Label file {records[0]['sem_seg_file_name']} has values [7, 9] outside 0..2 "
                                      "and 255")
    assert not ev._conf_matrix.any() and not ev._b_gt.any()  # nothing was counted
