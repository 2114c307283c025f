import pytest
import torch
from torch import nn

from rass.config import setup_cfg
from rass.solver import build_lr_scheduler, build_optimizer


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 2)
        self.query_embed = nn.Embedding(3, 4)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def _cfg(*opts):
    return setup_cfg(None, ["SOLVER.BASE_LR", "0.01", "SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
                            "SOLVER.WEIGHT_DECAY_EMBED", "0.0", "SOLVER.BACKBONE_MULTIPLIER", "0.1", *opts])


def test_param_groups_lr_and_decay():
    opt = build_optimizer(_cfg(), _Toy())
    by_name = {g["name"]: g for g in opt.param_groups}
    assert "frozen.weight" not in by_name
    assert by_name["backbone.0.weight"]["lr"] == pytest.approx(0.001)
    assert by_name["head.weight"]["lr"] == pytest.approx(0.01)
    assert by_name["backbone.1.weight"]["weight_decay"] == 0.0  # norm
    assert by_name["query_embed.weight"]["weight_decay"] == 0.0  # embedding
    assert by_name["head.weight"]["weight_decay"] == 0.05
    assert isinstance(opt, torch.optim.AdamW)


def test_full_model_clipping_bounds_the_joint_norm():
    model = _Toy()
    cfg = _cfg("SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
               "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01", "SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.0",
               "SOLVER.WEIGHT_DECAY", "0.0")
    opt = build_optimizer(cfg, model)
    before = {}
    for g in opt.param_groups:
        (p,) = g["params"]
        p.grad = torch.full_like(p, 3.0)
        before[p] = p.detach().clone()
    opt.step()
    # SGD without momentum: step = lr * clipped grad, so the joint norm of step/lr is CLIP_VALUE
    total = torch.sqrt(sum((((before[g["params"][0]] - g["params"][0].detach()) / g["lr"]) ** 2).sum()
                           for g in opt.param_groups))
    assert total == pytest.approx(0.01, rel=1e-3)  # SGD step = lr * clipped grad; joint norm == CLIP_VALUE


def test_warmup_poly_lr_matches_closed_form():
    model = _Toy()
    cfg = _cfg("SOLVER.LR_SCHEDULER_NAME", "WarmupPolyLR", "SOLVER.MAX_ITER", "100", "SOLVER.WARMUP_ITERS", "0",
               "SOLVER.POLY_LR_POWER", "0.9")
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    head = [g for g in opt.param_groups if g["name"] == "head.weight"][0]
    lrs = []
    for _ in range(60):
        lrs.append(head["lr"])
        opt.step()
        sched.step()
    for it in (0, 10, 59):
        assert lrs[it] == pytest.approx(0.01 * (1 - it / 100) ** 0.9, rel=1e-6)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER.*LAMB"):
        build_optimizer(_cfg("SOLVER.OPTIMIZER", "LAMB"), _Toy())
