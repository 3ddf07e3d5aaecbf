"""What an interleaved measurement costs, so a budgeted search can plan its timed stages before running them.

A measurement of n variants starts n processes (n + 1 with the A/A pair), creates and warms a session in
each, times at least `min_rounds` rounds of every process, and profiles each variant. Everything but the
timed rounds is overhead that no `max_seconds` shrinks; it is learned from each measurement's phases.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ortforge.core.model import Model
from ortforge.core.session import Outputs, SessionConfig, run_on_feeds
from ortforge.data import FeedSet
from ortforge.measure.bench import BenchOptions, BenchReport

PROCESS_S = 0.4  # one measurement process started (they start side by side), session created: a first guess, replaced once measured
PROFILE_OVERHEAD = 1.5  # a profile takes its runs' time and about half as long again to read the trace


@dataclass
class MeasureCost:
    """Seconds per process of start-up and session creation, learned from the measurements run so far."""

    process_s: float = PROCESS_S
    create_s: float = 0.0  # one session creation (start-up rounds repeat it)
    collect_s: float | None = None  # one variant's profile and memory read-out, once measured

    @classmethod
    def from_create(cls, create_s: float) -> MeasureCost:
        """A first guess from one in-process session creation of the model (a process then adds its start-up)."""
        return cls(process_s=PROCESS_S + create_s, create_s=create_s)

    @staticmethod
    def processes(variants: int, options: BenchOptions) -> int:
        return variants + (1 if options.noise_pair and variants > 1 else 0)

    def overhead(self, variants: int, options: BenchOptions) -> float:
        """Everything but the timed rounds."""
        processes = self.processes(variants, options)
        profile = variants * (self.collect_s or PROFILE_OVERHEAD * options.profile_seconds + self.create_s) if options.profile else 0.0
        # Warm-up runs a block sized from the slow first run, so it takes about half its nominal time.
        return processes * (self.process_s + options.warmup_seconds / 2 + options.startup_rounds * self.create_s) + profile

    def minimum(self, variants: int, options: BenchOptions) -> float:
        """The least a measurement of `variants` can take: its overhead and `min_rounds` rounds."""
        return self.overhead(variants, options) + options.min_rounds * self.processes(variants, options) * options.block_seconds

    def seconds_per_variant(self, grant_s: float, variants: int, options: BenchOptions) -> float:
        """The `max_seconds` that makes a measurement of `variants` last about `grant_s` (never below its minimum rounds)."""
        processes = self.processes(variants, options)
        floor = options.min_rounds * options.block_seconds
        return max(floor, (grant_s - self.overhead(variants, options)) / processes)

    def learn(self, report: BenchReport, options: BenchOptions) -> None:
        """Replace the guesses with what this measurement's phases cost."""
        processes = self.processes(len(report.variants), options)
        if report.phases and processes:
            spent = report.phases.get("start", 0.0) + report.phases.get("load", 0.0)
            self.process_s = max(0.05, spent / processes - options.warmup_seconds / 2)
            if options.profile and "collect" in report.phases:
                self.collect_s = report.phases["collect"] / len(report.variants)
        creates = [v.create_s for v in report.variants if v.create_s]
        if creates:
            self.create_s = max(creates)


def reference_run(model: Model, feeds: FeedSet) -> tuple[Outputs, MeasureCost]:
    """The model's outputs with ORT's defaults (what candidates are judged against), and the cost guess its session gives."""
    start = time.perf_counter()
    session = SessionConfig().build(model)
    cost = MeasureCost.from_create(time.perf_counter() - start)
    return run_on_feeds(session, feeds, model.name), cost
