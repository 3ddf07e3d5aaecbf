"""tune's timed stages planned against the deadline: which run, and how long each may take.

Each stage needs a minimum (processes started, sessions warmed, a few interleaved rounds) whatever
the budget, so the plan is made up front from the measurement cost model: stages that cannot fit
beside the ones that matter more are dropped before any is run, and each stage run gets its minimum
plus its share of the time to spare. The final run always runs; the measurement itself stops its
rounds early when a stage overruns, so the command ends near its deadline rather than a stage late.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ortforge.core.deadline import WRITE_S, Deadline
from ortforge.measure.bench import BenchOptions
from ortforge.measure.cost import MeasureCost


@dataclass
class Stage:
    name: str
    variants: int  # an upper bound when planned; the real count when granted
    options: BenchOptions  # max_seconds is set when granted
    weight: float  # its share of the time to spare
    priority: int  # the lowest is dropped first when the stages do not fit; the final run has none (never dropped)
    high_s: float = 6.0  # never more than this per variant: past it, more rounds rarely change a verdict


class Schedule:
    """The stages still to run against one deadline."""

    def __init__(self, deadline: Deadline, cost: MeasureCost, stages: list[Stage]) -> None:
        self.deadline, self.cost = deadline, cost
        self.stages = list(stages)
        self.dropped: list[str] = []

    @property
    def tail_s(self) -> float:
        """Time kept after the last stage: the artifact written and reopened."""
        return WRITE_S + 3 * self.cost.create_s

    def minimum(self, stages: list[Stage] | None = None) -> float:
        return sum(self.cost.minimum(s.variants, s.options) for s in (self.stages if stages is None else stages)) + self.tail_s

    def fit(self) -> list[str]:
        """Drop the least important stages until the rest fit in the time left; the names dropped."""
        dropped = []
        while self.minimum() > self.deadline.left:
            optional = [s for s in self.stages if s.priority > 0]
            if not optional:
                break
            least = min(optional, key=lambda s: s.priority)
            self.stages.remove(least)
            dropped.append(least.name)
        self.dropped += dropped
        return dropped

    def grant(self, name: str, variants: int) -> BenchOptions | None:
        """Options for stage `name` measuring `variants` now (None when it was dropped or no longer fits).

        The stage gets its minimum plus its weight's share of what the later stages and the tail leave."""
        stage = next((s for s in self.stages if s.name == name), None)
        if stage is None:
            return None
        index = self.stages.index(stage)
        stage = self.stages[index] = replace(stage, variants=variants)
        later = self.stages[index + 1 :]
        least = self.cost.minimum(variants, stage.options)
        spare = self.deadline.left - self.minimum(later) - least
        del self.stages[index]
        if spare < 0 and stage.priority > 0:
            self.dropped.append(stage.name)
            return None
        share = stage.weight / (stage.weight + sum(s.weight for s in later))
        grant = least + max(0.0, spare) * share
        seconds = min(stage.high_s, self.cost.seconds_per_variant(grant, variants, stage.options))
        return replace(stage.options, max_seconds=seconds, deadline=time.monotonic() + grant)
