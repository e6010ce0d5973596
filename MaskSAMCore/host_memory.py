"""Host memory readings from the operating system, without torch.

`masksam make-phantoms` checks its sizes against these and must not import torch (a CPU-only
machine making a dataset need not load it); `inference.devices` re-exports them, and prediction
looks them up there (so tests that replace ``devices.available_host_bytes`` reach every check).
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Optional


def available_host_bytes() -> Optional[int]:
    """Memory the system can still give this process (Linux ``MemAvailable``; elsewhere the
    physical memory, or None when unknown)."""
    available_kib = proc_kib("/proc/meminfo", "MemAvailable")
    if available_kib is not None:
        return available_kib * 1024
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def peak_host_rss_bytes() -> int:
    """Peak resident memory of this process so far (VmHWM), in bytes."""
    peak_kib = proc_kib("/proc/self/status", "VmHWM")
    if peak_kib is not None:
        return peak_kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def proc_kib(path: str, field: str) -> Optional[int]:
    """A ``FIELD:  N kB`` value of a Linux /proc file, in KiB; None elsewhere or when absent."""
    try:
        with open(path, encoding="ascii") as lines:
            for line in lines:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def gib(value: int) -> str:
    """Bytes as GiB for a message: "2.8 GiB"."""
    return f"{value / 2 ** 30:.1f} GiB"
