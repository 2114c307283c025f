"""Hungarian matcher: assignment optimality, cost terms in closed form, recovery of a permutation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from rass.modeling.matcher import HungarianMatcher, solve_assignment
from rass.modeling.point_sampling import SeededPointGenerator


def _brute_force_min(cost: np.ndarray) -> float:
    rows, cols = cost.shape
    if rows >= cols:
        return min(sum(cost[r, c] for c, r in enumerate(p)) for p in itertools.permutations(range(rows), cols))
    return min(sum(cost[r, c] for r, c in enumerate(p)) for p in itertools.permutations(range(cols), rows))


@pytest.mark.parametrize("shape", [(5, 3), (6, 4), (4, 4), (3, 5), (1, 1), (7, 1)])
def test_assignment_equals_scipy_and_is_optimal(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        cost = rng.normal(size=shape).astype(np.float32)
        rows, cols = solve_assignment(torch.from_numpy(cost))
        ref_rows, ref_cols = linear_sum_assignment(cost)
        assert rows.dtype == torch.int64 and cols.dtype == torch.int64
        assert rows.tolist() == ref_rows.tolist() and cols.tolist() == ref_cols.tolist()
        assert len(rows) == min(shape)
        assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
        assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(_brute_force_min(cost.astype(np.float64)), abs=1e-5)


def test_non_finite_cost_is_reported():
    cost = torch.zeros(3, 2)
    cost[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        solve_assignment(cost)


def _naive_cost(logits, masks, labels, tgt_masks, coords, wc, wm, wd):
    """Per-pair loops: -p(class) , mean BCE and Dice on bilinearly sampled points."""
    def sample(m):  # m: H x W -> P values (bilinear, align_corners=False, zero padding)
        grid = (coords * 2 - 1).view(1, 1, -1, 2)
        return F.grid_sample(m[None, None].double(), grid.double(), align_corners=False).view(-1)

    probs = logits.double().softmax(-1)
    out = torch.zeros(logits.shape[0], len(labels), dtype=torch.float64)
    for q in range(logits.shape[0]):
        x = sample(masks[q])
        p = x.sigmoid()
        for t in range(len(labels)):
            y = sample(tgt_masks[t].float())
            bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
            dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
            out[q, t] = -wc * probs[q, labels[t]] + wm * bce + wd * dice
    return out


def test_cost_matrix_matches_closed_form():
    g = torch.Generator().manual_seed(0)
    q, k, t, h, w = 5, 7, 3, 12, 10
    logits = torch.randn(q, k + 1, generator=g)
    masks = torch.randn(q, h // 2, w // 2, generator=g) * 3  # predictions at a lower resolution
    labels = torch.tensor([4, 0, 6])
    tgt_masks = torch.rand(t, h, w, generator=g) > 0.5
    coords = torch.rand(50, 2, generator=g)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=50)
    cost = matcher.cost_matrix(logits, masks, labels, tgt_masks, coords)
    expected = _naive_cost(logits, masks, labels, tgt_masks, coords, 2.0, 5.0, 3.0)
    torch.testing.assert_close(cost.double(), expected, rtol=1e-5, atol=1e-5)


def test_forward_recovers_a_permutation_and_uses_seeded_points():
    g = torch.Generator().manual_seed(1)
    n, q, k, h, w = 2, 6, 10, 16, 16
    targets, logits, masks = [], torch.full((n, q, k + 1), -10.0), torch.full((n, q, h // 4, w // 4), -8.0)
    perms = [[4, 0, 2], [5, 1]]
    for b, perm in enumerate(perms):
        labels = torch.randperm(k, generator=g)[: len(perm)]
        seg = torch.randint(0, len(perm), (h // 4, w // 4), generator=g)
        small = torch.stack([seg == i for i in range(len(perm))])
        tgt = small.repeat_interleave(4, 1).repeat_interleave(4, 2)
        targets.append({"labels": labels, "masks": tgt})
        for i, qi in enumerate(perm):
            logits[b, qi, labels[i]] = 10.0
            masks[b, qi] = torch.where(small[i], 8.0, -8.0)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=200, seed=3)
    indices = matcher({"pred_logits": logits, "pred_masks": masks}, targets)
    for (rows, cols), perm in zip(indices, perms):
        assert rows.tolist() == sorted(perm)
        assert [perm[c] for c in cols.tolist()] == rows.tolist()
    # The points come from the matcher's own seeded generator: a twin matcher gives the same costs.
    twin = SeededPointGenerator(3)
    coords = twin.rand(200, 2, device=torch.device("cpu"))
    cost = matcher.cost_matrix(logits[0], masks[0], targets[0]["labels"], targets[0]["masks"], coords)
    ref_rows, ref_cols = linear_sum_assignment(cost.numpy())
    assert indices[0][0].tolist() == ref_rows.tolist() and indices[0][1].tolist() == ref_cols.tolist()


def test_empty_targets_and_config_errors():
    matcher = HungarianMatcher(num_points=10)
    out = matcher(
        {"pred_logits": torch.randn(1, 4, 3), "pred_masks": torch.randn(1, 4, 5, 5)},
        [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 5, 5)}],
    )
    assert [len(x) for x in out[0]] == [0, 0]
    with pytest.raises(ValueError, match="all cost weights are 0"):
        HungarianMatcher(cost_class=0, cost_mask=0, cost_dice=0, num_points=10)
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        matcher({"pred_logits": torch.randn(2, 4, 3), "pred_masks": torch.randn(2, 4, 5, 5)},
                [{"labels": torch.tensor([0]), "masks": torch.ones(1, 5, 5)}])
