"""`ortforge bench`: start-up, latency distribution, throughput, memory, per-op time and EP placement.

Each variant (model + session config) runs in its own fresh subprocess; variants are timed in
interleaved rounds so background load on a shared machine hits all of them alike, and the spread of
round medians is reported along with the figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ortforge.core.errors import OptionError
from ortforge.core.model import Model
from ortforge.core.options import option
from ortforge.core.progress import Progress
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet
from ortforge.measure.generate import Generation
from ortforge.measure.load import LoadMeter, MachineLoad
from ortforge.measure.placement import Placement
from ortforge.measure.process import MeasureProcess
from ortforge.measure.profile import ProfileSummary
from ortforge.measure.stats import LatencyStats, Ratio, latency_stats, noise_floor, ratio_of

MAX_BLOCK_RUNS = 100_000
MIN_ROUNDS = 4  # a deadline may cut the timed rounds short, never below this many


@dataclass
class BenchOptions:
    """How long and how carefully to measure."""

    max_seconds: float = option(8.0, flag="--time", help="max seconds of timed runs per variant")
    warmup_seconds: float = 0.5
    # Many short blocks, spread over the whole run, so every variant sees the machine's fast and slow spells alike.
    block_seconds: float = 0.05  # one variant's share of a round
    min_rounds: int = 12
    min_samples: int = 20
    precision: float = 0.02  # stop once every ratio's 95% interval is within this of its median (or at max_seconds)
    noise_pair: bool = option(True, flag="--no-noise-pair", help="skip measuring the first variant twice (the A/A pair that gives the noise floor)")
    profile: bool = option(True, flag="--no-profile", help="skip the per-op profile (ORT profiler)")
    profile_seconds: float = 1.0
    startup_rounds: int = option(0, flag="--startup", metavar="N", help="also time session creation N times per variant, interleaved")
    deadline: float | None = None  # a time.monotonic() reading: timed rounds end early to finish by it (a search's budget)
    generation: Generation | None = None  # every variant timed generating (a decoder; tune's decode objective)

    def __post_init__(self) -> None:
        for name in ("max_seconds", "warmup_seconds", "block_seconds", "profile_seconds", "precision"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise OptionError(name, value, "must be a positive number of seconds" if name.endswith("seconds") else "must be positive")
        for name in ("min_rounds", "min_samples", "startup_rounds"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise OptionError(name, getattr(self, name), "must be a whole number, 0 or more")


@dataclass
class Variant:
    label: str
    model: Model
    config: SessionConfig
    feeds: FeedSet
    streams: int = 1  # requests in flight at once (threads calling the one session); >1 measures throughput
    generation: Generation | None = None  # time greedy generations (prefill, then tokens) instead of single runs


@dataclass
class VariantResult:
    label: str
    model: str
    config: dict
    providers: list[str]
    create_s: float
    first_run_s: float
    latency: LatencyStats
    batch: int
    throughput: float  # items per second at `batch`
    peak_rss: int
    session_rss: int  # peak minus the process's footprint before the session existed
    ratio: Ratio | None = None  # time vs the first variant, per interleaved round: median, interval, spread
    placement: Placement | None = None
    profile: ProfileSummary | None = None
    startup: LatencyStats | None = None  # repeated session creation (ms), when asked for
    startup_ratio: Ratio | None = None
    streams: int = 1  # with more than one, latency figures are wall time per request at that concurrency
    # With a generation: `latency` is per generated token (each sample one generation's mean step), `throughput` tokens/s,
    # and `prefill` the prompt's run.
    generation: dict | None = None
    prefill: LatencyStats | None = None


@dataclass
class BenchReport:
    variants: list[VariantResult]
    rounds: int
    wall_s: float
    feeds: dict
    notes: list[str] = field(default_factory=list)
    noise: Ratio | None = None  # the first variant against its own second process (the A/A pair)
    load: MachineLoad | None = None
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each phase: what a deadline learns costs from

    @property
    def noise_floor(self) -> float:
        """How far from 1 a ratio must be to mean anything in this run."""
        return noise_floor(self.noise)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for result, variant in zip(self.variants, data["variants"]):
            variant["placement"] = result.placement.to_dict() if result.placement else None
            variant["latency"]["spread"] = list(result.latency.spread)
            if result.profile:  # the full node map is long; the top nodes say enough
                variant["profile"].pop("node_providers", None)
        return data


class _Running:
    """One variant's subprocess and the samples gathered from it."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        self.process = MeasureProcess(variant.label)
        self.loaded: dict = {}
        self.rounds: list[list[int]] = []
        self.startup_rounds: list[list[int]] = []
        self.estimate_ns = 1
        self.offset = 0
        self.prefill_rounds: list[list[int]] = []  # with a generation: each round's prefill times

    def run(self, count: int) -> list[int]:
        if self.variant.generation is not None:  # each sample: one generation's mean decode step
            timed = self.process.call("generate", count=count)
            self.prefill_rounds.append(timed["prefill"])
            return timed["step"]
        times = self.process.call("run", count=count, offset=self.offset, streams=self.variant.streams)
        self.offset += count
        return times

    def block_size(self, seconds: float) -> int:
        if self.variant.generation is not None:
            return 1  # a generation is already many runs
        return max(1, min(MAX_BLOCK_RUNS, int(seconds * 1e9 / self.estimate_ns)))


def _batch_size(feeds: FeedSet) -> int:
    first = next((v for v in feeds.samples[0].values() if isinstance(v, np.ndarray)), None)  # sequences and optionals aside
    return int(first.shape[0]) if first is not None and first.ndim > 0 else 1


def bench(variants: list[Variant], options: BenchOptions | None = None, progress: Progress | None = None) -> BenchReport:
    """Measure every variant in its own process, interleaved; ratios are to the first variant.

    With `noise_pair`, the first variant also runs in a second process: its ratio to the first (ideally 1)
    is this run's noise floor."""
    options = options or BenchOptions()
    variants = [replace(v, generation=v.generation or options.generation) for v in variants]
    for variant in variants:  # an EP this ORT lacks is named before any process starts
        variant.config.check_providers()
    report_progress = progress or (lambda what, fraction: None)
    started = time.perf_counter()
    paired = options.noise_pair and len(variants) > 1
    pair = [replace(variants[0], label=f"{variants[0].label} (A/A)")] if paired else []
    running = [_Running(variant) for variant in [*variants, *pair]]
    phases: dict[str, float] = {}
    try:
        with _phase(phases, "start"):
            for item in running:
                item.process.call("ping")
        with _phase(phases, "load"):
            for item in running:
                report_progress(f"creating session: {item.variant.label}", 0.0)
                _load(item)
                report_progress(f"warming up: {item.variant.label}", 0.05)
                _warm_up(item, options)
        meter = LoadMeter()
        meter.track(item.process.pid for item in running)
        with _phase(phases, "timed"):
            _timed_rounds(running, options, report_progress)
        with _phase(phases, "startup"):
            _startup_rounds(running, options, report_progress)
        load = meter.finish()
        with _phase(phases, "collect"):
            results = [_collect(item, options, report_progress) for item in running[: len(variants)]]
    finally:
        for item in running:
            item.process.close()
    baseline = running[0]
    for result, item in zip(results, running):
        result.ratio = ratio_of(result.latency.round_medians, results[0].latency.round_medians)
        if item.startup_rounds:
            result.startup = latency_stats([t for r in item.startup_rounds for t in r], item.startup_rounds)
    for result in results:
        if result.startup is not None:
            result.startup_ratio = ratio_of(result.startup.round_medians, results[0].startup.round_medians)  # type: ignore[union-attr]
    noise = _pair_ratio(running[-1], baseline) if paired else None
    notes = []
    if len(variants) > 1:
        notes.append("ratios are medians of per-round ratios to the first variant, with 95% bootstrap intervals [low-high]"
                     + (f"; the first variant measured twice (A/A) came out {noise.text()}: noise ±{noise_floor(noise):.1%}" if noise else ""))  # fmt: skip
    if load.busy:
        notes.append(load.describe() + ": figures are noisier than on a quiet machine")
    if any(variant.generation for variant in variants):
        notes.append(f"each variant timed generating: {variants[0].generation.describe() if variants[0].generation else ''}; latency figures are "
                     "per generated token (the KV cache handed from run to run by IO binding), throughput is tokens/s, prefill is the prompt's run")  # fmt: skip
    if any(variant.streams > 1 for variant in variants):
        notes.append("with several requests in flight, latency figures are wall time per request (1 / throughput), not one request's latency")
    if options.deadline is not None and time.monotonic() > options.deadline:
        notes.append("the time budget ran out during this measurement: its figures rest on fewer rounds than asked for")
    return BenchReport(results, len(baseline.rounds), time.perf_counter() - started, variants[0].feeds.to_dict(), notes, noise, load, phases)


@contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - start


def _pair_ratio(pair: _Running, baseline: _Running) -> Ratio:
    def medians(item: _Running) -> list[float]:
        return [float(np.median(block)) for block in item.rounds if block]

    return ratio_of(medians(pair), medians(baseline))


def _load(item: _Running) -> None:
    source, entries = item.variant.model.ort_source()
    item.loaded = item.process.call(
        "load",
        source=source,
        entries=entries,
        name=item.variant.model.name,
        config=item.variant.config,
        feeds=item.variant.feeds.samples,
        generation=asdict(item.variant.generation) if item.variant.generation else None,
    )


def _warm_up(item: _Running, options: BenchOptions) -> None:
    first = item.run(1)
    item.estimate_ns = max(first[0], 1)
    warm = item.run(item.block_size(options.warmup_seconds))
    item.estimate_ns = max(sorted(warm)[len(warm) // 2], 1)
    item.prefill_rounds.clear()


def _timed_rounds(running: list[_Running], options: BenchOptions, progress: Progress) -> None:
    """Short interleaved blocks until every ratio (A/A included) is known to `precision`, or the time is up."""
    budget = options.max_seconds * len(running)
    start = time.perf_counter()
    round_index = 0
    while True:
        # Rotate who goes first so no variant always runs right after another's cache-thrashing block.
        order = running[round_index % len(running):] + running[: round_index % len(running)]
        for item in order:
            item.rounds.append([])
        for item in order:
            item.rounds[-1] = item.run(item.block_size(options.block_seconds))
        round_index += 1
        elapsed = time.perf_counter() - start
        progress(f"timing round {round_index}", min(0.9, 0.1 + 0.8 * elapsed / budget))
        if elapsed >= budget or (round_index >= MIN_ROUNDS and _tail_s(running, options) > _until(options.deadline)):
            return
        enough = round_index >= options.min_rounds and all(sum(map(len, item.rounds)) >= options.min_samples for item in running)
        if enough and _precise(running, options.precision):
            return


def _tail_s(running: list[_Running], options: BenchOptions) -> float:
    """What the measurement still has to do after its timed rounds: start-up rounds, profiles, one more round."""
    create = max(item.loaded.get("create_s", 0.0) for item in running)
    profile = (2 * options.profile_seconds + create) * (len(running) - 1) if options.profile else 0.0
    return options.startup_rounds * len(running) * create + profile + options.block_seconds * len(running)


def _until(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline - time.monotonic()


def _precise(running: list[_Running], precision: float) -> bool:
    """Whether every variant's ratio to the first is known within `precision` (95% interval half-width)."""
    baseline = [float(np.median(block)) for block in running[0].rounds]
    for item in running[1:]:
        ratio = ratio_of([float(np.median(block)) for block in item.rounds], baseline)
        if not ratio.half_width <= precision:
            return False
    return True


def _startup_rounds(running: list[_Running], options: BenchOptions, progress: Progress) -> None:
    """Session creation timed again and again, one variant after another, so noise hits all alike."""
    for round_index in range(options.startup_rounds):
        if round_index >= 1 and _until(options.deadline) <= 0:
            return
        progress(f"timing session start-up, round {round_index + 1}", 0.9)
        for item in running:
            item.startup_rounds.append(item.process.call("startup", count=1))


def _collect(item: _Running, options: BenchOptions, progress: Progress) -> VariantResult:
    samples = [t for block in item.rounds for t in block]
    stats = latency_stats(samples, item.rounds)
    memory = item.process.call("memory")
    profile = None
    if options.profile and _until(options.deadline) > 0:
        progress(f"profiling: {item.variant.label}", 0.95)
        profile = item.process.call("profile", seconds=options.profile_seconds)
    batch = 1 if item.variant.generation else _batch_size(item.variant.feeds)
    prefills = [t for block in item.prefill_rounds for t in block]
    return VariantResult(
        label=item.variant.label,
        model=str(item.variant.model.path or item.variant.model.name),
        config=item.variant.config.to_dict(),
        providers=item.loaded["providers"],
        create_s=item.loaded["create_s"],
        first_run_s=item.loaded["first_run_s"],
        latency=stats,
        batch=batch,
        throughput=batch / (stats.p50 / 1e3) if stats.p50 > 0 else float("nan"),
        peak_rss=memory["peak_rss"],
        session_rss=max(0, memory["peak_rss"] - item.loaded["baseline_rss"]),
        placement=item.loaded["placement"],
        profile=profile,
        streams=item.variant.streams,
        generation=asdict(item.variant.generation) if item.variant.generation else None,
        prefill=latency_stats(prefills, item.prefill_rounds) if prefills else None,
    )
