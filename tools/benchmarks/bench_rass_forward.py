#!/usr/bin/env python
"""CPU latency and memory of one forward of the full-size RASS model, split by part.

    python tools/benchmarks/bench_rass_forward.py                     # 512x512, fp32, 2 threads
    python tools/benchmarks/bench_rass_forward.py --repeats 3 --threads 2 --tagger none

The released configuration (configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml) is built
on the CPU with random weights (no weight file is read), in eval mode, float32, under no_grad, and
one 512x512 image goes through `model([{"image": ...}])` (one sliding window covers it). Forward
hooks time each part (tagger, text encoder, VAE encoder, UNet, projections, head, transformer
decoder; pixel decoder = head - transformer decoder; the rest — normalisation, padding,
post-processing — is "other"; the pixel decoder's memory column is the whole head's). A sampling
thread reads the process's resident memory (RSS) every 2 ms: per part, the peak RSS during the part
minus the RSS when it started; overall, the peak RSS of the process and its increase over the
weights. Tag and prompt-embedding caches are cleared before every run, so each run does all the work.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Dict, List


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512, help="square input side")
    p.add_argument("--repeats", type=int, default=2, help="timed forwards (after one warm-up)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--tagger", default="ram", help="tagger name (ram as released, or none)")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml")
PARTS = OrderedDict([
    ("tagger", "backbone.tagger"),
    ("text encoder", "backbone.text_encoder"),
    ("VAE encoder", "backbone.vae.encoder"),
    ("UNet", "backbone.unet"),
    ("projections", "backbone.projection"),
    ("head", "sem_seg_head"),
    ("transformer decoder", "sem_seg_head.predictor"),
])
# Printed rows: the pixel decoder runs through `forward_features` (no module hook), so its time is
# the head's minus the transformer decoder's.
ROWS = ["tagger", "text encoder", "VAE encoder", "UNet", "projections", "pixel decoder", "transformer decoder",
        "other", "total"]
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class RssSampler:
    """Background thread tracking, for every open measurement, the peak RSS since it was opened."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self._open: Dict[str, List[int]] = {}  # key -> [rss at start, peak]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = rss_bytes()
            with self._lock:
                for rec in self._open.values():
                    rec[1] = max(rec[1], now)
            time.sleep(self.period)

    def start(self, key: str) -> None:
        now = rss_bytes()
        with self._lock:
            self._open[key] = [now, now]

    def stop(self, key: str) -> int:
        """Peak RSS increase (bytes) since `start(key)`."""
        now = rss_bytes()
        with self._lock:
            start, peak = self._open.pop(key)
        return max(peak, now) - start

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def random_weight_opts(tagger: str) -> List[str]:
    """Overrides of CONFIG that build the released architecture with random weights (no file is read)."""
    return ["MODEL.RASS.SD_PATH", "", "MODEL.RASS.RESTORATION_LORA_PATH", "",
            "MODEL.TAGGER.NAME", tagger, "MODEL.TAGGER.RAM.WEIGHTS", "", "MODEL.TAGGER.RAM.TAG_LIST", "",
            "MODEL.TAGGER.RAM.THRESHOLDS", "", "MODEL.TAGGER.DAPE.WEIGHTS", "", "MODEL.TAGGER.RAM.CACHE", "False"]


def build(tagger: str, threads: int):
    from detectron2.modeling import build_model

    from rass.config import setup_cfg
    from rass.engine.model_build import seeded_init

    torch.set_num_threads(threads)
    with seeded_init():
        model = build_model(setup_cfg(CONFIG, ["MODEL.DEVICE", "cpu"] + random_weight_opts(tagger)))
    return model.eval()


def clear_caches(model) -> None:
    model.backbone.prompt_cache.clear()
    cache = getattr(model.backbone.tagger, "_cache", None)
    if hasattr(cache, "clear"):
        cache.clear()


def run(model, image: torch.Tensor, sampler: RssSampler) -> Dict[str, Dict[str, float]]:
    """One timed forward; part -> {"s": seconds, "mem": peak RSS increase in bytes}."""
    times: Dict[str, float] = defaultdict(float)
    mem: Dict[str, int] = defaultdict(int)
    started: Dict[str, float] = {}
    handles = []
    for part, path in PARTS.items():
        module = model.get_submodule(path)

        def pre(_m, _i, part=part):
            started[part] = time.perf_counter()
            sampler.start(part)

        def post(_m, _i, _o, part=part):
            times[part] += time.perf_counter() - started.pop(part)
            mem[part] = max(mem[part], sampler.stop(part))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    clear_caches(model)
    sampler.start("total")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])
    finally:
        for h in handles:
            h.remove()
    total = time.perf_counter() - t0
    total_mem = sampler.stop("total")
    out = OrderedDict((p, {"s": times[p], "mem": mem[p]}) for p in PARTS)
    out["pixel decoder"] = {"s": times["head"] - times["transformer decoder"], "mem": mem["head"]}
    out["other"] = {"s": total - sum(times[p] for p in PARTS if p != "transformer decoder"), "mem": 0}
    out["total"] = {"s": total, "mem": total_mem}
    return out


def count(model, prefix: str) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix + "."))


def main() -> None:
    p = build_parser()
    args = p.parse_args()
    torch.set_flush_denormal(True)

    t0 = time.perf_counter()
    rss0 = rss_bytes()
    model = build(args.tagger, args.threads)
    build_s, weights = time.perf_counter() - t0, rss_bytes() - rss0
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, args.size, args.size), generator=g, dtype=torch.uint8)
    with RssSampler() as sampler:
        run(model, image, sampler)  # warm-up
        runs: List[Dict[str, Dict[str, float]]] = [run(model, image, sampler) for _ in range(args.repeats)]
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    print(f"RASS forward, {args.size}x{args.size}, float32, no_grad, eval, CPU, {args.threads} threads, "
          f"tagger={args.tagger}, torch {torch.__version__}")
    print(f"build {build_s:.1f} s; weights resident {weights / 2**30:.2f} GiB; "
          f"process peak RSS {process_peak / 2**30:.2f} GiB")
    header = f"{'part':<22}{'params (M)':>12}{'median s':>11}{'share':>8}{'peak +RSS (MiB)':>17}"
    print(header)
    print("-" * len(header))
    total_med = statistics.median(r["total"]["s"] for r in runs)
    paths = dict(PARTS, **{"pixel decoder": "sem_seg_head.pixel_decoder"})
    for part in ROWS:
        med = statistics.median(r[part]["s"] for r in runs)
        peak = max(r[part]["mem"] for r in runs) / 2**20
        params = (count(model, paths[part]) / 1e6) if part in paths else (
            sum(q.numel() for q in model.parameters()) / 1e6 if part == "total" else float("nan"))
        print(f"{part:<22}{params:>12.1f}{med:>11.2f}{100 * med / total_med:>7.1f}%{peak:>17.0f}")
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    print(f"parameters: total {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M, trainable "
          f"{trainable / 1e6:.2f}M (paper: 1788.7M / 27.9M)")


if __name__ == "__main__":
    main()
