#!/usr/bin/env python
"""Parameter counts (total / trainable, per module or part) and FLOPs of a configuration.

    python tools/analyze_model.py --config-file configs/ade20k/semantic-segmentation/maskformer2_R50_bs16_160k.yaml
    python tools/analyze_model.py --config-file CFG --height 512 --width 512 --depth 3
    python tools/analyze_model.py --config-file CFG --no-flops --meta      # huge models: counts only

The model is built with random initialisation (MODEL.WEIGHTS is not loaded) the way training
builds it. FLOPs come from fvcore's tracer on one eval-mode image; as in fvcore/detectron2, one
multiply-add counts as one flop. The multi-scale deformable attention op is counted with its own
handle (bilinear sampling = 4 multiply-adds per sampled channel value, plus 1 for the attention
weight), whichever backend runs it.

Per-part rows: every top-level module, then its children down to `--depth`. A module can list its
own parts instead by defining `analysis_parts() -> {part name: [child module names]}` (names
relative to that module); the rows are then "<module>/<part>".
"""
from __future__ import annotations

import argparse
import json
from collections import OrderedDict
from typing import Any, Dict, List, Sequence, Tuple

from typing import TYPE_CHECKING

# Parsing imports nothing heavy (`--help` and argument errors answer at once): torch, detectron2 and
# fvcore are imported by the functions that use them.
from rass.utils.cli import DEFAULT_INIT_SEED, add_init_seed_argument, check_config_file
from rass.utils.io import write_text_atomic

if TYPE_CHECKING:
    import torch
    from torch import nn

# The deformable attention kernel's traced op, and its inputs' positions.
DEFORM_KERNEL_OP = "torch_ms_deform_attn::forward"
BILINEAR_MACS = 4  # per sampled value (4 neighbours)


def _shape(value) -> List[int]:
    from fvcore.nn.jit_handles import get_shape

    return list(get_shape(value))


def deform_attn_kernel_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of the compiled op: value N x S x M x D, locations N x Lq x M x L x P x 2."""
    n, _, m, d = _shape(inputs[0])
    _, lq, _, levels, points, _ = _shape(inputs[3])
    return n * lq * m * levels * points * d * (BILINEAR_MACS + 1)


def grid_sampler_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of `grid_sample` (bilinear): 4 multiply-adds per output value (the attention
    weighting of the pure-torch deformable attention is an einsum, counted by fvcore)."""
    count = 1
    for s in _shape(outputs[0]):
        count *= s
    return count * BILINEAR_MACS


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of `scaled_dot_product_attention` (used by nn.MultiheadAttention):
    q N x ... x Lq x E, k N x ... x Lk x E, v N x ... x Lk x Ev -> Lq*Lk*(E + Ev) per batch/head."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def build_model_for_analysis(cfg, meta: bool = False, seed: int = DEFAULT_INIT_SEED) -> nn.Module:
    """Build the model as training does (the project's Trainer when available), random init from `seed`
    (see `rass.engine.model_build.seeded_init`)."""
    import torch

    from rass.engine.model_build import seeded_init

    try:
        from rass.engine import Trainer

        build = Trainer.build_model
    except ImportError:  # pragma: no cover - foundation not installed
        from detectron2.modeling import build_model as build
    if meta:
        cfg = cfg.clone()  # detectron2's build_model moves the model to MODEL.DEVICE: keep it on meta
        cfg.defrost()
        cfg.MODEL.DEVICE = "meta"
        cfg.freeze()
        with torch.device("meta"):
            return build(cfg)
    with seeded_init(seed):
        return build(cfg)


# The RASS paper's counts (rass_method.md): one tagger counted, the release's LoRA-variant RAM.
RASS_PAPER_PARAMS = (1788.7e6, 27.9e6)


def _tagger_flops(tagger: nn.Module) -> int:
    """FLOPs of one tagger pass (RAM-style taggers exposing `tag_logits` and `image_size`), else 0."""
    if not (callable(getattr(tagger, "tag_logits", None)) and hasattr(tagger, "image_size")):
        return 0
    import torch
    from fvcore.nn import FlopCountAnalysis
    from torch import nn

    class TagLogits(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.tag_logits(x)

    ref = next(tagger.parameters())
    x = torch.zeros(1, 3, tagger.image_size, tagger.image_size, device=ref.device, dtype=ref.dtype)
    with torch.no_grad():
        analysis = FlopCountAnalysis(TagLogits(tagger).eval(), (x,))
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        return int(analysis.total())


def rass_summary(model: nn.Module, total: int, trainable: int, flops: Dict[str, int]) -> Dict[str, Any]:
    """Paper comparison and per-part numbers of a model whose backbone is RASS (else {})."""
    from rass.utils.model_summary import count_parameters

    backbone = getattr(model, "backbone", None)
    parts = getattr(backbone, "analysis_parts", None)
    if type(backbone).__name__ != "RASS" or not callable(parts):
        return {}
    rows = OrderedDict()
    for part, children in parts().items():
        names = [f"backbone.{c}" for c in children]
        n_all, n_train = count_parameters(model, names)
        rows[part] = OrderedDict(params=n_all, trainable=n_train)
        if flops:
            rows[part]["flops"] = sum(flops.get(n, 0) for n in names)
    tagger_flops = _tagger_flops(backbone.tagger) if flops else 0
    if tagger_flops:
        rows["tagger"]["flops"] = tagger_flops
    head_all, head_train = count_parameters(model, ["sem_seg_head"])
    rows["head"] = OrderedDict(params=head_all, trainable=head_train)
    if flops:
        rows["head"]["flops"] = flops.get("sem_seg_head", 0)
    paper_total, paper_trainable = RASS_PAPER_PARAMS
    print(f"RASS: total {total / 1e6:,.1f}M (paper {paper_total / 1e6:,.1f}M), trainable {trainable / 1e6:.2f}M "
          f"(paper {paper_trainable / 1e6:.1f}M); tagger {getattr(backbone, 'tagger_name', '?')!r}. The paper counts "
          "one tagger, the release's RAM with (never trained) LoRA adapters: +1.78M over the plain `ram` tagger.")
    if tagger_flops:
        print(f"RASS FLOPs incl. the tagger: {(flops.get('', 0) + tagger_flops) / 1e9:,.1f}G (the tagger's prompts "
              f"are strings, so the traced graph above omits its {tagger_flops / 1e9:,.1f}G)")
    print("RASS parts: " + "; ".join(
        f"{k} {v['params'] / 1e6:,.1f}M" + (f" {v['flops'] / 1e9:,.1f} GFLOPs" if "flops" in v else "")
        for k, v in rows.items()))
    return OrderedDict(paper_params=RASS_PAPER_PARAMS, parts=rows)


def analysis_rows(model: nn.Module, depth: int) -> List[Tuple[str, List[str]]]:
    """(row label, module names) for every top-level module and its parts down to `depth`."""
    rows: List[Tuple[str, List[str]]] = []

    def visit(module: nn.Module, name: str, level: int) -> None:
        rows.append((name, [name]))
        if level >= depth:
            return
        parts = getattr(module, "analysis_parts", None)
        if callable(parts):
            for part, children in parts().items():
                rows.append((f"{name}/{part}", [f"{name}.{c}" for c in children]))
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}", level + 1)

    for name, child in model.named_children():
        visit(child, name, 1)
    return rows


def count_flops(model: nn.Module, height: int, width: int, device: str
                ) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    """fvcore FLOPs of one eval-mode image: (per module name, unsupported op counts, per operator)."""
    import torch
    from detectron2.utils.analysis import FlopCountAnalysis

    model.eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8).to(device)
    inputs = [{"image": image, "height": height, "width": width}]
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(DEFORM_KERNEL_OP, deform_attn_kernel_flop_jit)
        analysis.set_op_handle("aten::grid_sampler", grid_sampler_flop_jit)
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_module = analysis.by_module()
        unsupported = dict(analysis.unsupported_ops())
        # fvcore names operators without their namespace: the kernel op shows up as "forward".
        by_operator = {("ms_deform_attn" if k == "forward" else k): v for k, v in analysis.by_operator().items()}
    # The tracing adapter wraps the model as "model".
    flops = {(k[len("model."):] if k.startswith("model.") else ("" if k == "model" else k)): v
             for k, v in by_module.items()}
    return flops, unsupported, by_operator


def _fmt(n: float, unit: str = "M", scale: float = 1e6) -> str:
    return f"{n / scale:,.2f}{unit}"


def main(argv: Sequence[str] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, help="project config (YAML)")
    p.add_argument("--height", type=int, default=512, help="input height for FLOPs")
    p.add_argument("--width", type=int, default=512, help="input width for FLOPs")
    p.add_argument("--depth", type=int, default=2, help="module-tree depth of the per-part rows")
    p.add_argument("--no-flops", action="store_true", help="count parameters only")
    p.add_argument("--meta", action="store_true", help="build on the meta device (parameter counts only)")
    p.add_argument("--json", default="", help="also write the numbers to this JSON file")
    add_init_seed_argument(p)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    check_config_file(args.config_file)  # a mistyped path is reported before the heavy imports
    from rass.config import setup_cfg
    from rass.utils.model_summary import count_parameters

    cfg = setup_cfg(args.config_file, args.opts)
    model = build_model_for_analysis(cfg, meta=args.meta, seed=args.init_seed)
    rows = analysis_rows(model, args.depth)
    total, trainable = count_parameters(model, [n for n, _ in model.named_children()])
    flops: Dict[str, int] = {}
    unsupported: Dict[str, int] = {}
    by_operator: Dict[str, int] = {}
    if not (args.no_flops or args.meta):
        device = str(next(model.parameters()).device)
        flops, unsupported, by_operator = count_flops(model, args.height, args.width, device)

    result: Dict[str, Any] = OrderedDict(
        config=args.config_file, total_params=total, trainable_params=trainable, parts=OrderedDict()
    )
    header = f"{'module / part':<52}{'params':>14}{'trainable':>14}"
    if flops:
        header += f"{'GFLOPs':>12}"
    print(f"config: {args.config_file}")
    print(header)
    print("-" * len(header))
    for label, names in rows:
        n_all, n_train = count_parameters(model, names)
        row = OrderedDict(params=n_all, trainable=n_train)
        indent = "  " * (label.count(".") + label.count("/"))
        line = f"{indent + label:<52}{_fmt(n_all):>14}{_fmt(n_train):>14}"
        if flops:
            row["flops"] = sum(flops.get(n, 0) for n in names)
            line += f"{row['flops'] / 1e9:>12.2f}"
        result["parts"][label] = row
        print(line)
    print("-" * len(header))
    line = f"{'total':<52}{_fmt(total):>14}{_fmt(trainable):>14}"
    if flops:
        result["flops"] = flops.get("", 0)
        result["input_size"] = [args.height, args.width]
        line += f"{result['flops'] / 1e9:>12.2f}"
    print(line)
    if flops:
        result["flops_by_operator"] = by_operator
        print(f"FLOPs for one {args.height}x{args.width} image (1 multiply-add = 1 flop); by operator: "
              + ", ".join(f"{k} {v / 1e9:.2f}G" for k, v in sorted(by_operator.items(), key=lambda kv: -kv[1])))
    if unsupported:
        result["uncounted_ops"] = unsupported
        print("ops without a FLOP handle (not counted): " + ", ".join(f"{k} x{v}" for k, v in sorted(unsupported.items())))
    rass_info = rass_summary(model, total, trainable, flops)
    if rass_info:
        result["rass"] = rass_info
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from rass.utils.cli import run_cli

    run_cli(main)
