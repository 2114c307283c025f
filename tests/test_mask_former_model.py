"""The "MaskFormer" meta-architecture on the tiny configuration: inputs, targets, losses, outputs."""
from __future__ import annotations

import json
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances

from rass.config import setup_cfg
from rass.modeling.meta_arch import MaskFormer
from rass.modeling.point_sampling import SeededPointGenerator
from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "quickstart", "tiny_maskformer_r18.yaml")


def _model(*opts):
    torch.manual_seed(0)
    return build_model(setup_cfg(TINY, list(opts)))


def _sample(h, w, labels=(2, 9, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
    seg = torch.full((h, w), labels[0], dtype=torch.long)
    seg[h // 2 :, :] = labels[1]
    seg[h // 4 : h // 2, w // 4 : w // 2] = labels[2]
    seg[:4, :4] = 255
    return {"image": img, "sem_seg": seg}


def test_preprocess_normalises_and_pads():
    model = _model("MODEL.PIXEL_MEAN", "[127.5, 127.5, 127.5]", "MODEL.PIXEL_STD", "[127.5, 127.5, 127.5]")
    a = torch.zeros(3, 40, 50, dtype=torch.uint8)
    b = torch.full((3, 33, 70), 255, dtype=torch.uint8)
    images = model.preprocess_image([{"image": a}, {"image": b}])
    assert tuple(images.tensor.shape) == (2, 3, 64, 96)  # padded to multiples of SIZE_DIVISIBILITY 32
    assert images.image_sizes == [(40, 50), (33, 70)]
    assert torch.all(images.tensor[0, :, :40, :50] == -1) and torch.all(images.tensor[1, :, :33, :70] == 1)
    assert torch.all(images.tensor[0, :, 40:] == 0) and torch.all(images.tensor[1, :, 33:] == 0)


def test_model_side_degradation_degrades_unpadded_images_in_training_only():
    deg = ["INPUT.DEGRADATION.ENABLED", "True", "INPUT.DEGRADATION.DEVICE", "model", "INPUT.DEGRADATION.SEED", "3"]
    model = _model(*deg)
    seen = []
    real = model.degradation

    def spy(images, seeds=None):
        seen.extend(tuple(x.shape) for x in images)
        return real(images, seeds)

    model.degradation = spy
    a, b = _sample(40, 50)["image"], _sample(33, 70, seed=1)["image"]
    model.train()
    images = model.preprocess_image([{"image": a}, {"image": b}])
    assert seen == [(3, 40, 50), (3, 33, 70)]  # the content, before padding
    norm = lambda x: (x.float() - model.pixel_mean) / model.pixel_std  # noqa: E731
    assert (images.tensor[0, :, :40, :50] - norm(a)).abs().mean() > 0.05  # degraded
    assert torch.all(images.tensor[0, :, 40:] == 0) and torch.all(images.tensor[1, :, 33:] == 0)  # padding untouched
    torch.testing.assert_close(images.clean[0, :, :40, :50], a.float() / 255)  # clean kept (KEEP_CLEAN default)
    model.eval()
    seen.clear()
    images = model.preprocess_image([{"image": a}])
    assert seen == [] and images.clean is None
    torch.testing.assert_close(images.tensor[0, :, :40, :50], norm(a))


def test_prepare_targets_from_sem_seg_and_instances():
    model = _model()
    x = _sample(30, 40)
    images = model.preprocess_image([x])
    (t,) = model.prepare_targets([x], images)
    assert t["labels"].tolist() == [2, 9, 20]
    assert tuple(t["masks"].shape) == (3, 32, 64)
    for label, mask in zip(t["labels"], t["masks"]):
        assert torch.equal(mask[:30, :40], x["sem_seg"] == label)
        assert not mask[30:].any() and not mask[:, 40:].any()
    assert not t["masks"][:, :4, :4].any()  # ignored pixels are in no mask
    inst = Instances((30, 40), gt_classes=torch.tensor([5]), gt_masks=torch.ones(1, 30, 40, dtype=torch.bool))
    (t,) = model.prepare_targets([{"image": x["image"], "instances": inst}], images)
    assert t["labels"].tolist() == [5] and t["masks"][0, :30, :40].all() and not t["masks"][0, 30:].any()


def test_out_of_range_labels_are_named():
    model = _model()
    x = _sample(32, 32, labels=(2, 150, 20))
    x["file_name"] = "img_007.jpg"
    with pytest.raises(ValueError, match=r"img_007\.jpg.*\[150\].*NUM_CLASSES"):
        model.prepare_targets([x], model.preprocess_image([x]))


def test_training_losses_are_weighted_and_a_batch_can_be_fitted():
    model = _model()
    model.train()
    batch = [_sample(64, 64, seed=0), _sample(64, 96, labels=(4, 9, 12), seed=1)]
    weights = model.criterion.weight_dict
    assert len(weights) == 3 * 4  # CE, BCE, Dice for the final output and 3 auxiliary outputs (DEC_LAYERS 4)

    def reseed():
        model.criterion.points = SeededPointGenerator(5)
        model.criterion.matcher.points = SeededPointGenerator(6)

    reseed()
    losses = model(batch)
    reseed()
    images = model.preprocess_image(batch)
    raw = model.criterion(model.sem_seg_head(model.extract_features(images, batch)), model.prepare_targets(batch, images))
    assert set(losses) == set(weights) == set(raw)
    for k, v in losses.items():
        assert torch.isfinite(v)
        torch.testing.assert_close(v, weights[k] * raw[k])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(12):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.6 * sum(totals[:3]) / 3, totals


def test_inference_outputs_requested_sizes():
    model = _model()
    model.eval()
    batch = [
        {"image": torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8), "height": 100, "width": 140},
        {"image": torch.randint(0, 256, (3, 64, 40), dtype=torch.uint8)},
    ]
    with torch.no_grad():
        out = model(batch)
    assert tuple(out[0]["sem_seg"].shape) == (150, 100, 140)
    assert tuple(out[1]["sem_seg"].shape) == (150, 64, 40)
    # Scores are sums over queries of P(class) * mask probability: in [0, num_queries].
    assert out[0]["sem_seg"].min() >= 0 and out[0]["sem_seg"].sum(0).max() <= model.num_queries


def test_semantic_inference_closed_form():
    g = torch.Generator().manual_seed(0)
    cls = torch.randn(4, 6, generator=g)
    masks = torch.randn(4, 3, 5, generator=g)
    out = MaskFormer.semantic_inference(cls, masks)
    probs = cls.softmax(-1)
    expected = torch.zeros(5, 3, 5)
    for q in range(4):
        for c in range(5):
            expected[c] += probs[q, c] * masks[q].sigmoid()
    torch.testing.assert_close(out, expected)


def test_pixel_decoder_stays_float32_under_autocast():
    model = _model()
    model.train()
    batch = [_sample(64, 64)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = model.preprocess_image(batch)
        feats = model.extract_features(images, batch)
        mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(feats)
        losses = model(batch)
    assert mask_features.dtype == torch.float32 and all(f.dtype == torch.float32 for f in multi_scale)
    assert all(torch.isfinite(v) for v in losses.values())


def test_panoptic_and_instance_outputs_are_refused():
    with pytest.raises(ValueError, match="PANOPTIC_ON"):
        _model("MODEL.MASK_FORMER.TEST.PANOPTIC_ON", "True")


def test_analyze_model_counts_parameters_and_deformable_attention_flops(tmp_path):
    from rass.ops import kernel_available

    tool = load_script("tools/analyze_model.py", "analyze_model")
    res = tool.main(["--config-file", TINY, "--height", "128", "--width", "128", "--json", str(tmp_path / "a.json")])
    model = _model()
    assert res["total_params"] == sum(p.numel() for p in model.parameters())
    assert res["parts"]["sem_seg_head"]["params"] == sum(p.numel() for p in model.sem_seg_head.parameters())
    assert res["parts"]["backbone.res5"]["params"] == sum(p.numel() for p in model.backbone.res5.parameters())
    # Deformable attention: 2 encoder layers x Lq (16^2 + 8^2 + 4^2 tokens of res3..res5 at 128 px)
    # x 4 heads x 3 levels x 4 points x 16 channels x (4 bilinear + 1 weighting) multiply-adds.
    expected = 2 * (256 + 64 + 16) * 4 * 3 * 4 * 16 * 5
    if kernel_available("cpu"):
        assert res["flops_by_operator"]["ms_deform_attn"] == expected
    assert res["flops"] > expected
    assert json.load(open(tmp_path / "a.json"))["total_params"] == res["total_params"]
