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


def test_two_different_images_give_different_embeddings_and_masks(sam):
    """The tiny SAM follows its image (transformers' 1e-10 vision init made the embedding a constant): a smooth
    image and noise give different embeddings, predicted IoUs and masks for the same box."""
    yy, xx = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
    smooth = torch.stack([xx * 2, yy * 2, (xx + yy)]).clamp(0, 255).to(torch.uint8)
    noise = _image(seed=7)
    z, _ = sam.encode([smooth, noise])
    assert 0.5 < z.std() < 2.0
    assert (z[0] - z[1]).abs().mean() > 0.3 * z.abs().mean()
    box = {"boxes": torch.tensor([[20.0, 20.0, 100.0, 110.0]])}
    a, b = sam([{"image": smooth, **box}, {"image": noise, **box}])
    assert (a["masks"] != b["masks"]).float().mean() > 0.01
    assert (a["iou_pred"] - b["iou_pred"]).abs().item() > 1e-4


@pytest.mark.parametrize("which,multimask", [("sam", True), ("glesam", False)])
def test_intermediates_are_the_tensors_the_outputs_came_from(request, which, multimask):
    image = _image(100, 140, seed=4)
    inp = {"image": image, "point_coords": POINTS[:, :2].repeat(2, 1, 1),
           "point_labels": torch.tensor([[1, 1], [1, 0]]), "height": 50, "width": 70}
    model = request.getfixturevalue(which)
    model.multimask_output = multimask
    try:
        plain = model([inp])[0]
        out = model([inp], return_intermediates=True)[0]
    finally:
        model.multimask_output = False
    assert "intermediates" not in plain
    inter = out["intermediates"]
    m = 3 if multimask else 1
    assert set(inter) == {"z_low", "low_res_logits", "iou_predictions", "chosen", "multimask_logits",
                          "multimask_iou"} | ({"z_enhanced"} if model.enhancer is not None else set())
    assert inter["z_low"].shape == (1, 256, 16, 16) and inter["low_res_logits"].shape == (2, m, 64, 64)
    assert inter["iou_predictions"].shape == (2, m) and inter["chosen"].shape == (2,)
    assert inter["multimask_logits"].shape == (2, 3, 64, 64) and inter["multimask_iou"].shape == (2, 3)
    for key in ("mask_logits", "masks", "iou_pred"):
        assert torch.equal(out[key], plain[key])  # asking for them changes nothing
    # z_L is SAM's embedding of the image; ẑ = the enhancer's output on it; the decoded one gives the masks
    z_low, valid = model.encode([image])
    assert torch.equal(inter["z_low"], z_low)
    z = z_low
    if model.enhancer is not None:
        with torch.no_grad():
            z = model.enhancer(z_low)
        assert torch.equal(inter["z_enhanced"], z) and not torch.equal(z, z_low)
    pick = torch.arange(2)
    assert torch.equal(inter["chosen"], inter["iou_predictions"].argmax(dim=1))
    assert torch.equal(out["iou_pred"], inter["iou_predictions"][pick, inter["chosen"]])
    chosen = inter["low_res_logits"][pick, inter["chosen"]]
    assert torch.equal(out["mask_logits"], model.to_output_size(chosen, valid[0], (50, 70)))
    prompts = (model.transform.apply_coords(inp["point_coords"], (100, 140))[None], inp["point_labels"][None])
    with torch.no_grad():
        low, iou = sam_predict(model.sam, z, *prompts, multimask_output=multimask)  # from z_L (SAM) or ẑ (GleSAM)
        multi, multi_iou = sam_predict(model.sam, z, *prompts, multimask_output=True)
    assert torch.equal(inter["low_res_logits"], low[0]) and torch.equal(inter["iou_predictions"], iou[0])
    assert torch.equal(inter["multimask_logits"], multi[0]) and torch.equal(inter["multimask_iou"], multi_iou[0])
    if multimask:
        assert inter["multimask_logits"] is inter["low_res_logits"]


def test_intermediates_from_config_key_and_predictor(glesam):
    import numpy as np

    from rass.engine import PromptablePredictor

    model = _model(TINY_SAM, "MODEL.SAM.RETURN_INTERMEDIATES", "True")
    assert "intermediates" in model([{"image": _image(), "boxes": torch.tensor([[1.0, 1.0, 50.0, 50.0]])}])[0]
    predictor = PromptablePredictor(model=glesam)
    image = _image(96, 128, seed=5).permute(1, 2, 0).numpy()
    out = predictor(image, points=[[20.0, 30.0]], intermediates=True)
    inter = out["intermediates"]
    z_low, z, _ = predictor.embeddings(image)
    assert inter["z_low"] is z_low and inter["z_enhanced"] is z
    assert inter["low_res_logits"].shape == (1, 64, 64) and inter["multimask_iou"].shape == (3,)
    assert torch.equal(out["iou_pred"], inter["iou_predictions"][inter["chosen"]])
    assert "intermediates" not in predictor(np.ascontiguousarray(image), points=[[20.0, 30.0]])


@pytest.mark.parametrize("prompt,message", [
    ({"points": [[float("nan"), 5.0]]}, r"prompt: point 0 \(nan, 5\) is not a pair of finite numbers; expected \(x, y\) "
                                        r"pixel coordinates in the image of 96x128 \(HxW\)"),
    ({"points": [[10.0, 5.0], [130.0, 5.0]]}, r"point 1 \(130, 5\) is outside the image of 96x128 \(HxW\)"),
    ({"points": [[10.0, 5.0]], "labels": [1, 0]}, r"1 points but 2 labels"),
    ({"points": [[10.0, 5.0]], "labels": [2]}, r"point labels must be 1 \(positive\) or 0 \(negative\), got \[2\]"),
    ({"box": [60.0, 10.0, 20.0, 50.0]}, r"box 0 \(60, 10, 20, 50\) is inverted \(x1 > x2\); expected x1, y1 \(top left\)"),
    ({"box": [20.0, 10.0, 20.0, 50.0]}, r"box 0 \(20, 10, 20, 50\) has zero area \(x1 = x2\)"),
    ({"box": [20.0, 10.0, 60.0, float("inf")]}, r"box 0 \(20, 10, 60, inf\) is not 4 finite numbers"),
    ({"box": [20.0, 10.0, 60.0, 200.0]}, r"box 0 \(20, 10, 60, 200\) is not inside the image of 96x128 \(HxW\)"),
    ({}, r"give at least one point or a box"),
])
def test_predictor_refuses_bad_prompts_naming_them(sam, prompt, message):
    from rass.engine import PromptablePredictor
    from rass.utils.errors import UserValueError

    image = _image(96, 128, seed=6).permute(1, 2, 0).numpy()
    with pytest.raises(UserValueError, match=message):
        PromptablePredictor(model=sam)(image, **prompt)
