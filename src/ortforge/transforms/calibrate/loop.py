"""The calibration loop: each sample run once, folded into per-tensor collectors, and dropped.

Memory is one run's outputs plus a fixed-size state per tensor, whatever the number of samples
(ORT's calibrators keep every output of every sample until the end).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig
from ortforge.core.values import ort_feed
from ortforge.data import Feed, FeedSet
from ortforge.transforms.calibrate.collectors import RunningRange, StreamingHistogram, make_collector
from ortforge.transforms.calibrate.options import HISTOGRAM_METHODS, CalibrationOptions
from ortforge.transforms.calibrate.ranges import histogram_ranges
from ortforge.transforms.calibrate.result import CalibrationResult
from ortforge.transforms.calibrate.tensors import Probe, Runner, groups_by_size, make_runner, tensors_to_calibrate


def calibrate(
    model: Model,
    feeds: Iterable[Feed] | FeedSet,
    options: CalibrationOptions | None = None,
    *,
    tensors: Sequence[str] | None = None,
    progress: Progress | None = None,
    total: int | None = None,
    session: SessionConfig | None = None,
    max_run_bytes: int | None = None,
) -> CalibrationResult:
    """Ranges of `tensors` (ORT's choice by default) over `feeds`, each sample run once and dropped.

    Feeds are consumed one at a time (a generator works); memory is one run's outputs plus a
    fixed-size state per tensor, whatever the number of samples. `max_run_bytes` caps that run's
    outputs for the histogram methods by running each sample once per group of tensors (slower).
    `session` sets providers and threads; by default the model runs unoptimised on CPU, as in ORT.
    """
    options = options or CalibrationOptions()
    config = session or SessionConfig(graph_optimization_level="disable")
    report = progress or (lambda what, fraction: None)
    samples = feeds.samples if isinstance(feeds, FeedSet) else feeds
    if total is None and hasattr(samples, "__len__"):
        total = len(samples)  # type: ignore[arg-type]
    names, notes = tensors_to_calibrate(model, tensors, options)
    stream = iter(samples)
    first = next(stream, None)
    if first is None:
        raise UserError(f"{model.name}: calibration needs at least one sample, got none")
    report(f"calibrating {len(names)} tensors ({options.method})", 0.0)
    groups = [names]
    if max_run_bytes is not None and options.method in HISTOGRAM_METHODS:
        groups = groups_by_size(model, names, first, max_run_bytes, config)
        if len(groups) > 1:
            notes.append(f"each sample ran {len(groups)} times, on groups of tensors of at most ~{max_run_bytes / 2**20:.4g} MiB each")
            # Without the arena each group's run gives its memory back before the next group's.
            config = replace(config, enable_cpu_mem_arena=False)
    runners = [make_runner(model, group, options.method, config) for group in groups]
    collectors = {name: make_collector(options) for name in names}
    count = _run_samples(runners, collectors, itertools.chain([first], stream), report, total, model.name)
    report(f"computing {options.method} ranges", 1.0)
    result = _finish(collectors, options, count)
    result.notes[:0] = notes
    return result


def _run_samples(
    runners: list[Runner],
    collectors: dict[str, RunningRange | StreamingHistogram],
    feeds: Iterator[Feed],
    report: Progress,
    total: int | None,
    name: str,
) -> int:
    """Run each sample once per runner and fold its values in; returns how many samples ran."""
    count = 0
    for feed in feeds:
        for runner in runners:
            values = _run(runner.session, runner.wanted, feed, name, count)
            for probe in runner.probes:
                _fold(collectors[probe.tensor], probe, feed, values)
            del values  # this group's outputs go before the next group's run
        count += 1
        fraction = min(count / total, 1.0) if total else 0.0
        report(f"calibrating: sample {count}" + (f"/{total}" if total else ""), fraction)
    return count


def _run(runner: Any, wanted: list[str], feed: Feed, name: str, index: int) -> dict[str, np.ndarray]:
    if not wanted:
        return {}
    try:
        return dict(zip(wanted, runner.run(wanted, ort_feed(feed))))
    except Exception as exc:  # ORT raises its own types for bad feeds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{name}: calibration sample {index} failed to run: {first}") from None


def _fold(collector: RunningRange | StreamingHistogram, probe: Probe, feed: Feed, values: dict[str, np.ndarray]) -> None:
    """Hand one sample's values of a tensor to its collector; its output array is released here."""
    if probe.outputs:
        arrays = [values.pop(output) for output in probe.outputs]
    elif probe.tensor in feed:
        arrays = [np.asarray(feed[probe.tensor])]
    else:
        raise UserError(f"calibration feed has no input '{probe.tensor}' (it has: {', '.join(feed)})")
    if isinstance(collector, StreamingHistogram):
        collector.update(arrays[0])
    elif len(arrays) == 2:  # ReduceMin / ReduceMax outputs: one number each
        collector.update(_first(arrays[0]), _first(arrays[1]))
    else:
        collector.update(*((float(arrays[0].min()), float(arrays[0].max())) if arrays[0].size else (np.nan, np.nan)))


def _first(array: np.ndarray) -> float:
    return float(array.reshape(-1)[0]) if array.size else np.nan


def _finish(collectors: dict[str, RunningRange | StreamingHistogram], options: CalibrationOptions, count: int) -> CalibrationResult:
    result = CalibrationResult({}, options.method, count)
    skipped = sum(collector.skipped for collector in collectors.values() if isinstance(collector, StreamingHistogram))
    for name, collector in collectors.items():
        histogram = collector.final(options.bins) if isinstance(collector, StreamingHistogram) else None
        if histogram is not None:
            result.histograms[name] = histogram
    ranges, result.moments = histogram_ranges(result.histograms, options)
    empty = []
    for name, collector in collectors.items():
        pair = collector.range() if isinstance(collector, RunningRange) else ranges.get(name)
        if pair is None:
            empty.append(name)
        result.ranges[name] = pair or (0.0, 0.0)
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        result.notes.append(f"{len(empty)} tensor(s) were empty in every sample and got the range (0, 0): {shown}")
    if skipped:
        result.notes.append(f"{skipped} NaN/infinite value(s) left out of the histograms")
    return result
