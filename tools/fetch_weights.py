#!/usr/bin/env python
"""Fetch released weights from the Hugging Face hub into their default paths; print how to get the rest.

Nothing downloads unless you name what to fetch. Examples:
    python tools/fetch_weights.py --list                   # every released file: where it goes, size, sha256
    python tools/fetch_weights.py sd21-base ram            # fetch from the hub into weights/
    python tools/fetch_weights.py sam-vit-l                # not on the hub: prints where to download it
    python tools/fetch_weights.py --verify sam-vit-l       # check a file you downloaded by hand

Hub files are downloaded with huggingface_hub into a staging folder next to their default path
(an interrupted download resumes when run again), checked against the published size and sha256
(where one is known; otherwise the sha256 is computed and printed) and then moved into place in one
rename: the default path holds either nothing or the whole checked file. A file that fails the check
is deleted. A file already at its default path is kept (checked where a sha256 is known).
The table (names, download locations, default paths, config keys, sizes, sha256) is
`rass/utils/model_zoo.py`; docs/MODEL_ZOO.md shows it.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import sys
from typing import TYPE_CHECKING, List, Optional, Sequence, TextIO

if TYPE_CHECKING:  # the table module is imported after parsing
    from rass.utils.model_zoo import ZooEntry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (standard library only: --help imports nothing heavy)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (see --list)")
    p.add_argument("--list", action="store_true", help="list every released file and data set, then exit")
    p.add_argument("--markdown", action="store_true", help="print the table of docs/MODEL_ZOO.md, then exit")
    p.add_argument("--verify", action="store_true",
                   help="do not download: check the files already at the default paths of NAME...")
    p.add_argument("--root", default=REPO,
                   help="folder the default paths (weights/..., datasets/...) are relative to "
                        "(default: the repository)")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) to fetch; default: main")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _fmt_size(size: Optional[int]) -> str:
    return "unknown" if size is None else f"{size:,} bytes"


def _entries(names: Sequence[str]) -> List["ZooEntry"]:
    from rass.utils.errors import UserKeyError
    from rass.utils.model_zoo import by_name

    table = by_name()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserKeyError(f"unknown name(s) {', '.join(repr(n) for n in unknown)}; known names: {', '.join(table)}",
                           hint="tools/fetch_weights.py --list describes each")
    return [table[n] for n in names]


def print_list(stream: Optional[TextIO] = None) -> None:
    """Print one block per entry of the table: name, what, where it goes, source, size, sha256."""
    from rass.utils.model_zoo import ZOO

    stream = stream or sys.stdout
    for e in ZOO:
        src = (f"hub {e.repo_id}" + (f" ({e.repo_type})" if e.repo_type != "model" else "")
               + (f": {e.filename}" if e.filename else ": folder")) if e.source == "hub" else f"by hand: {e.url}"
        stream.write(f"{e.name:20s} {e.method}: {e.what}\n{'':20s} -> {e.dest}  ({e.config_key})\n"
                     f"{'':20s} {src}; size {_fmt_size(e.size)}; sha256 {e.sha256 or 'unknown'}\n")


def instructions(entry: "ZooEntry", root: str) -> str:
    """The message for a file that is not on the hub: where to download it and where to put it."""
    dest = os.path.join(root, entry.dest)
    why = ("its hub file names are not verified" if "huggingface.co" in entry.url
           else "not on the Hugging Face hub as released")
    lines = [f"{entry.name}: download it by hand ({why}; this tool fetches only known hub files).",
             f"  download by hand: {entry.url}",
             f"  put it at:        {dest}   ({entry.config_key})",
             f"  size {_fmt_size(entry.size)}; sha256 {entry.sha256 or 'not published'}"]
    if entry.note:
        lines.append(f"  note: {entry.note}")
    if not entry.dest.startswith("datasets"):
        lines.append(f"  then `python tools/fetch_weights.py --verify {entry.name}` checks it")
    return "\n".join(lines)


def _check_file(entry: "ZooEntry", path: str, label: str, after: str = "") -> str:
    """Size and sha256 check of `path` against `entry`; returns the sha256.

    Args:
        entry: the table's entry.
        path: the file to check.
        label: how the error names the file.
        after: text appended to the error (e.g. what was done with the file).

    Raises:
        UserValueError: the size or the sha256 differs from the published one.
    """
    from rass.utils.errors import UserValueError
    from rass.utils.io import sha256_file

    size = os.path.getsize(path)
    if entry.size is not None and size != entry.size:
        raise UserValueError(f"{label}: {size:,} bytes, expected {entry.size:,} for {entry.name}{after}")
    digest = sha256_file(path)
    if entry.sha256 is not None and digest != entry.sha256:
        raise UserValueError(f"{label}: sha256 {digest}, expected {entry.sha256} for {entry.name}{after}")
    return digest


def fetch_file(entry: "ZooEntry", root: str, revision: Optional[str] = None) -> str:
    """Fetch one hub file into its default path below `root` (see the module docstring); returns that path."""
    import huggingface_hub

    dest = os.path.join(root, entry.dest)
    if os.path.isfile(dest):
        digest = _check_file(entry, dest, dest, "; move that file away to fetch it again")
        print(f"{entry.name}: {dest} already present (sha256 {digest}"
              + (", as published)" if entry.sha256 else "; none published to check against)"))
        return dest
    staging = os.path.join(os.path.dirname(dest), f".fetch-{entry.name}")
    os.makedirs(staging, exist_ok=True)
    got = huggingface_hub.hf_hub_download(entry.repo_id, entry.filename, repo_type=entry.repo_type,
                                          revision=revision, local_dir=staging)
    try:
        digest = _check_file(entry, got, f"downloaded {entry.repo_id}/{entry.filename}",
                             f"; the download was deleted, nothing written to {dest}")
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)  # a file that failed its check is not kept
        raise
    os.replace(got, dest)
    shutil.rmtree(staging, ignore_errors=True)
    state = "matches the published sha256" if entry.sha256 else "no sha256 published to check against"
    print(f"{entry.name}: wrote {dest} ({os.path.getsize(dest):,} bytes, sha256 {digest}; {state})")
    return dest


def fetch_folder(entry: "ZooEntry", root: str, revision: Optional[str] = None) -> str:
    """Fetch a hub folder (e.g. a diffusers model) into its default path below `root`; returns that path."""
    import huggingface_hub

    from rass.utils.errors import UserRuntimeError
    from rass.utils.io import sha256_file

    dest = os.path.join(root, entry.dest)
    if os.path.isdir(dest) and os.listdir(dest):
        print(f"{entry.name}: {dest} already present (not re-fetched; move it away to fetch again)")
        return dest
    staging = os.path.join(os.path.dirname(dest), f".fetch-{entry.name}")
    os.makedirs(staging, exist_ok=True)
    huggingface_hub.snapshot_download(entry.repo_id, repo_type=entry.repo_type, revision=revision,
                                      allow_patterns=list(entry.folder_files), local_dir=staging)
    shutil.rmtree(os.path.join(staging, ".cache"), ignore_errors=True)  # huggingface_hub's resume metadata
    files = sorted(os.path.relpath(os.path.join(d, f), staging).replace(os.sep, "/")
                   for d, _, fs in os.walk(staging) for f in fs)
    missing = [p for p in entry.folder_files if not any(fnmatch.fnmatch(f, p) for f in files)]
    if missing:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserRuntimeError(f"hub repository {entry.repo_id} has no {', '.join(missing)} for {entry.name}; "
                               f"nothing written to {dest}")
    if os.path.isdir(dest):
        os.rmdir(dest)  # empty (checked above)
    os.replace(staging, dest)
    print(f"{entry.name}: wrote {dest} ({len(files)} files); sha256 (none published to check against):")
    for f in files:
        if f.endswith((".safetensors", ".bin", ".pth", ".pt")):
            print(f"  {sha256_file(os.path.join(dest, f))}  {f}")
    return dest


def verify(entry: "ZooEntry", root: str) -> bool:
    """Check the file at `entry`'s default path below `root`; print the result; True when it passes."""
    from rass.utils.errors import UserValueError

    dest = os.path.join(root, entry.dest)
    if os.path.isdir(dest) and os.listdir(dest):
        print(f"{entry.name}: present {dest} (a folder; no sha256 published to check against)")
        return True
    if not os.path.isfile(dest):
        print(f"{entry.name}: MISSING {dest}")
        return False
    try:
        digest = _check_file(entry, dest, dest)
    except UserValueError as e:
        print(f"{entry.name}: FAILED {e.message}")
        return False
    print(f"{entry.name}: OK {dest} (sha256 {digest}"
          + (", as published)" if entry.sha256 else "; none published to check against)"))
    return True


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    from rass.utils.errors import UserValueError
    from rass.utils.model_zoo import render_markdown_table

    if a.markdown:
        sys.stdout.write(render_markdown_table())
        return 0
    if a.list or not a.names:
        print_list()
        if not a.names and not a.list:
            print("\nnothing fetched: name what to fetch, e.g. `python tools/fetch_weights.py sd21-base`")
        return 0
    entries = _entries(a.names)
    root = os.path.abspath(a.root)
    if not os.path.isdir(root):
        raise UserValueError(f"--root {a.root}: not a folder")
    if a.verify:
        return 0 if all([verify(e, root) for e in entries]) else 1
    manual = [e for e in entries if e.source != "hub"]
    for e in entries:
        if e.source == "hub":
            (fetch_folder if e.is_folder else fetch_file)(e, root, a.revision)
    for e in manual:
        print(instructions(e, root))
    return 0


if __name__ == "__main__":
    build_parser().parse_args()  # --help and usage errors answer before the project's package is imported
    from rass.utils.cli import run_cli

    run_cli(main)
