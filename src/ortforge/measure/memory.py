"""Resident memory of this process: current and peak."""

from __future__ import annotations

import sys
from pathlib import Path


def current_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss() -> int:
    """Peak resident set size in bytes of this process since it started (its own, not its parent's).

    On Linux `ru_maxrss` survives `exec`: a measurement child started from a 313 MiB parent reported
    313 MiB whatever it ran. `VmHWM` in /proc/self/status belongs to the process's own memory map, which
    `exec` replaces, so it is read first."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def release_freed_memory() -> None:
    """Hand memory that is freed but still held by the C allocator back to the OS (glibc only; no-op elsewhere).

    Building candidates (quantizers, sessions) frees hundreds of MiB that glibc keeps; during tune's final
    run every process is alive at once, so what each one holds adds up (`bench/memory_peaks.py tune`)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        pass
