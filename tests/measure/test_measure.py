"""Measurement pieces on their own: statistics, the winner rule, the frame protocol, profile parsing, the worker."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from helpers import linear_model
from ortforge.core.errors import OptionError
from ortforge.core.model import from_proto
from ortforge.core.session import SessionConfig
from ortforge.measure import protocol
from ortforge.measure.bench import BenchOptions, VariantResult
from ortforge.measure.compare import CandidateScore, beats, noise_floor, score, verdict_text, winner
from ortforge.measure.profile import summarize_profile
from ortforge.measure.stats import MIN_NOISE, Ratio, latency_stats, ratio_of


def _result(label: str, round_ms: list[float]) -> VariantResult:
    rounds = [[int(ms * 1e6)] * 3 for ms in round_ms]
    return VariantResult(label, "m", {}, [], 0.0, 0.0, latency_stats([t for r in rounds for t in r], rounds), 1, 1.0, 0, 0)


def test_latency_stats_are_milliseconds_with_round_medians():
    stats = latency_stats([1_000_000, 2_000_000, 3_000_000, 4_000_000], [[1_000_000, 2_000_000], [3_000_000, 4_000_000]])
    assert stats.count == 4 and stats.p50 == pytest.approx(2.5) and stats.min == 1.0 and stats.max == 4.0
    assert stats.round_medians == [1.5, 3.5] and stats.spread == (1.5, 3.5)


def test_ratio_of_rounds_has_a_bootstrap_interval_that_narrows_with_rounds():
    rng = np.random.default_rng(1)
    baseline = list(10 + rng.normal(0, 0.5, 60))
    half = [b * 0.5 * (1 + rng.normal(0, 0.03)) for b in baseline]
    estimate = ratio_of(half, baseline)
    assert estimate.low < estimate.median < estimate.high and estimate.low > 0.47 and estimate.high < 0.53
    assert estimate.wins == 1.0 and estimate.rounds == 60 and estimate.spread_low <= estimate.low
    few = ratio_of(half[:8], baseline[:8])
    assert few.high - few.low > estimate.high - estimate.low  # fewer rounds, wider interval
    assert ratio_of(half, baseline) == estimate  # seeded: the same rounds give the same interval


def _scored(label: str, median: float, low: float, high: float) -> CandidateScore:
    return CandidateScore(label, Ratio(median, low, high, low, high, 1.0 if high < 1 else 0.0, 20), 1.0)


def test_the_noise_floor_comes_from_the_aa_pair():
    assert noise_floor(None) == MIN_NOISE
    assert noise_floor(Ratio(1.01, 0.93, 1.06, 0.9, 1.1, 0.4, 30)) == pytest.approx(0.07)
    assert noise_floor(Ratio(1.0, 0.998, 1.003, 0.99, 1.01, 0.5, 30)) == MIN_NOISE  # a tight pair: never below the minimum


def test_a_winner_must_clear_the_noise_and_within_noise_the_simpler_wins():
    baseline = _scored("fp32", 1.0, 1.0, 1.0)
    clear = _scored("int8 static", 0.50, 0.47, 0.53)
    tied = _scored("int8 dynamic", 0.52, 0.49, 0.56)  # overlaps the fastest: not told apart by this run
    marginal = _scored("1 thread", 0.96, 0.93, 0.99)  # faster, but not beyond a 5% noise floor
    ranks = {"int8 static": 5, "int8 dynamic": 4, "1 thread": 1}
    assert winner([baseline, clear, tied, marginal], 0.05, complexity=lambda s: ranks[s.label]) is tied
    assert winner([baseline, clear, tied], 0.05, complexity=lambda s: 0) is clear  # equal ranks: the faster
    assert winner([baseline, marginal], 0.05) is None and winner([baseline, marginal], 0.005) is marginal
    assert beats(clear, 0.05) and not beats(marginal, 0.05)
    # Far below fp32, the noise is a share of the smaller time: 11% apart with clear intervals is not a tie
    flushed, defaults = _scored("int4 | denormals as zero", 0.218, 0.214, 0.225), _scored("int4 | ORT defaults", 0.245, 0.24, 0.257)
    simpler_first = {"int4 | ORT defaults": 0, "int4 | denormals as zero": 1}
    assert winner([baseline, defaults, flushed], 0.024, complexity=lambda s: simpler_first[s.label]) is flushed
    close = _scored("int4 | denormals as zero", 0.236, 0.231, 0.241)  # the intervals within 2.4% of each other: a tie
    assert winner([baseline, defaults, close], 0.024, complexity=lambda s: simpler_first[s.label]) is defaults
    assert "within noise" in verdict_text(marginal, 0.05) and "faster beyond noise" in verdict_text(clear, 0.05)


def test_a_steady_candidate_scores_by_its_rounds():
    baseline = _result("fp32", [10.0] * 8)
    steady = score(_result("steady", [9.0] * 8), baseline)
    lucky = score(_result("lucky", [5.0, 5.0, 5.0, 11.0, 11.0, 11.0, 11.0, 5.0]), baseline)
    assert steady.ratio == pytest.approx(0.9) and steady.high < 0.91 and steady.wins == 1.0
    assert lucky.wins == 0.5 and lucky.high > 1.0  # half the rounds slower: its interval reaches past 1
    assert winner([score(baseline, baseline), lucky, steady], MIN_NOISE) is steady


def test_bench_options_are_checked():
    for bad in ({"max_seconds": -1}, {"max_seconds": float("nan")}, {"startup_rounds": -2}, {"min_rounds": 1.5}, {"precision": 0}):
        with pytest.raises(OptionError):
            BenchOptions(**bad)


def test_frames_round_trip_and_a_short_pipe_is_an_eof():
    stream = io.BytesIO()
    protocol.send(stream, ("run", {"count": 3}))
    stream.seek(0)
    assert protocol.receive(stream) == ("run", {"count": 3})
    with pytest.raises(EOFError):
        protocol.receive(io.BytesIO(b"\x05"))


def test_profile_events_become_per_run_times(tmp_path):
    events = [{"cat": "Node", "name": f"{node}_kernel_time", "dur": dur, "args": {"op_name": op, "provider": "CPUExecutionProvider"}}
              for node, op, dur in (("mm", "MatMul", 300), ("mm", "MatMul", 300), ("relu", "Relu", 100), ("relu", "Relu", 100))]  # fmt: skip
    events.append({"cat": "Session", "name": "model_run", "dur": 9999})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    summary = summarize_profile(path, runs=2)
    assert summary.per_run_us == 400 and [op.op_type for op in summary.by_op_type] == ["MatMul", "Relu"]
    assert summary.by_op_type[0].share == 0.75 and summary.top_nodes[0].name == "mm"


def test_the_worker_times_the_requested_runs():
    from ortforge.measure.worker import Worker

    model = from_proto(linear_model(8, batch=1))
    worker = Worker()
    source, entries = model.ort_source()
    loaded = worker.load(source, entries, model.name, SessionConfig(), [{"x": np.ones((1, 8), np.float32)}])
    assert loaded["providers"] == ["CPUExecutionProvider"] and loaded["create_s"] > 0
    times = worker.run(5)
    assert len(times) == 5 and all(t > 0 for t in times)
    assert len(worker.run(4, streams=2)) == 4  # requests in flight: wall time per request


def test_peak_memory_is_the_measuring_process_own(tmp_path):
    """A child started from a parent holding 300 MiB reports its own peak, not the parent's (ru_maxrss survives exec)."""
    import subprocess
    import sys

    held = np.ones(300 * 2**20 // 8)  # 300 MiB in this process
    child = subprocess.run([sys.executable, "-c", "from ortforge.measure.memory import peak_rss; print(peak_rss())"],
                           capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert int(child.stdout) < 250 * 2**20 and held.sum() > 0
