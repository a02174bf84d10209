"""Peak memory of this process and of what it started: the Spark JVM (driver and executors in local
mode) and its Python workers. Read from /proc (VmHWM: the peak resident set of each process)."""

from __future__ import annotations

import os
import resource
from pathlib import Path


def _rss_kib(pid: int, field: str = "VmHWM") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def _jvm_pid() -> int | None:
    for pid in _descendants(os.getpid()):
        try:
            if "java" in Path(f"/proc/{pid}/comm").read_text():
                return pid
        except OSError:
            continue
    return None


def memory() -> dict[str, float]:
    """Peak RSS (GiB) of the driver's Python process, the JVM and the largest Python worker."""
    jvm = _jvm_pid()
    workers = [p for p in _descendants(jvm) if jvm] if jvm else []
    return {
        "driver_python_peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "jvm_peak_gib": round(_rss_kib(jvm) / 2**20, 2) if jvm else 0.0,
        "python_worker_peak_gib": round(max((_rss_kib(p) for p in workers), default=0) / 2**20, 2),
    }
