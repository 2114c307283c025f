"""Per-image evaluation records gathered from every process (the promptable and SOD evaluators)."""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Sequence

from detectron2.utils import comm

__all__ = ["gather_image_records"]


def gather_image_records(records: Sequence[Dict], distributed: bool, dataset_name: str) -> Optional[List[Dict]]:
    """Every process's per-image records on the main process, sorted by image id, so that the results do not
    depend on the number of processes.

    Args:
        records: this process's records (dicts with an "image_id").
        distributed: gather from every process (detectron2's `comm`); False: only these records.
        dataset_name: for messages.

    Returns:
        The sorted records on the main process (all of them), None on the other processes.

    Raises:
        ValueError: an image id evaluated more than once.
    """
    records = list(records)
    if distributed:
        comm.synchronize()
        gathered = comm.gather(records, dst=0)
        if not comm.is_main_process():
            return None
        records = list(itertools.chain(*gathered))
    records = sorted(records, key=lambda r: r["image_id"])
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise ValueError(f"{dataset_name}: image ids evaluated more than once: {dup} (image ids must be unique)")
    return records
