"""Set criterion: closed-form loss values, perfect predictions, no-object weight, gradient flow."""
from __future__ import annotations

import math
import os

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

from rass.config import setup_cfg
from rass.modeling.criterion import SetCriterion, dice_loss, sigmoid_ce_loss
from rass.modeling.matcher import HungarianMatcher
from rass.modeling.point_sampling import SeededPointGenerator, sample_uncertain_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "quickstart", "tiny_maskformer_r18.yaml")
TINY_SHAPES = {f"res{i}": ShapeSpec(channels=32 * 2**i, stride=2**i) for i in range(2, 6)}


def _criterion(num_classes=5, eos=0.1, num_points=400, importance=0.75):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points, seed=0)
    return SetCriterion(
        num_classes,
        matcher=matcher,
        weight_dict={"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0},
        eos_coef=eos,
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=importance,
        seed=1,
    )


def test_loss_functions_closed_form():
    p = 64
    zeros = torch.zeros(3, p)
    ones = torch.ones(3, p)
    # sigmoid(0) = 0.5: BCE = log 2 per point; Dice = 1 - (2 * 0.5 P + 1) / (0.5 P + P + 1).
    assert sigmoid_ce_loss(zeros, ones, 3.0).item() == pytest.approx(math.log(2), rel=1e-6)
    assert dice_loss(zeros, ones, 3.0).item() == pytest.approx(1 - (p + 1) / (1.5 * p + 1), rel=1e-6)
    # Normalised by num_masks, summed over masks.
    assert sigmoid_ce_loss(zeros, ones, 1.5).item() == pytest.approx(2 * math.log(2), rel=1e-6)


def _perfect_outputs(targets, q, k, h, w, logit=20.0, num_aux=2):
    """Query i predicts target i exactly (class and mask); the others predict "no object"."""
    n = len(targets)
    logits = torch.zeros(n, q, k + 1)
    logits[:, :, k] = logit
    masks = torch.full((n, q, h, w), -logit)
    for b, t in enumerate(targets):
        for i, (label, mask) in enumerate(zip(t["labels"], t["masks"])):
            logits[b, i] = 0.0
            logits[b, i, label] = logit
            masks[b, i] = torch.where(mask, logit, -logit)
    out = {"pred_logits": logits, "pred_masks": masks}
    out["aux_outputs"] = [{"pred_logits": logits.clone(), "pred_masks": masks.clone()} for _ in range(num_aux)]
    return out


def _pixel_centre_sampler(height, width):
    """A stand-in for the importance sampler that returns random pixel centres of a
    height x width map, where bilinear sampling reproduces pixel values exactly."""
    gen = torch.Generator().manual_seed(0)

    def sampler(logits, num_points, oversample_ratio, importance_sample_ratio, generator=None):
        rows = torch.randint(0, height, (logits.shape[0], num_points), generator=gen)
        cols = torch.randint(0, width, (logits.shape[0], num_points), generator=gen)
        return torch.stack([(cols + 0.5) / width, (rows + 0.5) / height], dim=-1)

    return sampler


def _regions(h, w, layout):
    seg = torch.zeros(h, w, dtype=torch.long)
    if layout == 0:
        seg[:, w // 2 :] = 1
        seg[5 * h // 8 :, : w // 3] = 2
    else:
        seg[h // 4 : h // 2, w // 4 :] = 1
    return seg


def test_perfect_prediction_gives_near_zero_losses(monkeypatch):
    h = w = 32
    segs = [_regions(h, w, 0), _regions(h, w, 1)]
    targets = [
        {"labels": torch.tensor([3, 0, 4]), "masks": torch.stack([segs[0] == i for i in range(3)])},
        {"labels": torch.tensor([1, 2]), "masks": torch.stack([segs[1] == i for i in range(2)])},
    ]
    monkeypatch.setattr("rass.modeling.criterion.sample_uncertain_points", _pixel_centre_sampler(h, w))
    crit = _criterion()
    losses = crit(_perfect_outputs(targets, 6, 5, h, w), targets)
    assert set(losses) == {f"{k}{s}" for k in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1")}
    for name, value in losses.items():
        assert 0 <= value.item() < 1e-4, (name, value.item())


def test_perfect_prediction_with_importance_sampling_is_far_below_random():
    h = w = 64
    seg = _regions(h, w, 0)
    targets = [{"labels": torch.tensor([4, 0, 2]), "masks": torch.stack([seg == i for i in range(3)])}]
    crit = _criterion()
    perfect = crit(_perfect_outputs(targets, 8, 5, h, w, num_aux=0), targets)
    g = torch.Generator().manual_seed(0)
    rand_out = {"pred_logits": torch.randn(1, 8, 6, generator=g), "pred_masks": torch.randn(1, 8, h, w, generator=g)}
    random = crit(rand_out, targets)
    assert perfect["loss_ce"] < 1e-4
    # Importance sampling picks points on region borders and on the image border (zero padding),
    # where the bilinearly sampled target is fractional: only there is the loss not ~0.
    assert perfect["loss_mask"] < 0.4 * random["loss_mask"]
    assert perfect["loss_dice"] < 0.1 * random["loss_dice"]


def test_no_object_weight_in_cross_entropy():
    h = w = 16
    targets = [{"labels": torch.tensor([2]), "masks": torch.ones(1, h, w, dtype=torch.bool)}]
    q, k = 4, 5
    out = _perfect_outputs(targets, q, k, h, w, num_aux=0)
    g = torch.Generator().manual_seed(2)
    out["pred_logits"] = out["pred_logits"] + torch.randn(1, q, k + 1, generator=g)  # imperfect classes
    crit = _criterion(num_classes=k, eos=0.1)
    loss = crit(out, targets)["loss_ce"].item()
    logp = out["pred_logits"][0].log_softmax(-1)
    # Query 0 is matched to class 2 (its mask is the only positive one); the rest are "no object".
    expected = (-logp[0, 2] - 0.1 * logp[1:, k].sum()) / (1 + 0.1 * (q - 1))
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_images_without_targets_give_finite_connected_losses():
    crit = _criterion()
    masks = torch.randn(2, 4, 8, 8, requires_grad=True)
    logits = torch.randn(2, 4, 6, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8, dtype=torch.bool)}
    losses = crit({"pred_logits": logits, "pred_masks": masks}, [empty, empty])
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    sum(losses.values()).backward()
    assert masks.grad is not None and logits.grad is not None


def test_uncertain_points_concentrate_on_the_decision_boundary_and_are_seeded():
    w = 64
    ramp = (torch.arange(w, dtype=torch.float32) - (w - 1) / 2).view(1, 1, 1, w).expand(2, 1, 16, w)
    pts = sample_uncertain_points(ramp, 300, 3.0, 1.0, SeededPointGenerator(7))
    assert pts.shape == (2, 300, 2) and pts.dtype == torch.float32
    # The 1/3 most uncertain of uniform candidates lie within ~1/6 of the zero crossing x = 0.5
    # (apart from a few on the top/bottom border, where zero padding halves the logits).
    assert ((pts[..., 0] - 0.5).abs() < 0.2).float().mean() > 0.95
    again = sample_uncertain_points(ramp, 300, 3.0, 1.0, SeededPointGenerator(7))
    torch.testing.assert_close(pts, again, rtol=0, atol=0)
    mixed = sample_uncertain_points(ramp, 300, 3.0, 0.75, SeededPointGenerator(7))
    assert (mixed[:, 225:, 0] - 0.5).abs().max() > 0.3  # the uniform part reaches far from the boundary


def test_gradient_reaches_every_trainable_head_parameter():
    cfg = setup_cfg(TINY)
    torch.manual_seed(0)
    head = build_sem_seg_head(cfg, TINY_SHAPES)
    crit = SetCriterion(cfg, num_classes=head.num_classes)
    g = torch.Generator().manual_seed(0)
    h = w = 64
    feats = {k: torch.randn(2, s.channels, h // s.stride, w // s.stride, generator=g) for k, s in TINY_SHAPES.items()}
    seg = torch.randint(0, 3, (2, h // 8, w // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    targets = [
        {"labels": torch.tensor([7, 30, 149]), "masks": torch.stack([s == i for i in range(3)])} for s in seg
    ]
    out = head(feats)
    assert len(out["aux_outputs"]) == cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1
    losses = crit(out, targets)
    assert set(losses) == set(crit.weight_dict)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(crit.weight_dict[k] * v for k, v in losses.items()).backward()
    # The deformable attention's offset/weight projections start at zero, which blocks the
    # gradient of the encoder's level embedding until one update has been made.
    assert all(p.grad is not None for p in head.parameters())
    zero = [n for n, p in head.named_parameters() if not torch.any(p.grad != 0)]
    assert zero == ["pixel_decoder.transformer.level_embed"]
    torch.optim.SGD(head.parameters(), lr=0.01).step()
    head.zero_grad()
    out = head(feats)
    losses = crit(out, targets)
    sum(crit.weight_dict[k] * v for k, v in losses.items()).backward()
    trainable = [(n, p) for n, p in head.named_parameters() if p.requires_grad]
    assert len(trainable) > 100
    no_grad = [n for n, p in trainable if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
