#!/usr/bin/env python
"""Time the browser demo's actions (what a visitor waits for), without the browser.

    python tools/benchmarks/bench_demo.py                                   # the demo's default models
    python tools/benchmarks/bench_demo.py --sam-config-file configs/lqseg/glesam_vitl_sd21.yaml --skip-rass
    python tools/benchmarks/bench_demo.py --image photo.jpg --threads 2

One image (default: matplotlib's 512 x 600 sample photo, else a synthetic scene) goes through the
actions of `rass.app.session.DemoApp` in the order a visitor clicks: load + degrade (every preset),
RASS on the clean and the degraded image, then SAM / GleSAM clicks: the first click on an image
(SAM's image encoder once for both methods, GleSAM's UNet once, two decoders) and the next clicks
(the embeddings are cached: decoders only). Random weights where no weights are configured. Prints
one table of seconds (median of --repeats where repeated).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Tuple


def build_parser() -> argparse.ArgumentParser:
    """The command line: defined and parsed before the heavy imports below (see the check after it)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, help="the RASS tab's config (default: as demo/app.py)")
    p.add_argument("--opts", nargs="+", default=[], help="KEY VALUE overrides of --config-file")
    p.add_argument("--sam-config-file", default=None, help="the SAM tab's config (default: as demo/app.py)")
    p.add_argument("--sam-opts", nargs="+", default=[], help="KEY VALUE overrides of --sam-config-file")
    p.add_argument("--image", default=None, help="image to use (default: the first bundled example)")
    p.add_argument("--skip-rass", action="store_true", help="only the SAM / GleSAM actions")
    p.add_argument("--repeats", type=int, default=3, help="runs of the repeated actions (median)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: keep torch's default)")
    return p


if __name__ == "__main__":
    from rass.utils.cli import parse_before_imports

    parse_before_imports(build_parser())  # --help and argument errors answer before torch & co.

import torch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rass.app.inputs import DEGRADATIONS, Downloads  # noqa: E402
from rass.app.models import Loaded, choose_rass_model, choose_sam_model, load_backend  # noqa: E402
from rass.app.rass_tab import RassBackend  # noqa: E402
from rass.app.sam_tab import SamBackend  # noqa: E402
from rass.app.examples import write_examples  # noqa: E402
from rass.app.session import DemoApp  # noqa: E402


def timed(fn: Callable[[], object], repeats: int = 1) -> Tuple[float, object]:
    """(median seconds over `repeats` calls, the last result)."""
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        image = args.image or write_examples(os.path.join(work, "examples"))[0]
        rows: List[Tuple[str, str]] = []
        build_s, sam = timed(lambda: load_backend(choose_sam_model(args.sam_config_file, args.sam_opts),
                                                  SamBackend.from_cfg))
        rows.append(("build the SAM / GleSAM model(s)", f"{build_s:.2f}"))
        rass = Loaded(choose_rass_model(None), error="skipped")
        if not args.skip_rass:
            build_s, rass = timed(lambda: load_backend(choose_rass_model(args.config_file, args.opts),
                                                       RassBackend.from_cfg))
            rows.append(("build the RASS model", f"{build_s:.2f}"))
        for loaded in (rass, sam):
            if loaded.error and loaded.error != "skipped":
                print(f"error: {loaded.error}", file=sys.stderr)
                return 2
        app = DemoApp(rass, sam, Downloads(os.path.join(work, "downloads")))
        seconds, out = timed(lambda: app.load(image, "none", 0))
        state = out["state"]
        h, w = state["clean"].shape[:2]
        rows.append((f"load {os.path.basename(image)} ({w} x {h})", f"{seconds:.3f}"))
        for preset in DEGRADATIONS[1:]:
            seconds, out = timed(lambda: app.degrade(state, preset, 0), args.repeats)
            rows.append((f"degrade: {preset}", f"{seconds:.3f}"))
        state = out["state"]
        if not args.skip_rass:
            app.run_rass(state)  # warm-up
            seconds, _ = timed(lambda: app.run_rass(state), args.repeats)
            rows.append(("RASS tab: clean + degraded image, overlays, downloads", f"{seconds:.2f}"))
        methods = " + ".join(sam.backend.methods)
        seconds, out = timed(lambda: app.click(state, w / 2, h / 2, "positive point", True))
        rows.append((f"first click on the image ({methods}: encoder once, all decoders)", f"{seconds:.2f}"))
        state = out["state"]
        seconds, _ = timed(lambda: app.click(state, w / 3, h / 3, "negative point", True), args.repeats)
        rows.append((f"next click on the same image ({methods}: decoders only)", f"{seconds:.3f}"))
    width = max(len(r[0]) for r in rows)
    print(f"threads: {torch.get_num_threads()}, device: cpu unless the configs say otherwise")
    print(f"| {'action'.ljust(width)} | seconds |\n|{'-' * (width + 2)}|---------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value:>7} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
