"""Machine facts used by the benchmark scripts."""
from __future__ import annotations

import os


def machine_cpu_seconds() -> float:
    """CPU seconds used by the whole machine so far (Linux /proc/stat; NaN elsewhere). The
    difference over a timed run, minus the process's own CPU time, is the load of other processes."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
