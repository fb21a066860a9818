"""Facts about the machine a benchmark ran on, recorded with every result."""
from __future__ import annotations

import datetime as _dt
import os
import platform


def _first_line_value(path: str, prefix: str):
    try:
        with open(path) as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith(prefix)), None)
    except OSError:
        return None


def machine_info(**versions) -> dict:
    """Date, CPUs, memory, Python and platform, the load average now, plus `versions`."""
    mem_kb = _first_line_value("/proc/meminfo", "MemTotal")
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "nproc_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _first_line_value("/proc/cpuinfo", "model name") or "",
        "mem_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
        **versions,
    }
