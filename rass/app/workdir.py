"""The browser demo's private folder: its downloads, its examples and gradio's file cache.

gradio keeps every upload and every image it sends to the page in a file cache (by default a
``gradio`` folder in the system's temporary folder, shared, never pruned, kept after the server
stops). The demo points that cache (``GRADIO_TEMP_DIR``) at a folder inside its own private one
(mode 0700, made with `tempfile.mkdtemp`, so only this user can read the images derived from the
uploads), keeps the newest entries of it as `Downloads` keeps the newest runs, and removes the whole
folder when the server stops (Ctrl-C, SIGTERM, a normal exit: `close` is also registered with
`atexit`). The parent folder is the system's temporary folder (TMPDIR chooses it).
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterable, List, Optional

__all__ = ["WorkDir", "remove_oldest", "GRADIO_ENV", "DEFAULT_CACHE_KEEP"]

logger = logging.getLogger(__name__)

GRADIO_ENV = "GRADIO_TEMP_DIR"  # where gradio 4-6 put their file cache
# gradio writes about 6 cache entries per request: this keeps those of the last ~50 requests, the number
# of runs `Downloads` keeps.
DEFAULT_CACHE_KEEP = 300


def _entry_mtime(path: str) -> float:
    """When an entry (a file, or a folder and the files right inside it) was last written."""
    try:
        newest = os.stat(path).st_mtime
        if os.path.isdir(path):
            with os.scandir(path) as it:
                for e in it:
                    newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
        return newest
    except FileNotFoundError:
        return 0.0


def remove_oldest(root: str, keep: int, key: Optional[Callable[[str], object]] = None,
                  exclude: Iterable[str] = ()) -> List[str]:
    """Remove all but the newest `keep` entries of `root` (files or folders); returns what was removed.

    Args:
        root: the folder.
        keep: how many entries to keep (>= 0), not counting `exclude`.
        key: the age of an entry's path, oldest first when sorted (default: the path itself, for
            names that sort by age).
        exclude: names of entries that are never removed.
    """
    excluded = set(exclude)
    try:
        paths = [os.path.join(root, name) for name in os.listdir(root) if name not in excluded]
    except FileNotFoundError:
        return []
    paths.sort(key=key)
    old = paths[:max(0, len(paths) - keep)]
    for path in old:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return old


class WorkDir:
    """The demo's private folder (0700) with ``downloads/``, ``examples/`` and gradio's cache ``gradio/``.

    Args:
        cache_keep: how many entries of gradio's cache `prune_gradio_cache` keeps.
        parent: where the folder is made (default: the system's temporary folder).
    """

    def __init__(self, cache_keep: int = DEFAULT_CACHE_KEEP, parent: Optional[str] = None) -> None:
        self.root = tempfile.mkdtemp(prefix="rass_app_", dir=parent)  # mode 0700
        self.downloads = os.path.join(self.root, "downloads")
        self.examples = os.path.join(self.root, "examples")
        self.gradio_cache = os.path.join(self.root, "gradio")
        os.mkdir(self.gradio_cache, 0o700)
        self.cache_keep = cache_keep
        self._page_files: frozenset = frozenset()
        self._previous_env: Optional[str] = None
        self._env_set = False
        self._lock = threading.Lock()
        self._closed = False
        atexit.register(self.close)

    def use_for_gradio(self) -> None:
        """Point gradio's file cache here: call before gradio builds the page (it reads ``GRADIO_TEMP_DIR``
        when a `gr.Blocks` is made and when the server starts)."""
        self._previous_env = os.environ.get(GRADIO_ENV)
        os.environ[GRADIO_ENV] = self.gradio_cache
        self._env_set = True

    def keep_page_files(self) -> None:
        """Never prune what gradio's cache holds now: call once the page is built and served (the
        examples' copies, gradio's own folders), before the first request."""
        self._page_files = frozenset(os.listdir(self.gradio_cache))

    def prune_gradio_cache(self) -> List[str]:
        """Remove all but the newest `cache_keep` entries of gradio's cache (oldest written first; the
        page's own files are kept, see `keep_page_files`); returns the removed paths."""
        with self._lock:
            if self._closed:
                return []
            return remove_oldest(self.gradio_cache, self.cache_keep, key=lambda p: (_entry_mtime(p), p),
                                 exclude=self._page_files)

    def close(self) -> None:
        """Remove the folder and everything in it (idempotent) and restore ``GRADIO_TEMP_DIR``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            shutil.rmtree(self.root, ignore_errors=True)
            if self._env_set and os.environ.get(GRADIO_ENV) == self.gradio_cache:
                if self._previous_env is None:
                    os.environ.pop(GRADIO_ENV, None)
                else:
                    os.environ[GRADIO_ENV] = self._previous_env
        atexit.unregister(self.close)
