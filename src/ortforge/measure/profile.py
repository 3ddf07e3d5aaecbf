"""Per-op time from ORT's profiler JSON: time by op type, the slowest nodes, and the EP of each node."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KERNEL_SUFFIX = "_kernel_time"


@dataclass
class NodeTime:
    name: str
    op_type: str
    provider: str
    mean_us: float


@dataclass
class OpTypeTime:
    op_type: str
    total_us: float  # per run
    share: float
    nodes: int


@dataclass
class ProfileSummary:
    runs: int
    per_run_us: float  # sum of kernel times per run (excludes framework overhead)
    by_op_type: list[OpTypeTime] = field(default_factory=list)
    top_nodes: list[NodeTime] = field(default_factory=list)
    node_providers: dict[str, str] = field(default_factory=dict)
    provider_share: dict[str, float] = field(default_factory=dict)


def summarize_profile(path: Path, runs: int, top: int = 15) -> ProfileSummary:
    """Aggregate kernel events of `runs` profiled runs into per-run figures."""
    events = json.loads(path.read_text())
    durations: dict[str, float] = defaultdict(float)
    op_types: dict[str, str] = {}
    providers: dict[str, str] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(KERNEL_SUFFIX):
            continue
        node = event["name"][: -len(KERNEL_SUFFIX)]
        args = event.get("args", {})
        durations[node] += float(event.get("dur", 0))
        op_types[node] = args.get("op_name", "?")
        providers[node] = args.get("provider", "?")
    runs = max(runs, 1)
    total = sum(durations.values()) / runs
    by_type: dict[str, list[float]] = defaultdict(list)
    by_provider: dict[str, float] = defaultdict(float)
    for node, duration in durations.items():
        by_type[op_types[node]].append(duration / runs)
        by_provider[providers[node]] += duration / runs

    def share(value: float) -> float:
        return value / total if total else 0.0

    return ProfileSummary(
        runs=runs,
        per_run_us=total,
        by_op_type=sorted(
            (OpTypeTime(op, sum(times), share(sum(times)), len(times)) for op, times in by_type.items()),
            key=lambda item: -item.total_us,
        ),
        top_nodes=sorted(
            (NodeTime(node, op_types[node], providers[node], duration / runs) for node, duration in durations.items()),
            key=lambda item: -item.mean_us,
        )[:top],
        node_providers=providers,
        provider_share={provider: share(value) for provider, value in by_provider.items()},
    )
