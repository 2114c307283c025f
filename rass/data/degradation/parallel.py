"""CPU execution of the engine: worker threads that each run torch at one intra-op thread.

Two reasons:
- Speed. The per-image work is a long chain of small operations (a few milliseconds each, some
  single-threaded anyway: libjpeg, random sampling), so splitting each operation over the
  intra-op threads scales poorly, while running different images in different Python threads
  does scale (torch operations and libjpeg release the GIL).
- Reproducibility. Each worker sets its own OpenMP/MKL thread count to 1 (those settings are per
  thread), so every operation of the engine runs single-threaded whatever the caller's thread
  count. Operations whose rounding depends on the thread count (MKL GEMM in resize.py's
  "matmul" method) are therefore safe to use, and an image's bytes do not change with
  `torch.set_num_threads`.

The calling thread's own settings are left as they were. Pools are per process (re-created after
a fork, e.g. in data-loader workers); a call made from inside a worker runs inline.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Sequence, Tuple, TypeVar

import torch

__all__ = ["map_single_threaded", "in_single_threaded_worker"]

T = TypeVar("T")
R = TypeVar("R")

_POOLS: Dict[int, Tuple[int, ThreadPoolExecutor]] = {}
_LOCK = threading.Lock()
_LOCAL = threading.local()


def _forget_pools_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a parent thread may have held it at fork time
    _POOLS.clear()  # the parent's worker threads do not exist in the child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _init_worker() -> None:
    _LOCAL.is_worker = True
    torch.get_num_threads()  # let torch initialise this thread's settings first (it does so lazily)
    torch.set_num_threads(1)


def in_single_threaded_worker() -> bool:
    """Whether the current thread is one of this module's one-thread workers."""
    return bool(getattr(_LOCAL, "is_worker", False))


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's pool with `workers` threads (re-created after a fork)."""
    with _LOCK:
        entry = _POOLS.get(workers)
        if entry is not None and entry[0] == os.getpid():
            return entry[1]
        caller_threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rass-degradation", initializer=_init_worker)
        barrier = threading.Barrier(workers)
        list(pool.map(lambda _: barrier.wait(), range(workers)))  # start every worker now
        # torch.set_num_threads also stores a process-wide default (read by threads created later);
        # put back the caller's value that the workers overwrote.
        torch.set_num_threads(caller_threads)
        _POOLS[workers] = (os.getpid(), pool)
        return pool


def map_single_threaded(fn: Callable[[T], R], items: Sequence[T], workers: int) -> List[R]:
    """`[fn(x) for x in items]` run by `workers` threads at one torch thread each, in order.

    Args:
        fn: the work for one item.
        items: the items.
        workers: number of worker threads (>= 1; 1 still runs in a one-thread worker).
    """
    if in_single_threaded_worker():
        return [fn(x) for x in items]
    return list(_pool(max(1, workers)).map(fn, items))
