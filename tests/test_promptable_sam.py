"""The promptable meta-architecture ("PromptableSAM"): SAM and GleSAM through one model (tiny, CPU)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model

import rass  # noqa: F401  (registers PromptableSAM)
from rass.config import setup_cfg
from rass.modeling.sam import sam_image_embeddings, sam_predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_GLESAM = os.path.join(ROOT, "configs", "lqseg", "tiny_glesam.yaml")
TINY_SAM = os.path.join(ROOT, "configs", "lqseg", "tiny_sam.yaml")
POINTS = torch.tensor([[[30.0, 40.0], [50.0, 60.0], [70.0, 70.0]]])


def _model(config, *opts):
    torch.manual_seed(0)
    return build_model(setup_cfg(config, list(opts))).eval()


@pytest.fixture(scope="module")
def sam():
    return _model(TINY_SAM)


@pytest.fixture(scope="module")
def glesam(sam):
    model = _model(TINY_GLESAM)
    model.sam.load_state_dict(sam.sam.state_dict())  # same SAM: only the enhancement differs
    return model


def _image(h=128, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def test_outputs_at_the_requested_size_for_points_boxes_and_both(glesam):
    model = glesam
    assert model.enhancer is not None
    inputs = [
        {"image": _image(), "point_coords": POINTS, "point_labels": torch.ones(1, 3, dtype=torch.long),
         "height": 300, "width": 200},
        {"image": _image(100, 140, 1), "boxes": torch.tensor([[10.0, 10.0, 90.0, 90.0]])},
        {"image": _image(seed=2), "boxes": torch.tensor([[10.0, 10.0, 90.0, 90.0]]),
         "point_coords": POINTS[:, :1], "point_labels": torch.ones(1, 1, dtype=torch.long)},
    ]
    outs = model(inputs)
    assert [tuple(o["mask_logits"].shape) for o in outs] == [(1, 300, 200), (1, 100, 140), (1, 128, 128)]
    for o in outs:
        assert o["masks"].dtype == torch.bool and tuple(o["iou_pred"].shape) == (1,)
        torch.testing.assert_close(o["masks"], o["mask_logits"] > 0)


def test_plain_sam_equals_sam_itself_and_square_inputs_resize_straight_to_the_mask_size(sam):
    model = sam
    assert model.enhancer is None
    image = _image()
    out = model([{"image": image, "point_coords": POINTS, "point_labels": torch.ones(1, 3, dtype=torch.long),
                  "height": 90, "width": 120}])[0]
    # by hand: SAM's preprocessing, encoder, decoder; logits resized straight to 90 x 120 (GleSAM's evaluation)
    pixels, valid = model.transform(image)
    assert valid == (256, 256)
    with torch.no_grad():
        z = sam_image_embeddings(model.sam, pixels)
        low, iou = sam_predict(model.sam, z, POINTS[None] * 2, torch.ones(1, 1, 3, dtype=torch.long))
    want = F.interpolate(low[0], size=(90, 120), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(out["mask_logits"], want)
    torch.testing.assert_close(out["iou_pred"], iou[0, :, 0])


def test_padded_inputs_use_sams_postprocessing_and_glesam_changes_the_embedding(sam, glesam):
    image = _image(100, 140)
    inp = {"image": image, "point_coords": POINTS[:, :1], "point_labels": torch.ones(1, 1, dtype=torch.long)}
    a, b = sam([inp])[0], glesam([inp])[0]
    assert a["mask_logits"].shape == b["mask_logits"].shape == (1, 100, 140)
    assert (a["mask_logits"] - b["mask_logits"]).abs().max() > 1e-4
    z_sam, valid = sam.image_embeddings([image])
    assert valid == [(183, 256)]  # SAM's rounding: int(100 * 256 / 140 + 0.5)
    with torch.no_grad():
        low, _ = sam_predict(sam.sam, z_sam, sam.transform.apply_coords(POINTS[:, :1], (100, 140))[None],
                             torch.ones(1, 1, 1, dtype=torch.long))
    want = sam.transform.postprocess_masks(low[0, :, 0], (183, 256), (100, 140))
    torch.testing.assert_close(a["mask_logits"], want)


def test_multimask_output_returns_the_best_scored_mask_and_bad_prompts_are_named():
    model = _model(TINY_SAM, "MODEL.SAM.MULTIMASK_OUTPUT", "True")
    assert model.multimask_output
    image = _image()
    out = model([{"image": image, "point_coords": POINTS, "point_labels": torch.ones(1, 3, dtype=torch.long)}])[0]
    z, _ = model.image_embeddings([image])
    with torch.no_grad():
        low, iou = sam_predict(model.sam, z, POINTS[None] * 2, torch.ones(1, 1, 3, dtype=torch.long),
                               multimask_output=True)
    assert low.shape[2] == 3
    torch.testing.assert_close(out["iou_pred"], iou[0].max(dim=1).values)
    with pytest.raises(ValueError, match="no prompt"):
        model([{"image": image, "file_name": "x.png"}])
    with pytest.raises(NotImplementedError, match="eval"):
        model.train()([{"image": image, "boxes": torch.tensor([[0.0, 0, 5, 5]])}])


def test_predictor_embeds_each_image_once_and_gives_the_models_own_masks(glesam):
    import numpy as np

    from rass.engine import PromptablePredictor

    gle = PromptablePredictor(model=glesam)
    sam = gle.plain_sam()
    runs = {"encoder": 0, "unet": 0}
    hooks = [glesam.sam.vision_encoder.register_forward_hook(lambda *a: runs.__setitem__("encoder", runs["encoder"] + 1)),
             glesam.enhancer.register_forward_hook(lambda *a: runs.__setitem__("unet", runs["unet"] + 1))]
    try:
        image = _image(96, 128, seed=3).permute(1, 2, 0).numpy()
        tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
        for predictor, model in ((gle, glesam), (sam, glesam.plain_sam())):
            for points, labels in (([[20.0, 30.0]], [1]), ([[20.0, 30.0], [90.0, 60.0]], [1, 0])):
                out = predictor(image, points=points, labels=labels)
                ref = model([{"image": tensor, "point_coords": torch.tensor([points]),
                              "point_labels": torch.tensor([labels])}])[0]
                torch.testing.assert_close(out["mask_logits"], ref["mask_logits"][0])
                assert torch.equal(out["masks"], ref["masks"][0])
                torch.testing.assert_close(out["iou_pred"], ref["iou_pred"][0])
        runs.update(encoder=0, unet=0)
        for predictor in (gle, sam, gle, sam):  # four calls on one image: one SAM encoding, one enhancement
            predictor(image, points=[[10.0, 10.0]])
        assert runs == {"encoder": 0, "unet": 0}  # all cached from the calls above
        other = np.ascontiguousarray(image[:, ::-1])
        gle(other, points=[[10.0, 10.0]])
        sam(other, box=[5.0, 5.0, 60.0, 50.0])
        assert runs == {"encoder": 1, "unet": 1}
        gle.clear_cache()
        gle(other, points=[[10.0, 10.0]])
        assert runs == {"encoder": 2, "unet": 2}
    finally:
        for h in hooks:
            h.remove()
