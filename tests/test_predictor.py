"""SemanticPredictor: weights, test-time resize and format as in the test data path, shapes, batches."""
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from PIL import Image

from rass.checkpoint import RASSCheckpointer
from rass.config import setup_cfg
from rass.data.dataset_mappers import SemanticDatasetMapper
from rass.engine import SemanticPredictor
from tests.conftest import REPO

CFG = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")


def save_tiny_checkpoint(folder: str):
    """Build the tiny RASS model, move every weight away from its initial value (so that a model
    that did not load the file differs), save it with RASSCheckpointer; returns (model, path)."""
    model = build_model(setup_cfg(CFG)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05 * (p.std() if p.numel() > 1 else 1.0))
    RASSCheckpointer(model, folder).save("tiny")
    return model, os.path.join(folder, "tiny.pth")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_checkpoint(str(tmp_path_factory.mktemp("weights")))


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (blocks of colour), uint8."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


@pytest.mark.parametrize("fmt", ["RGB", "BGR"])
def test_predictor_matches_model_through_test_mapper(tiny, tmp_path, fmt):
    model, weights = tiny
    cfg = setup_cfg(CFG, ["MODEL.WEIGHTS", weights, "INPUT.FORMAT", fmt])
    predictor = SemanticPredictor(cfg)
    assert predictor.model is not model
    image = _image(97, 131)
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    inp = SemanticDatasetMapper(cfg, is_train=False)({"file_name": str(path)})
    mine = predictor.preprocess(image)
    assert min(inp["image"].shape[-2:]) == cfg.INPUT.MIN_SIZE_TEST  # the test resize happened
    assert torch.equal(mine["image"], inp["image"])
    assert (mine["height"], mine["width"]) == (inp["height"], inp["width"]) == (97, 131)
    if fmt == "BGR":  # the channels reach the model swapped
        rgb = SemanticDatasetMapper(setup_cfg(CFG), is_train=False)({"file_name": str(path)})["image"]
        assert torch.equal(mine["image"], rgb.flip(0))
    with torch.no_grad():
        ref = model([inp])[0]["sem_seg"]
    out = predictor(image)
    assert out["sem_seg"].shape == (150, 97, 131)
    torch.testing.assert_close(out["sem_seg"], ref, rtol=0, atol=1e-5)
    assert out["sem_seg"].std(dim=(1, 2)).max() > 1e-3  # scores vary over the image: the comparison means something


@pytest.mark.parametrize("hw", [(97, 131), (131, 97), (33, 301), (7, 5)])
def test_output_size_equals_input_size_and_labels_are_argmax(tiny, hw):
    predictor = SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", tiny[1]]))
    out = predictor(_image(*hw, seed=hw[0]))
    assert out["sem_seg"].shape == (150, *hw) and out["sem_seg"].dtype == torch.float32
    assert out["labels"].shape == hw and out["labels"].dtype == torch.int64
    assert torch.equal(out["labels"], out["sem_seg"].argmax(dim=0))
    assert out["sem_seg"].device == torch.device("cpu") == predictor.device


def test_predict_batch_equals_single_images(tiny):
    # LATENT "mean": no posterior noise, so an image's result does not depend on its place in the batch
    predictor = SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", tiny[1], "MODEL.RASS.LATENT", "mean"]))
    a, b, c = _image(90, 120, 1), _image(90, 120, 2), _image(150, 70, 3)
    batch = predictor.predict_batch([a, b])
    for img, res in zip((a, b), batch):
        single = predictor(img)
        torch.testing.assert_close(res["sem_seg"], single["sem_seg"], rtol=0, atol=1e-4)
    mixed = predictor.predict_batch([a, c])  # different sizes: padded together, each at its own size
    assert [tuple(r["labels"].shape) for r in mixed] == [(90, 120), (150, 70)]
    assert predictor.predict_batch([]) == []


def test_weights_errors(tmp_path):
    missing = tmp_path / "nope" / "model.pth"
    with pytest.raises(FileNotFoundError, match=f"MODEL.WEIGHTS.*{missing}"):
        SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", str(missing)]))
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        SemanticPredictor(setup_cfg(CFG))


def test_bad_images_are_rejected_with_their_shape(tiny):
    predictor = SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", tiny[1]]))
    with pytest.raises(ValueError, match=r"H x W x 3 uint8 RGB array, got a float32 array of shape \(8, 8, 3\)"):
        predictor(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(8, 8\)"):
        predictor(np.zeros((8, 8), np.uint8))


def test_class_names_and_colours_come_from_the_first_test_dataset(tiny):
    from detectron2.data.datasets.builtin_meta import ADE20K_SEM_SEG_CATEGORIES

    predictor = SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", tiny[1]]))
    assert predictor.class_names == list(ADE20K_SEM_SEG_CATEGORIES) and len(predictor.colors) == 150
    bare = SemanticPredictor(setup_cfg(CFG, ["MODEL.WEIGHTS", tiny[1], "DATASETS.TEST", "()"]))
    assert bare.class_names[:2] == ["class 0", "class 1"] and bare.colors == predictor.colors
