#!/usr/bin/env python
"""Decoder time per prompt of SAM with and without Stable-SAM's plugins (DSP + DRP), on CPU.

    python tools/benchmarks/bench_stable_sam.py                     # tiny and vit_b, 1 and 8 prompts per image
    python tools/benchmarks/bench_stable_sam.py --variants vit_l --prompts 1 4 16 --repeats 10 --threads 2

Random weights (no file is read), eval mode, no_grad, one random image embedding. Each row times SAM's prompt
encoder + mask decoder on P box prompts decoded in one call (`sam_predict`), once plain and once with the
plugins active (the same `SamModel`; runs alternated), median of --repeats after a warm-up (wall time, and
the process's CPU time, steadier on a shared machine); time per prompt =
call time / P. The plugins are perturbed from their (identity) init so that every part computes; their cost
does not depend on the values. Prints a markdown table.

    python tools/benchmarks/bench_stable_sam.py --matrix                       # the matrix's cost, tiny models
    python tools/benchmarks/bench_stable_sam.py --matrix --models configs/lqseg/sam_vit_l.yaml \
        configs/lqseg/sam_hq_vit_l.yaml --dataset hqseg_dis_val --levels clean,lqseg_1 --limit 20

--matrix measures what the robustness matrix (`rass.engine.robustness_matrix.run_matrix`, the engine of
tools/eval_robustness_matrix.py) costs: each model (default: the tiny SAM, Stable-SAM and HQ-SAM configs, random
weights) on each level, one `run_matrix` call per (model, level) with the tool's settings (INPUT.PROMPT.IMAGE_SIZE
--image-size, the first model's TEST.PROMPT_QUALITY protocols, --limit images). Without --dataset a generated
promptable set (`lqseg_synthetic_test_clear`, tools/make_synthetic_lqseg.py's images, --limit of them) is written
to a temporary folder; the degraded copies go to a temporary cache, so the first model pays for each level's copy
(every image of the dataset, not only --limit) and the others reuse it (fingerprint check only). Per (model,
level): the model forward passes and prompts counted at the model (and their number from the protocol spec), the
degraded-copy time, the evaluation time (mapper + prompts + forwards + metrics; its forward part apart), time per
image and protocol; wall and process CPU time. Then a line extrapolating the run to HQ-SAM's four sets x the
tool's default levels, labelled as an extrapolation. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# HQ-SAM's four evaluation sets and their image counts (rass/data/datasets/hqseg.py), for the extrapolation.
HQSEG_EVAL_IMAGES = {"hqseg_dis_val": 470, "hqseg_thin_test": 500, "hqseg_coift": 280, "hqseg_hrsod": 400}
FULL_LEVELS = ("clean", "lqseg_1", "lqseg_2", "lqseg_3")  # tools/eval_robustness_matrix.py's default --levels


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", nargs="+", default=["tiny", "vit_b"], choices=["tiny", "vit_b", "vit_l", "vit_h"],
                   help="SAM sizes (the decoder is the same 256-d one; the grid is 16x16 for tiny, 64x64 otherwise)")
    p.add_argument("--prompts", nargs="+", type=int, default=[1, 8], help="prompts per decoder call")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep torch's default)")
    m = p.add_argument_group("--matrix: the robustness matrix's cost")
    m.add_argument("--matrix", action="store_true", help="measure the robustness matrix instead of the decoder")
    m.add_argument("--models", nargs="+", default=[os.path.join(_REPO, "configs", "lqseg", f"{n}.yaml")
                                                   for n in ("tiny_sam", "tiny_stable_sam", "tiny_sam_hq")],
                   help="CONFIG, CONFIG=WEIGHTS or NAME:CONFIG[=WEIGHTS] (default: configs/lqseg/tiny_sam.yaml, "
                        "tiny_stable_sam.yaml, tiny_sam_hq.yaml)")
    m.add_argument("--dataset", default="", help="registered promptable dataset (default: a generated "
                   "lqseg_synthetic_test_clear of --limit images in a temporary folder)")
    m.add_argument("--levels", default="clean,lqseg_1", help="comma-separated levels (default: %(default)s)")
    m.add_argument("--limit", type=int, default=4, help="images per level (first N by id; 0 = all; default: "
                   "%(default)s; also the generated set's size, 16 when 0)")
    m.add_argument("--image-size", type=int, default=0, help="INPUT.PROMPT.IMAGE_SIZE of every model (0 = as "
                   "stored, the tool's default)")
    m.add_argument("--seed", type=int, default=0, help="seed of the degraded copies and the generated set")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())

import torch  # noqa: E402

REPO = _REPO
sys.path.insert(0, REPO)

from rass.config import setup_cfg  # noqa: E402
from rass.modeling.sam import embedding_shape, sam_predict  # noqa: E402

TINY = os.path.join(REPO, "configs", "lqseg", "tiny_stable_sam.yaml")


def build(variant: str):
    """A StableSAM with random weights (tiny config; full sizes at 1024 px)."""
    from detectron2.modeling import build_model

    from rass.engine.model_build import seeded_init

    opts = ["MODEL.STABLE_SAM.STAGE", "none", "MODEL.DEVICE", "cpu"]
    if variant != "tiny":
        opts += ["MODEL.SAM.VARIANT", variant, "MODEL.SAM.IMAGE_SIZE", "1024"]
    with seeded_init():
        model = build_model(setup_cfg(TINY, opts)).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in model.plugins.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def time_decoder(model, num_prompts: int, repeats: int) -> Dict[str, float]:
    """Median seconds per prompt of the decoder call, plain and plugged."""
    c, h, w = embedding_shape(model.sam)
    side = int(model.sam.config.vision_config.image_size)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, c, h, w, generator=g)
    xy = torch.rand(num_prompts, 2, generator=g) * side * 0.5
    boxes = torch.cat([xy, xy + side * 0.4], dim=1)[None]
    runs: Dict[str, List[float]] = {"sam": [], "plugged": [], "sam_cpu": [], "plugged_cpu": []}

    def once(plugged: bool) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        if plugged:
            with model.plugins.active():
                sam_predict(model.sam, z, boxes=boxes)
        else:
            sam_predict(model.sam, z, boxes=boxes)
        key = "plugged" if plugged else "sam"
        runs[key].append(time.perf_counter() - start)
        runs[key + "_cpu"].append(time.process_time() - cpu)

    with torch.no_grad():
        once(False), once(True)  # warm-up
        for v in runs.values():
            v.clear()
        for _ in range(repeats):
            once(False)
            once(True)
    return {k: statistics.median(v) / num_prompts for k, v in runs.items()}


class _Clock:
    """Wall and process-CPU seconds since it was made (`lap`)."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> Tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


class CountedModel:
    """A promptable model that counts its forward passes and prompts and times its forwards.

    Args:
        model: the promptable model (input dicts -> outputs with "masks").
    """

    def __init__(self, model) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forwards, self.prompts, self.wall, self.cpu = 0, 0, 0.0, 0.0

    def __call__(self, batch: List[Dict]) -> List[Dict]:
        clock = _Clock()
        out = self.model(batch)
        wall, cpu = clock.lap()
        self.forwards += 1
        self.prompts += sum(len(d["boxes"] if "boxes" in d else d["point_coords"]) for d in batch)
        self.wall, self.cpu = self.wall + wall, self.cpu + cpu
        return out


def _synthetic_set(root: str, num_images: int, seed: int) -> str:
    """Write a generated promptable set (clean images only, as tools/make_synthetic_lqseg.py) and point
    ``lqseg_synthetic_test_clear`` at it ($RASS_LQSEG_SYNTHETIC_ROOT).

    Args:
        root: folder to write.
        num_images: images (one object each).
        seed: dataset seed.

    Returns:
        The dataset's registered name.
    """
    from rass.data.synthetic_masks import make_synthetic_lqseg

    make_synthetic_lqseg(root, seed, num_images, levels=(), min_size=96, max_size=192)  # the tool's default sizes
    os.environ["RASS_LQSEG_SYNTHETIC_ROOT"] = root
    return "lqseg_synthetic_test_clear"


def measure_matrix(specs: Sequence[Any], dataset: str, levels: Sequence[str], opts: Sequence[str], cache_dir: str,
                   limit: int, seed: int) -> Tuple[List[Dict[str, Any]], Any]:
    """Time one `run_matrix` call per (model, level), the model built once (its first call times the build).

    Args:
        specs: the models (`rass.engine.robustness_matrix.ModelSpec`).
        dataset: a registered promptable dataset.
        levels: "clean" and/or degradation presets.
        opts: KEY VALUE overrides of every model's config.
        cache_dir: folder of the degraded copies (empty at first: the first model pays for each copy).
        limit: images per level (0 = all).
        seed: seed of the degraded copies.

    Returns:
        (a row per (model, level): model, level, images, forwards, prompts and seconds (wall, CPU) of the build,
        the level's degraded copy, the evaluation and its forwards; the protocol spec of the run).
    """
    from detectron2.data import DatasetCatalog

    from rass.data.prompt_quality import ProtocolSpec
    from rass.engine.robustness_matrix import build_from_config, run_matrix

    rows: List[Dict[str, Any]] = []
    spec = None
    for m in specs:
        built: Dict[str, Any] = {}
        for level in levels:
            t: Dict[str, Any] = {}
            run = _Clock()

            def build(ms, t=t, run=run):
                t["copy"] = run.lap()  # run_matrix prepares the level's copy, then builds the model
                if "model" not in built:
                    clock = _Clock()
                    cfg, model = build_from_config(ms, opts)
                    built.update(cfg=cfg, model=CountedModel(model), build=clock.lap())
                    t["build"] = built["build"]
                built["model"].reset()
                t["eval_start"] = run.lap()
                return built["cfg"], built["model"]

            report = run_matrix([m], build, dataset, [level], spec=spec, cache_dir=cache_dir, seed=seed, limit=limit)
            end = run.lap()
            spec = spec or ProtocolSpec.from_config(built["cfg"])  # the first model's, for all (as the tool)
            counted = built["model"]
            rows.append({"model": m.name, "level": level, "images": report["run"]["num_images"],
                         "copied": len(DatasetCatalog.get(dataset)) if level != "clean" else 0,
                         "forwards": counted.forwards, "prompts": counted.prompts, "build": t.get("build"),
                         "copy": t["copy"], "eval": tuple(e - s for e, s in zip(end, t["eval_start"])),
                         "forward": (counted.wall, counted.cpu), "protocols": report["protocols"]})
    return rows, spec


def _s(pair: Any) -> str:
    return "-" if pair is None else f"{pair[0]:.2f}, {pair[1]:.2f}"


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def print_matrix_tables(rows: List[Dict[str, Any]], spec: Any, dataset: str) -> None:
    """Print the markdown tables of `measure_matrix`'s rows: passes, times per (model, level), the extrapolation.

    Args:
        rows: `measure_matrix`'s rows.
        spec: the protocol spec of the run.
        dataset: the dataset's name.
    """
    from rass.data.prompt_quality import is_random
    from rass.engine.robustness_matrix import _groups

    protocols = rows[0]["protocols"]
    per_image_fw = len(_groups(protocols))
    per_image_prompts = sum(spec.draws if is_random(p) else 1 for p in protocols)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; dataset {dataset}; one run_matrix call "
          f"per (model, level); times in s (wall, process CPU)")
    print()
    print("| protocols | draws K | forwards / image | prompts / image |")
    print("|---|---|---|---|")
    print(f"| {', '.join(protocols)} ({len(protocols)}) | {spec.draws} | {per_image_fw} (box protocols share one; "
          f"each points / box+points protocol one) | {per_image_prompts} (K per random protocol, 1 per fixed one) |")
    print()
    print("| model | level | images | forwards (counted / spec) | prompts (counted / spec) | model build "
          "| degraded copy | evaluation | its forwards | ms / image / protocol (wall, CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    copied = set()
    for r in rows:
        n = r["images"]
        if r["level"] == "clean":
            copy = "- (clean)"
        else:
            first = r["level"] not in copied
            copied.add(r["level"])
            copy = (f"first, {r['copied']} images: " if first else "cached: ") + _s(r["copy"])
        per = tuple(1e3 * v / max(1, n * len(protocols)) for v in r["eval"])
        print(f"| {r['model']} | {r['level']} | {n} | {r['forwards']} / {n * per_image_fw} "
              f"| {r['prompts']} / {n * per_image_prompts} | {_s(r['build'])} | {copy} | {_s(r['eval'])} "
              f"| {_s(r['forward'])} | {per[0]:.1f}, {per[1]:.1f} |")
    total = sum(HQSEG_EVAL_IMAGES.values())
    sets = ", ".join(f"{k} {v}" for k, v in HQSEG_EVAL_IMAGES.items())
    print()
    print(f"**Extrapolation (not measured)**: this run's per-image times x HQ-SAM's four sets ({sets} = {total:,} "
          f"images) x the tool's default levels ({', '.join(FULL_LEVELS)}) x these {len(protocols)} protocols. Only "
          f"as good as the images and models measured here: larger images and full-size models cost more per image.")
    print()
    print("| model | forwards | evaluation, extrapolated (wall, CPU) |")
    print("|---|---|---|")
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name and r["images"]]
        per = [sum(r["eval"][i] for r in mine) / sum(r["images"] for r in mine) for i in (0, 1)]
        n = total * len(FULL_LEVELS)
        print(f"| {name} | {n * per_image_fw:,} ({total:,} x {len(FULL_LEVELS)} x {per_image_fw}) "
              f"| {_h(per[0] * n)}, {_h(per[1] * n)} |")
    firsts = [r for r in rows if r["level"] != "clean" and r["copied"]]
    firsts = [r for i, r in enumerate(firsts) if r["level"] not in {q["level"] for q in firsts[:i]}]
    if firsts:
        per = [sum(r["copy"][i] for r in firsts) / sum(r["copied"] for r in firsts) for i in (0, 1)]
        n = total * (len(FULL_LEVELS) - 1)
        print(f"| degraded copies, once for all models | {n:,} images ({total:,} x {len(FULL_LEVELS) - 1}) "
              f"| {_h(per[0] * n)}, {_h(per[1] * n)} |")


def matrix_main(args: argparse.Namespace) -> int:
    """--matrix: measure the robustness matrix's cost and print the tables."""
    import tempfile

    from rass.engine.robustness import parse_levels
    from rass.engine.robustness_matrix import parse_model_specs
    from rass.utils.cli import report_user_error
    from rass.utils.errors import UserError, UserValueError

    old_root = os.environ.get("RASS_LQSEG_SYNTHETIC_ROOT")
    try:
        if args.limit < 0 or args.image_size < 0:
            raise UserValueError(f"--limit {args.limit} / --image-size {args.image_size}: expected numbers >= 0")
        specs = parse_model_specs(args.models)
        levels = parse_levels(args.levels)
        with tempfile.TemporaryDirectory(prefix="bench_matrix_") as tmp:
            dataset = args.dataset or _synthetic_set(os.path.join(tmp, "data"), args.limit or 16, args.seed)
            rows, spec = measure_matrix(specs, dataset, levels, ["INPUT.PROMPT.IMAGE_SIZE", str(args.image_size)],
                                        os.path.join(tmp, "cache"), args.limit, args.seed)
    except UserError as e:
        return report_user_error(e)
    finally:
        if old_root is None:
            os.environ.pop("RASS_LQSEG_SYNTHETIC_ROOT", None)
        else:
            os.environ["RASS_LQSEG_SYNTHETIC_ROOT"] = old_root
    print_matrix_tables(rows, spec, dataset)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.matrix:
        return matrix_main(args)
    rows = []
    for variant in args.variants:
        model = build(variant)
        counts = model.plugins.part_counts()
        for p in args.prompts:
            t = time_decoder(model, p, args.repeats)
            rows.append((variant, p, t["sam"] * 1e3, t["plugged"] * 1e3, t["sam_cpu"] * 1e3, t["plugged_cpu"] * 1e3,
                         counts["total"]))
        del model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, median of {args.repeats}")
    print("| SAM | prompts / call | SAM decoder ms / prompt (wall, CPU) | + plugins ms / prompt (wall, CPU) "
          "| overhead (CPU) | plugin params |")
    print("|---|---|---|---|---|---|")
    for variant, p, sam_ms, plug_ms, sam_cpu, plug_cpu, params in rows:
        print(f"| {variant} | {p} | {sam_ms:.2f}, {sam_cpu:.2f} | {plug_ms:.2f}, {plug_cpu:.2f} "
              f"| {100 * (plug_cpu / sam_cpu - 1):+.0f}% | {params:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
