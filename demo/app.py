#!/usr/bin/env python
"""Browser demo: degrade a photo, segment it with RASS, and prompt SAM / GleSAM on it.

    .venv/bin/python demo/app.py                                   # tiny / quickstart models, CPU
    .venv/bin/python demo/app.py --config-file configs/ade20k/semantic-segmentation/rass_sd21_bs16_160k.yaml \\
        --opts MODEL.WEIGHTS weights/rass.pth \\
        --sam-config-file configs/lqseg/glesam_vitl_sd21.yaml \\
        --sam-opts MODEL.SAM.CHECKPOINT weights/sam_vit_l_0b3195.pth \\
                   MODEL.GLESAM.LORA_PATH weights/glesam/pytorch_lora_weights.safetensors

Starts a local page (gradio) on 127.0.0.1 and prints its URL. Upload an image or pick one of the
bundled examples, choose a degradation (none, lqseg_1/2/3, rass) and a seed, then
- RASS tab: class overlays of the clean and the degraded image, the classes present, the tags the
  tagger read, the time taken; downloads: overlay and class-id PNGs;
- SAM / GleSAM tab: click points (positive / negative) or two box corners on the degraded image;
  SAM's and GleSAM's masks side by side, their predicted IoUs and the IoU between them; downloads:
  overlay and mask PNGs.
Without `--config-file` the RASS tab runs the quickstart's trained model when scripts/quickstart.sh
has written output/quickstart/model_final.pth, else the tiny configuration with random weights;
without `--sam-config-file` the SAM tab runs the tiny random SAM + CRE UNet. The page says which
parts have random weights (`--init-seed` seeds them: the same masks every start). Problems (an
unreadable or huge upload, missing weights, invalid values sent to the page's API) are shown on
the page; the server keeps serving. Uploads, results and gradio's file cache stay in a private
temporary folder (mode 0700; the newest ~50 requests' files are kept) that is removed when the
server stops. Ctrl-C (or SIGTERM) stops it.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only what parsing the arguments needs is imported here: `--help` and argument errors answer at
# once; the models, torch and gradio come in `main` after them.
from rass.app.inputs import DEFAULT_MAX_PIXELS  # noqa: E402
from rass.engine.model_build import add_init_seed_argument  # noqa: E402
from rass.utils.cli import DEBUG_FLAG, DEBUG_HELP, enable_debug, run_cli  # noqa: E402
from rass.utils.errors import UserError  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="the RASS tab's semantic-segmentation config (default: the quickstart's tiny RASS)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides of --config-file")
    p.add_argument("--sam-config-file", default=None, metavar="FILE",
                   help="the SAM / GleSAM tab's configs/lqseg config (default: configs/lqseg/tiny_glesam.yaml)")
    p.add_argument("--sam-opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides of --sam-config-file")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest accepted upload, width x height (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colours in the overlays (0..1)")
    add_init_seed_argument(p)
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    args = p.parse_args(argv)
    for flag, opts in (("--opts", args.opts), ("--sam-opts", args.sam_opts)):
        if len(opts) % 2:
            p.error(f"{flag} takes KEY VALUE pairs, got {len(opts)} words: {' '.join(opts)}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be 0..65535, got {args.port}")
    if args.max_pixels < 1 or not 0.0 <= args.opacity <= 1.0:
        p.error("--max-pixels must be >= 1 and --opacity in [0, 1]")
    if args.debug:
        enable_debug()
    return args


def free_port(host: str) -> int:
    """A port that is free on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    for path in (args.config_file, args.sam_config_file):
        if path and not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
    from rass.app.inputs import Downloads
    from rass.app.models import choose_rass_model, choose_sam_model, load_backend
    from rass.app.rass_tab import RassBackend
    from rass.app.sam_tab import SamBackend
    from rass.app.workdir import WorkDir

    work = WorkDir()
    work.use_for_gradio()  # before gradio is imported and builds the page
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so that `finally` cleans up
    try:
        from rass.app.examples import write_examples
        from rass.app.session import DemoApp

        print("building the models ...", flush=True)
        rass = load_backend(choose_rass_model(args.config_file, args.opts),
                            lambda cfg: RassBackend.from_cfg(cfg, opacity=args.opacity), seed=args.init_seed)
        sam = load_backend(choose_sam_model(args.sam_config_file, args.sam_opts),
                           lambda cfg: SamBackend.from_cfg(cfg, opacity=args.opacity), seed=args.init_seed)
        for name, loaded in (("RASS", rass), ("SAM / GleSAM", sam)):
            if loaded.error:
                print(f"warning: the {name} tab has no model: {loaded.error}", file=sys.stderr)
        app = DemoApp(rass, sam, Downloads(work.downloads), max_pixels=args.max_pixels)
        examples = write_examples(work.examples)

        from rass.app.page import CSS, THEME, build_page

        page = build_page(app, examples, before=work.prune_gradio_cache)
        port = args.port or free_port(args.host)
        page.queue(default_concurrency_limit=1)
        try:
            page.launch(server_name=args.host, server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[work.root], max_file_size="200mb", theme=THEME, css=CSS, ssr_mode=False)
        except OSError as e:  # the port is taken, the address is not this machine's
            raise UserError(f"cannot serve on {args.host}:{port} ({e})",
                            hint="choose another --port (0: any free port) or --host") from None
        work.keep_page_files()  # the examples' copies in gradio's cache stay while the page is served
        print(f"RASS demo running at http://{args.host}:{port}/ (Ctrl-C to stop)", flush=True)
        try:
            page.block_thread()
        finally:
            page.close()
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        work.close()
    return 0


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    run_cli(main)
