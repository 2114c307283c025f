#!/usr/bin/env python
"""Speed, memory and numerical checks of the project on one GPU, in one run (issue 12).

    python tools/benchmarks/bench_gpu.py --json out/bench_gpu.json            # full size, CUDA
    python tools/benchmarks/bench_gpu.py --tiny --device cpu                  # seconds, on a CPU
    python tools/benchmarks/bench_gpu.py --only rass_infer msda --budget-s 200

Random weights, full-size architectures from the packaged configs (nothing is read from disk):

- rass_infer: the released RASS config (configs/ade20k/.../rass_sd21_bs16_160k.yaml, RAM tagger) with
  MODEL.RASS.FROZEN_DTYPE float32, bfloat16 and float16; 512x512 and 512x683 images (sliding windows
  as released), batch 1 and 8: seconds per image, images/s, peak memory (this model's weights plus
  what the calls allocate). Numerical check: per-class scores of bf16/fp16 vs fp32 on the same image
  (relative L2 error, arg-max agreement). Every build after the first skips the random fill and copies
  the fp32 model's weights, so the three models hold the same values.
- rass_train: one training iteration of that model (fp32 frozen parts, AMP on CUDA as
  SOLVER.AMP.ENABLED, detectron2's AMPTrainer / SimpleTrainer with the project's optimizer, online
  degradation on the model's device, 512x512 crops), batch 2 and 8: seconds per iteration, peak memory.
- msda: multi-scale deformable attention, the torch-ms-deform-attn kernel vs the pure-torch path,
  forward and forward+backward at Mask2Former's 512x512 size (3 levels 64/32/16, 8 heads x 32,
  4 points); check: kernel vs torch forward and gradients (max relative difference).
- degradation: the batched degradation engine ("rass" preset), 16 images 512x512, on the device vs
  the CPU (all CPU threads).
- glesam: SAM ViT-L (as GleSAM's release) per 1024x1024 image (image encoder + mask decoder, 3 points)
  vs GleSAM (the same plus the latent enhancement: CRE SD-2.1 UNet, one step), with the model and the
  per-part calls of bench_glesam.py; skipped with the reason when GleSAM's modules or configs are not there.

`--tiny` uses the tiny configs / variants and small inputs with the same code paths (a test runs it on
the CPU). Each section is timed with synchronisation (median of --repeats after --warmup calls);
a section that fails is recorded with its error and the run goes on; with --budget-s, a section
that would not fit in the remaining time is skipped. Prints one table; --json writes every figure.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

SECTIONS = ("rass_infer", "rass_train", "msda", "degradation", "glesam")
RUN_ORDER = ("msda", "degradation", "rass_infer", "rass_train", "glesam")  # cheap ones first
# Seconds a section needs at least on an H200 (build + timed calls), used to skip under --budget-s.
MIN_SECONDS = {"msda": 10, "degradation": 20, "rass_infer": 90, "rass_train": 40, "glesam": 40}
TINY_CONFIG = os.path.join(REPO, "configs/quickstart/tiny_rass.yaml")
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Sanity bounds of the numerical checks (they catch overflow, NaN and wrong results, not accuracy):
# relative L2 error of the class scores with bf16 / fp16 frozen parts vs fp32, and kernel vs torch.
SCORE_TOLERANCE = {"bfloat16": 0.1, "float16": 0.05}
KERNEL_TOLERANCE = 1e-3


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="tiny models and inputs (CPU tests, dry runs)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed calls (the median is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--budget-s", type=float, default=0, help="skip sections that would not fit (0: no limit)")
    p.add_argument("--json", default="", help="write every figure to this JSON file (after each section)")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402


@dataclass
class Settings:
    """Sizes of one run (full size, or --tiny)."""

    rass_config: str
    rass_opts: List[str]
    sizes: List[Tuple[int, int]]
    batches: List[int]
    train_batches: List[int]
    train_size: int
    msda_levels: List[int]
    msda_batches: List[int]
    degradation_batch: int
    degradation_size: int
    sam_variant: str
    glesam_arch: str
    dtypes: List[str] = field(default_factory=lambda: ["float32", "bfloat16", "float16"])


def settings(tiny: bool) -> Settings:
    """The full-size run, or the tiny one (same code paths, small models and inputs)."""
    if tiny:
        return Settings(TINY_CONFIG, [], [(64, 64), (64, 86)], [1, 2], [2], 64, [8, 4, 2], [1, 2], 4, 64,
                        "tiny", "tiny")
    from bench_rass_forward import CONFIG, random_weight_opts

    return Settings(CONFIG, random_weight_opts("ram"), [(512, 512), (512, 683)], [1, 8], [2, 8], 512,
                    [64, 32, 16], [1, 8], 16, 512, "vit_l", "sd21_base")


# ---------------------------------------------------------------------------------------- helpers
def synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed(fn: Callable[[], object], warmup: int, repeats: int, device: torch.device) -> float:
    """Median wall-clock seconds of `fn` (device work included)."""
    from bench_ms_deform_attn import time_it

    return statistics.median(time_it(fn, warmup, repeats, synchronizer(device)))


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


class PeakMemory:
    """Peak device memory of a block in bytes (None off CUDA): what the block allocates plus the weights
    of `models`, not counting other resident tensors (e.g. a reference model kept for a comparison)."""

    def __init__(self, device: torch.device, *models: torch.nn.Module, other: Optional[int] = None) -> None:
        self.device, self.models, self.bytes, self._other = device, models, None, other

    @staticmethod
    def other_bytes(device: torch.device, *models: torch.nn.Module) -> Optional[int]:
        """Bytes allocated now that are not `models`' weights (pass as `other` to keep them out of later peaks)."""
        if device.type != "cuda":
            return None
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated() - sum(model_bytes(m) for m in models)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            if self._other is None:
                self._other = self.other_bytes(self.device, *self.models)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self._other


def gib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / 2**30, 3)


def sample_images(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """n x 3 x height x width uint8 (the degradation benchmark's smooth patterns plus texture)."""
    from bench_degradation import test_images as square

    return (square(n, max(height, width), seed)[..., :height, :width] * 255).round().to(torch.uint8)


@contextlib.contextmanager
def random_fill_skipped() -> Iterator[None]:
    """While a model is built whose weights are copied in right after: `Tensor.uniform_` and `normal_`
    (what the initialisers call) do nothing, so building costs no random numbers (most of the time of a
    full-size build on a CPU)."""
    saved = {name: getattr(torch.Tensor, name) for name in ("uniform_", "normal_")}

    def skip(self, *args, **kwargs):
        return self

    try:
        for name in saved:
            setattr(torch.Tensor, name, skip)
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


def copy_weights(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Copy every parameter and buffer (non-persistent ones too) of `src` into `dst`, casting dtypes.

    Raises:
        RuntimeError: the two models do not have the same tensor names.
    """
    src_t = {**dict(src.named_parameters()), **dict(src.named_buffers())}
    dst_t = {**dict(dst.named_parameters()), **dict(dst.named_buffers())}
    if set(src_t) != set(dst_t):
        diff = sorted(set(src_t) ^ set(dst_t))
        raise RuntimeError(f"copy_weights: the models differ in {len(diff)} tensor names, e.g. {diff[:5]}")
    with torch.no_grad():
        for name, t in dst_t.items():
            t.copy_(src_t[name])


def build_rass(s: Settings, device: torch.device, frozen_dtype: str, reference: Optional[torch.nn.Module] = None):
    """(model, cfg) of RASS with MODEL.RASS.FROZEN_DTYPE; random weights (seed 0), or `reference`'s."""
    from detectron2.modeling import build_model

    from rass.config import setup_cfg

    cfg = setup_cfg(s.rass_config, s.rass_opts + ["MODEL.DEVICE", str(device), "MODEL.RASS.FROZEN_DTYPE", frozen_dtype])
    from rass.engine.model_build import seeded_init

    with seeded_init(0), (random_fill_skipped() if reference is not None else contextlib.nullcontext()):
        model = build_model(cfg)
    if reference is not None:
        copy_weights(model, reference)
    return model.eval(), cfg


def infer_inputs(images: torch.Tensor) -> List[Dict]:
    return [{"image": im, "height": im.shape[-2], "width": im.shape[-1]} for im in images]


def scores(model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """K x H x W float32 class scores of one image (CPU)."""
    from bench_rass_forward import clear_caches

    clear_caches(model)
    with torch.no_grad():
        return model(infer_inputs(image[None]))[0]["sem_seg"].float().cpu()


# --------------------------------------------------------------------------------------- sections
def bench_rass_infer(s: Settings, device: torch.device, warmup: int, repeats: int, state: Dict) -> List[Dict]:
    from bench_rass_forward import clear_caches

    rows, reference_scores = [], {}
    images = {hw: sample_images(max(s.batches), *hw, seed=1) for hw in s.sizes}
    for dtype in s.dtypes:
        t0 = time.perf_counter()
        ref = state.get("rass_fp32")
        model, cfg = build_rass(s, device, dtype, None if dtype == "float32" else ref)
        build_s = time.perf_counter() - t0
        if dtype == "float32":
            state["rass_fp32"], state["rass_cfg"] = model, cfg
        for hw in s.sizes:
            for b in s.batches:
                inputs = infer_inputs(images[hw][:b])

                def call():
                    clear_caches(model)
                    with torch.no_grad():
                        model(inputs)

                with PeakMemory(device, model) as mem:
                    sec = timed(call, warmup, repeats, device)
                rows.append({"name": f"RASS infer {hw[0]}x{hw[1]} {DTYPE_NAMES[dtype]} b{b}", "dtype": dtype,
                             "size": list(hw), "batch": b, "s_per_image": sec / b, "images_per_s": b / sec,
                             "peak_gib": gib(mem.bytes), "build_s": round(build_s, 1)})
            out = scores(model, images[hw][0])
            if dtype == "float32":
                reference_scores[hw] = out
            else:
                ref_out = reference_scores[hw]
                rel = float((out - ref_out).norm() / ref_out.norm().clamp_min(1e-12))
                agree = float((out.argmax(0) == ref_out.argmax(0)).float().mean())
                ok = bool(torch.isfinite(out).all()) and rel < SCORE_TOLERANCE[dtype]
                rows.append({"name": f"check {DTYPE_NAMES[dtype]} vs fp32 scores {hw[0]}x{hw[1]}", "check": True,
                             "ok": ok, "rel_l2_error": rel, "argmax_agreement": agree,
                             "tolerance": SCORE_TOLERANCE[dtype]})
        if dtype != "float32":
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def bench_rass_train(s: Settings, device: torch.device, warmup: int, repeats: int, state: Dict) -> List[Dict]:
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.utils.events import EventStorage

    from rass.solver import build_optimizer

    model, cfg = state.pop("rass_fp32", None), state.pop("rass_cfg", None)
    if model is None:  # rass_infer did not run (--only): build it here
        model, cfg = build_rass(s, device, "float32")
    model.train()
    other = PeakMemory.other_bytes(device, model)  # before the optimizer: its moments count in every peak
    optimizer = build_optimizer(cfg, model)
    amp = device.type == "cuda"
    k = model.sem_seg_head.num_classes
    g = torch.Generator().manual_seed(2)
    rows = []
    for b in s.train_batches:
        images = sample_images(b, s.train_size, s.train_size, seed=3)
        cells = torch.randint(0, k, (b, 8, 8), generator=g)  # an 8 x 8 grid of class regions per image
        labels = cells.repeat_interleave(s.train_size // 8, 1).repeat_interleave(s.train_size // 8, 2)
        batch = [{"image": im, "sem_seg": lab, "height": s.train_size, "width": s.train_size}
                 for im, lab in zip(images, labels)]
        trainer = (AMPTrainer if amp else SimpleTrainer)(model, itertools.repeat(batch), optimizer)
        with EventStorage(0) as storage, PeakMemory(device, model, other=other) as mem:
            def step():
                trainer.run_step()
                storage.iter += 1
                trainer.iter += 1

            sec = timed(step, warmup, repeats, device)
        losses = [v for v, _ in storage.history("total_loss").values()]
        rows.append({"name": f"RASS train iter {s.train_size}x{s.train_size} {'AMP' if amp else 'fp32'} b{b}",
                     "batch": b, "s_per_iter": sec, "images_per_s": b / sec, "peak_gib": gib(mem.bytes),
                     "amp": amp, "losses_finite": bool(losses) and all(math.isfinite(x) for x in losses)})
        optimizer.zero_grad(set_to_none=True)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def bench_msda(s: Settings, device: torch.device, warmup: int, repeats: int, state: Dict) -> List[Dict]:
    from bench_ms_deform_attn import bench, make_inputs

    from rass.ops import kernel_available, kernel_import_error, ms_deform_attn

    have_kernel = kernel_available(device)
    rows = []
    for b in s.msda_batches:
        inputs = make_inputs(b, s.msda_levels, 8, 32, 4, seed=0, device=str(device))
        res = {"torch": bench("torch", inputs, warmup, repeats)}
        if have_kernel:
            res["kernel"] = bench("kernel", inputs, warmup, repeats)
        for p in ("forward", "forward+backward"):
            t = res["torch"][p]
            k = res["kernel"][p] if have_kernel else None
            rows.append({"name": f"msda {p} b{b}", "torch_ms": 1e3 * t, "kernel_ms": None if k is None else 1e3 * k,
                         "speedup": None if k is None else t / k})
    if not have_kernel:
        rows.append({"name": "check msda kernel vs torch", "check": True, "ok": None,
                     "skipped": f"no kernel for {device.type}: {kernel_import_error() or 'built without it'}"})
        return rows
    value, shapes, starts, loc, w = make_inputs(2, s.msda_levels, 8, 32, 4, seed=1, device=str(device))
    outs, grads = {}, {}
    for backend in ("torch", "kernel"):
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, w)]
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], backend=backend)
        out.square().sum().backward()
        outs[backend], grads[backend] = out.detach(), [t.grad for t in leaves]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))

    fwd = rel(outs["kernel"], outs["torch"])
    bwd = max(rel(a, b) for a, b in zip(grads["kernel"], grads["torch"]))
    rows.append({"name": "check msda kernel vs torch", "check": True, "ok": max(fwd, bwd) < KERNEL_TOLERANCE,
                 "forward_max_rel": fwd, "grad_max_rel": bwd, "tolerance": KERNEL_TOLERANCE})
    return rows


def bench_degradation(s: Settings, device: torch.device, warmup: int, repeats: int, state: Dict) -> List[Dict]:
    from rass.data.degradation import build_degradation

    images = sample_images(s.degradation_batch, s.degradation_size, s.degradation_size, seed=4).float() / 255
    seeds = list(range(s.degradation_batch))
    engine = build_degradation("rass")
    rows = []
    for dev in ([torch.device("cpu")] + ([device] if device.type != "cpu" else [])):
        x = images.to(dev)
        sec = timed(lambda: engine(x, seeds=seeds), warmup, repeats, dev)
        rows.append({"name": f"degradation {dev.type} b{s.degradation_batch} {s.degradation_size}px",
                     "images_per_s": s.degradation_batch / sec, "s_per_batch": sec,
                     "cpu_threads": torch.get_num_threads() if dev.type == "cpu" else None})
    return rows


class Skipped(Exception):
    """A section that cannot run here (the reason is its message)."""


def bench_glesam(s: Settings, device: torch.device, warmup: int, repeats: int, state: Dict) -> List[Dict]:
    """SAM vs GleSAM per image, from bench_glesam.py's model (PromptableSAM from configs/lqseg) and parts."""
    try:
        import bench_glesam
    except ImportError as e:
        raise Skipped(f"GleSAM modules not importable ({e})") from e
    args = argparse.Namespace(tiny=s.sam_variant == "tiny", variant=s.sam_variant, sd=s.glesam_arch, image_size=0)
    try:
        model = bench_glesam.build(args, str(device))  # seeded inside (seeded_init)
    except (KeyError, FileNotFoundError) as e:  # config keys or files of GleSAM not there yet
        raise Skipped(f"GleSAM config not available ({e})") from e
    calls = bench_glesam.part_calls(model, str(device))
    encoder, enhance, decoder = bench_glesam.ENCODER, bench_glesam.MERGED, bench_glesam.DECODER  # LoRA merged: the default
    side = int(model.transform.target)

    def run(parts: Sequence[str]) -> None:
        with torch.no_grad():
            for part in parts:
                calls[part]()

    rows = []
    for name, parts, module in (("SAM", (encoder, decoder), model.sam), ("GleSAM", (encoder, enhance, decoder), model)):
        with PeakMemory(device, module) as mem:
            sec = timed(lambda: run(parts), warmup, repeats, device)
        rows.append({"name": f"{name} {s.sam_variant} {side}x{side} b1", "s_per_image": sec, "images_per_s": 1 / sec,
                     "peak_gib": gib(mem.bytes)})
    rows[1]["overhead_vs_sam"] = rows[1]["s_per_image"] / rows[0]["s_per_image"]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


BENCHES = {"rass_infer": bench_rass_infer, "rass_train": bench_rass_train, "msda": bench_msda,
           "degradation": bench_degradation, "glesam": bench_glesam}


# -------------------------------------------------------------------------------------------- run
def environment(device: torch.device) -> Dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": str(device), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":  # PyTorch's defaults are left as they are (what users get); recorded here
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        env["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env


def run(args: argparse.Namespace) -> Dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA device (use --device cpu)")
    s = settings(args.tiny)
    results = {"tiny": args.tiny, "environment": environment(device), "settings": asdict(s), "sections": {}}
    start, state = time.perf_counter(), {}
    for name in RUN_ORDER:
        if name not in args.only:
            continue
        left = args.budget_s - (time.perf_counter() - start) if args.budget_s else None
        if left is not None and left < (1 if args.tiny else MIN_SECONDS[name]):
            results["sections"][name] = {"status": "skipped", "reason": f"time budget ({left:.0f} s left)"}
            continue
        t0 = time.perf_counter()
        try:
            rows = BENCHES[name](s, device, args.warmup, args.repeats, state)
            entry = {"status": "ok", "rows": rows}
        except Skipped as e:
            entry = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # recorded; the other sections still run
            traceback.print_exc()
            entry = {"status": "error", "reason": f"{type(e).__name__}: {e}".replace("\n", " ")[:300]}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = entry
        print(f"[bench_gpu] {name}: {entry['status']} in {entry['seconds']} s {entry.get('reason', '')}", flush=True)
        if args.json:
            from gpu_report import write_json

            write_json(args.json, results)
    return results


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    results = run(args)
    print(f"\nbench_gpu ({'tiny' if args.tiny else 'full size'}, {results['environment']})")
    from gpu_report import bench_rows, markdown

    print(markdown(bench_rows(results)))
    failed = [r["name"] for sec in results["sections"].values() for r in sec.get("rows", [])
              if r.get("check") and r.get("ok") is False]
    if failed:
        print(f"numerical checks FAILED: {failed}")
    return results


if __name__ == "__main__":
    main()
