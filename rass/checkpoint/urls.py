"""Weight paths that are URLs: nothing is downloaded unless the user says so (MODEL.ALLOW_DOWNLOADS).

detectron2's checkpointer resolves `detectron2://...`, `catalog://...`, `http(s)://...` (and any other
`scheme://`) through iopath and downloads the file into its cache. The project refuses such a path
unless downloads are allowed, naming the key, the URL the path resolves to, and where to put the file.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from rass.utils.errors import UserValueError

__all__ = ["ALLOW_DOWNLOADS_KEY", "is_url", "resolve_url", "check_download_allowed"]

ALLOW_DOWNLOADS_KEY = "MODEL.ALLOW_DOWNLOADS"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(path: str) -> bool:
    """Whether `path` is a URL (`scheme://...`) rather than a local file."""
    return bool(path) and bool(_URL.match(path))


def resolve_url(path: str) -> str:
    """The address `path` is downloaded from: `detectron2://` and `catalog://` resolved as detectron2
    does (query part kept off), anything else as given.

    Args:
        path: a URL (see `is_url`).
    """
    from detectron2.checkpoint.catalog import ModelCatalog
    from detectron2.utils.file_io import Detectron2Handler

    bare = path.split("?", 1)[0]
    if bare.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + bare[len(Detectron2Handler.PREFIX):]
    if bare.startswith("catalog://"):
        try:
            return ModelCatalog.get(bare[len("catalog://"):])
        except Exception:  # noqa: BLE001 - an unknown catalog name: show it as given
            return bare
    return bare


def check_download_allowed(path: str, key: str, allow: bool, local_dir: str = "weights") -> Optional[str]:
    """Refuse a URL as `key` unless `allow` (MODEL.ALLOW_DOWNLOADS).

    Args:
        path: the value of `key`.
        key: the config key / argument that gave it (e.g. "MODEL.WEIGHTS").
        allow: downloads are allowed.
        local_dir: the folder the hint suggests for the downloaded file.

    Returns:
        The resolved URL when `path` is a URL that may be downloaded, else None.

    Raises:
        UserValueError: `path` is a URL and downloads are not allowed.
    """
    if not is_url(path):
        return None
    url = resolve_url(path)
    if allow:
        return url
    local = f"{local_dir}/{os.path.basename(url) or 'weights.pth'}"
    query = "?" + path.split("?", 1)[1] if "?" in path else ""
    raise UserValueError(
        f"{key}: {path!r} is a URL (it resolves to {url}); nothing is downloaded unless {ALLOW_DOWNLOADS_KEY} is True",
        hint=f"download {url} to {local} and set {key} {local}{query}, or set {ALLOW_DOWNLOADS_KEY} True to let "
             "detectron2 download it into its cache ($FVCORE_CACHE, default ~/.torch/iopath_cache)")
