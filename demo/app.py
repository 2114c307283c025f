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
  overlay and mask PNGs;
- MGD-SAM2 tab: MGD-SAM2's prompt-free mask of the degraded image next to plain SAM2's for a box (two
  corners clicked on the image); downloads: both masks at the image's own size (0/255 PNGs) and overlays.
  `--mgd-config-file configs/dis5k/mgd_sam2_hiera_b+.yaml --mgd-opts MODEL.WEIGHTS model_epoch_best.pth
  MODEL.MGD_SAM2.SAM2_INIT sam2.1_hiera_base_plus.pt` runs the released MGD-SAM2 and, for the box, SAM 2.1
  (the weights MGD-SAM2 starts from); without it the tiny MGD-SAM2 and tiny SAM2 with random weights.
`--robustsam-config-file configs/lqseg/robustsam_vit_l.yaml --robustsam-opts MODEL.ROBUSTSAM.CHECKPOINT
robustsam_checkpoint_l.pth` adds RobustSAM's mask as a third panel of the SAM / GleSAM tab (same clicks, its IoU
with the other masks, its mask in the downloads); without it the tab has no RobustSAM panel.
`--extra-sam-config NAME=CONFIG [NAME=CONFIG ...]` adds one more mask panel per promptable model (Stable-SAM,
HQ-SAM, RobustSAM, another SAM / GleSAM; NAME: letters, digits, "-" and "_"), each with its own overrides
`--extra-sam-opts NAME KEY VALUE [KEY VALUE ...]` (repeat the flag per model), e.g.
    --extra-sam-config Stable-SAM=configs/lqseg/stable_sam_vit_l.yaml HQ-SAM=configs/lqseg/sam_hq_vit_l.yaml \
    --extra-sam-opts Stable-SAM MODEL.SAM.CHECKPOINT sam_vit_l_0b3195.pth MODEL.STABLE_SAM.PLUGIN_WEIGHTS plugins.pth \
    --extra-sam-opts HQ-SAM MODEL.SAM_HQ.CHECKPOINT sam_hq_vit_l.pth
The SAM tab's "Perturb my box" (noise scale 0-0.5, seed) replaces the drawn box by one seeded noisy draw (HQ-SAM's
box noise, as the prompt-quality protocol) and shows every panel's mask for that same box, with its IoU against
the same model's mask for the drawn box.
Without `--config-file` the RASS tab runs the quickstart's trained model when scripts/quickstart.sh
has written output/quickstart/model_final.pth, else the tiny configuration with random weights;
without `--sam-config-file` the SAM tab runs the quickstart's trained tiny promptable model
(output/quickstart/promptable/model_final.pth) when it exists, else the tiny random SAM + CRE UNet.
The page says in plain words whether a tab's results mean anything (random weights: they do not;
`--init-seed` seeds them: the same masks every start), with the configs and weight files folded
away under "Technical details". Small images are shown enlarged; long steps show named stages. Problems (an
unreadable or huge upload, missing weights, invalid values sent to the page's API) are shown on
the page; the server keeps serving. Uploads, results and gradio's file cache stay in a private
temporary folder (mode 0700; the newest ~50 requests' files are kept) that is removed when the
server stops. Ctrl-C (or SIGTERM) stops it.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only what parsing the arguments needs is imported here: `--help` and argument errors answer at
# once; the models, torch and gradio come in `main` after them.
from rass.utils.cli import DEBUG_FLAG, DEBUG_HELP, add_init_seed_argument, enable_debug, run_cli  # noqa: E402
from rass.utils.choices import DEFAULT_MAX_PIXELS  # noqa: E402
from rass.utils.errors import UserError  # noqa: E402

# NAME of --extra-sam-config: it names a page element and download files.
EXTRA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")


def parse_extra_sams(configs: Sequence[str], opts: Sequence[Sequence[str]],
                     reserved: Sequence[str] = ("SAM", "GleSAM")) -> Dict[str, Tuple[str, List[str]]]:
    """NAME -> (config, overrides) of `--extra-sam-config NAME=CONFIG ...` and `--extra-sam-opts NAME KEY VALUE ...`.

    Args:
        configs: the NAME=CONFIG words.
        opts: one word list per --extra-sam-opts.
        reserved: names the tab already uses.

    Raises:
        ValueError: a malformed word, a name given twice or reserved, overrides for no such name or not in pairs.
    """
    out: Dict[str, Tuple[str, List[str]]] = {}
    for item in configs:
        name, sep, config = item.partition("=")
        if not sep or not config or not EXTRA_NAME.match(name):
            raise ValueError(f"--extra-sam-config {item!r}: expected NAME=CONFIG (NAME: letters, digits, '-', '_'), "
                             f"e.g. Stable-SAM=configs/lqseg/stable_sam_vit_l.yaml")
        if name in out or name in reserved:
            raise ValueError(f"--extra-sam-config: the name {name!r} is "
                             f"{'given twice' if name in out else 'already a mask of the SAM tab'}; choose another")
        out[name] = (config, [])
    for words in opts:
        name, pairs = words[0], list(words[1:])
        if name not in out:
            raise ValueError(f"--extra-sam-opts {name}: no --extra-sam-config {name}=CONFIG (names: "
                             f"{', '.join(out) or 'none'}); the first word is the model's NAME")
        if not pairs or len(pairs) % 2:
            raise ValueError(f"--extra-sam-opts {name}: expected KEY VALUE pairs after the name, got "
                             f"{len(pairs)} word(s)")
        out[name][1].extend(pairs)
    return out


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="the RASS tab's semantic-segmentation config (default: the quickstart's tiny RASS)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides of --config-file")
    p.add_argument("--sam-config-file", default=None, metavar="FILE",
                   help="the SAM / GleSAM tab's configs/lqseg config (default: the quickstart's trained "
                        "configs/quickstart/tiny_promptable.yaml when it exists, else configs/lqseg/tiny_glesam.yaml)")
    p.add_argument("--sam-opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides of --sam-config-file")
    p.add_argument("--mgd-config-file", default=None, metavar="FILE",
                   help="the MGD-SAM2 tab's configs/dis5k config (default: configs/dis5k/tiny_mgd_sam2.yaml, random "
                        "weights); its MODEL.MGD_SAM2.SAM2_INIT is the SAM2 compared with a box")
    p.add_argument("--mgd-opts", nargs="+", default=[], metavar="KEY VALUE", help="overrides of --mgd-config-file")
    p.add_argument("--robustsam-config-file", default=None, metavar="FILE",
                   help="a configs/lqseg/robustsam_*.yaml config: RobustSAM's mask as a third panel of the SAM tab "
                        "(default: none)")
    p.add_argument("--robustsam-opts", nargs="+", default=[], metavar="KEY VALUE",
                   help="overrides of --robustsam-config-file (e.g. MODEL.ROBUSTSAM.CHECKPOINT FILE)")
    p.add_argument("--extra-sam-config", nargs="+", action="extend", default=[], metavar="NAME=CONFIG",
                   help="more masks on the SAM tab, one per promptable config (e.g. Stable-SAM=configs/lqseg/"
                        "stable_sam_vit_l.yaml HQ-SAM=configs/lqseg/sam_hq_vit_l.yaml; default: none)")
    p.add_argument("--extra-sam-opts", nargs="+", action="append", default=[], metavar="NAME KEY VALUE",
                   help="overrides of one --extra-sam-config model: its NAME, then KEY VALUE pairs (repeat per model)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest accepted upload, width x height (default {DEFAULT_MAX_PIXELS})")
    p.add_argument("--opacity", type=float, default=0.5, help="weight of the colours in the overlays (0..1)")
    add_init_seed_argument(p)
    p.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)
    args = p.parse_args(argv)
    for flag, opts in (("--opts", args.opts), ("--sam-opts", args.sam_opts), ("--mgd-opts", args.mgd_opts),
                       ("--robustsam-opts", args.robustsam_opts)):
        if len(opts) % 2:
            p.error(f"{flag} takes KEY VALUE pairs, got {len(opts)} words: {' '.join(opts)}")
    if args.robustsam_opts and not args.robustsam_config_file:
        p.error("--robustsam-opts given without --robustsam-config-file (e.g. configs/lqseg/robustsam_vit_l.yaml)")
    try:
        args.extra_sams = parse_extra_sams(args.extra_sam_config, args.extra_sam_opts,
                                           ("SAM", "GleSAM") + (("RobustSAM",) if args.robustsam_config_file else ()))
    except ValueError as e:
        p.error(str(e))
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
    for path in (args.config_file, args.sam_config_file, args.mgd_config_file, args.robustsam_config_file,
                 *(config for config, _ in args.extra_sams.values())):
        if path and not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")
    from rass.app.inputs import Downloads
    from rass.app.mgd_tab import MgdSegmenter
    from rass.app.models import (choose_extra_sam_model, choose_mgd_model, choose_rass_model,
                                 choose_robustsam_model, choose_sam_model, load_backend)
    from rass.app.rass_tab import RassBackend
    from rass.app.sam_tab import SamBackend, extra_sam_predictor, robustsam_predictor
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
        mgd = load_backend(choose_mgd_model(args.mgd_config_file, args.mgd_opts),
                           lambda cfg: MgdSegmenter.from_cfg(cfg, opacity=args.opacity), seed=args.init_seed)
        robust = None
        if args.robustsam_config_file:
            robust = load_backend(choose_robustsam_model(args.robustsam_config_file, args.robustsam_opts),
                                  robustsam_predictor, seed=args.init_seed)
        extra = {name: load_backend(choose_extra_sam_model(name, config, opts), extra_sam_predictor,
                                    seed=args.init_seed)
                 for name, (config, opts) in args.extra_sams.items()}
        for name, loaded in (("RASS", rass), ("SAM / GleSAM", sam), ("MGD-SAM2", mgd), ("RobustSAM", robust),
                             *extra.items()):
            if loaded is None:
                continue
            if loaded.error:
                print(f"warning: the {name} tab has no model: {loaded.error}", file=sys.stderr)
        app = DemoApp(rass, sam, Downloads(work.downloads), max_pixels=args.max_pixels, mgd=mgd, robustsam=robust,
                      extra_sams=extra)
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
