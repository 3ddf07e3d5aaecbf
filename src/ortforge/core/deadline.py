"""The time budget as a deadline: the clock every budgeted search reads, and what its work has cost so far.

A budget is wall time from the command's start to its answer, so the clock starts where the command
starts (loading and generating data count). Searches ask before each piece of work whether it still fits,
from what such work has cost so far, rather than finding out afterwards that it did not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ortforge.core.errors import OptionError

WRITE_S = 2.0  # writing a model or artifact and reopening it, beyond its session creations: kept at the end of a budget


@dataclass
class Deadline:
    """`budget_s` seconds from `started` (a `time.monotonic()` reading; now by default)."""

    budget_s: float
    started: float = field(default_factory=time.monotonic)
    costs: dict[str, list[float]] = field(default_factory=dict)  # seconds each finished piece of work took, by kind

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise OptionError("time_budget_s", self.budget_s, "must be a positive, finite number of seconds")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def left(self) -> float:
        return max(0.0, self.budget_s - self.elapsed)

    @property
    def at(self) -> float:
        """The deadline as a `time.monotonic()` reading."""
        return self.started + self.budget_s

    def record(self, kind: str, seconds: float) -> None:
        self.costs.setdefault(kind, []).append(seconds)

    def typical(self, kind: str, default: float = 0.0) -> float:
        """What one piece of this kind of work has cost (the largest seen: a deadline plans for the slow case)."""
        seen = self.costs.get(kind)
        return max(seen) if seen else default

    def fits(self, kind: str, keep_s: float = 0.0, default: float = 0.0) -> bool:
        """Whether one more piece of `kind` work fits, keeping `keep_s` seconds for what must follow."""
        return self.left - keep_s >= self.typical(kind, default)


class timed:  # noqa: N801 - used as a context manager, read like a verb
    """`with timed(deadline, "build"):` records the block's wall time as one piece of that work."""

    def __init__(self, deadline: Deadline | None, kind: str) -> None:
        self.deadline, self.kind = deadline, kind

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        if self.deadline is not None and exc[0] is None:
            self.deadline.record(self.kind, time.monotonic() - self.start)
