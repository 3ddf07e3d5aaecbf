"""How busy the machine was while ortforge measured: load average, CPU time taken by other processes, steal.

Figures taken on a busy machine are noisier and can mislead; every measurement records what it saw so
that reports say so next to the figures instead of presenting them as if the machine were quiet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

# Other processes using more than this share of all cores, or this much steal, make the machine "busy".
BUSY_SHARE = 0.25
BUSY_STEAL = 0.05


@dataclass(frozen=True)
class MachineLoad:
    """What else ran during a measurement."""

    cores: int
    load_before: float  # 1-minute load average
    load_after: float
    others_share: float  # CPU time of other processes / (wall time x cores)
    steal_share: float  # time the hypervisor gave the cores to other guests, same scale
    wall_s: float

    @property
    def busy(self) -> bool:
        return self.others_share > BUSY_SHARE or self.steal_share > BUSY_STEAL

    def describe(self) -> str:
        state = "busy" if self.busy else "quiet"
        return (f"machine {state} while measuring: other processes used {self.others_share:.0%} of the {self.cores} cores, "
                f"steal {self.steal_share:.0%}, load average {self.load_before:.1f} -> {self.load_after:.1f}")  # fmt: skip


def _busy_seconds(times: object) -> tuple[float, float]:
    """(CPU seconds spent working on all cores, of which steal) from psutil.cpu_times()."""
    idle = getattr(times, "idle", 0.0) + getattr(times, "iowait", 0.0)
    total = sum(times) if isinstance(times, tuple) else 0.0
    steal = getattr(times, "steal", 0.0)
    return total - idle - steal, steal


class LoadMeter:
    """Start before measuring, `finish(our_pids)` after: CPU time of the machine minus that of our processes."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.started = time.monotonic()
        self.load_before = _load_average()
        self.busy_before, self.steal_before = _busy_seconds(psutil.cpu_times())
        self.ours_before: dict[int, float] = {}

    def track(self, pids: Iterable[int]) -> None:
        """Note the CPU time our processes had used when measuring starts."""
        self.ours_before = {pid: _cpu_seconds(self._psutil, pid) for pid in {os.getpid(), *pids}}

    def finish(self) -> MachineLoad:
        wall = max(time.monotonic() - self.started, 1e-9)
        busy, steal = _busy_seconds(self._psutil.cpu_times())
        ours = sum(max(0.0, _cpu_seconds(self._psutil, pid) - before) for pid, before in self.ours_before.items())
        cores = self._psutil.cpu_count(logical=True) or 1
        others = max(0.0, (busy - self.busy_before) - ours) / (wall * cores)
        return MachineLoad(cores, self.load_before, _load_average(), min(others, 1.0), max(0.0, steal - self.steal_before) / (wall * cores), wall)


def _cpu_seconds(psutil: object, pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()  # type: ignore[attr-defined]
    except Exception:  # the process has gone (psutil.NoSuchProcess and friends)
        return 0.0
    return float(times.user + times.system)


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has none
        return 0.0
