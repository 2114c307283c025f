"""The quickstart's tiny promptable SAM (configs/quickstart/tiny_promptable.yaml) learns masks that follow the object.

Trains it briefly with train_net.py on a small generated one-object set (as tools/quickstart.py makes it; fewer
iterations), then compares it with the same model untrained through `PromptablePredictor` (the browser page's path).
Also: the generator's optional distractor objects (`make_synthetic_object(..., distractors=N)`).
"""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from rass.config import setup_cfg
from rass.data.synthetic_masks import make_synthetic_lqseg, make_synthetic_object
from rass.engine.promptable_predictor import PromptablePredictor
from tests.conftest import REPO

CONFIG = os.path.join(REPO, "configs/quickstart/tiny_promptable.yaml")
HELD_OUT = range(12)  # test-split objects: drawn apart from the training stream


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """model_final.pth of a short training run (train_net.py, as the quickstart runs it)."""
    tmp = tmp_path_factory.mktemp("promptable")
    root = str(tmp / "lqseg")
    make_synthetic_lqseg(root, seed=0, num_images=2, levels=(3,), min_size=96, max_size=192, num_train=48)
    # one thread: on a shared, busy machine two spinning OpenMP threads make a tiny model's iterations 10x slower
    env = dict(os.environ, PYTHONWARNINGS="ignore", RASS_LQSEG_SYNTHETIC_ROOT=root, OMP_NUM_THREADS="1")
    out = tmp / "out"
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG, "OUTPUT_DIR", str(out),
           "SOLVER.MAX_ITER", "60", "DATASETS.TEST", "()"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp), timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return str(out / "model_final.pth")


def _predictor(weights: str) -> PromptablePredictor:
    return PromptablePredictor(setup_cfg(CONFIG, ["MODEL.WEIGHTS", weights]))


def _click(mask: np.ndarray) -> list:
    """The object pixel nearest to the object's centroid (x, y)."""
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return [float(xs[i]), float(ys[i])]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _object(i: int):
    return make_synthetic_object(0, i, 96, 192, split="test")


def _mean_iou(pred: PromptablePredictor) -> float:
    ious = []
    for i in HELD_OUT:
        image, mask, _ = _object(i)
        out = pred(image, points=[_click(mask > 0)], labels=[1])
        ious.append(_iou(out["masks"].numpy(), mask > 0))
    return float(np.mean(ious))


def test_trained_masks_follow_the_object_far_better_than_the_random_model(trained):
    random_iou, trained_iou = _mean_iou(_predictor("")), _mean_iou(_predictor(trained))
    assert random_iou < 0.2, random_iou
    assert trained_iou > random_iou + 0.25, (random_iou, trained_iou)


def test_other_images_give_other_masks(trained):
    pred = _predictor(trained)
    (a, ma, _), (b, mb, _) = _object(0), _object(1)
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    a, ma, b, mb = a[:h, :w], ma[:h, :w] > 0, b[:h, :w], mb[:h, :w] > 0
    click = _click(ma)
    on_a, on_b = pred(a, points=[click])["masks"].numpy(), pred(b, points=[click])["masks"].numpy()
    assert _iou(on_a, on_b) < 0.7  # same click, another image: another mask
    assert _iou(on_a, ma) > _iou(on_a, mb) and _iou(on_b, mb) > _iou(on_b, ma)  # each image's own object


def test_distractors_are_painted_outside_the_object():
    for i in range(4):
        plain, mask, shape = make_synthetic_object(0, i, 96, 192, split="train")
        busy, mask2, shape2 = make_synthetic_object(0, i, 96, 192, split="train", distractors=2)
        assert shape2 == shape and np.array_equal(mask2, mask)  # same object, same mask
        changed = (busy != plain).any(2)
        assert changed.sum() > 0.01 * changed.size and not (changed & (mask > 0)).any()
        n, _ = cv2.connectedComponents(changed.astype(np.uint8))
        assert n == 3  # background + the two other objects
