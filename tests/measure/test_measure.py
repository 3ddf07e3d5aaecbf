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
from ortforge.measure.compare import CandidateScore, consistent_winner, score
from ortforge.measure.profile import summarize_profile
from ortforge.measure.stats import latency_stats, median_is_stable, ratio_spread


def _result(label: str, round_ms: list[float]) -> VariantResult:
    rounds = [[int(ms * 1e6)] * 3 for ms in round_ms]
    return VariantResult(label, "m", {}, [], 0.0, 0.0, latency_stats([t for r in rounds for t in r], rounds), 1, 1.0, 0, 0)


def test_latency_stats_are_milliseconds_with_round_medians():
    stats = latency_stats([1_000_000, 2_000_000, 3_000_000, 4_000_000], [[1_000_000, 2_000_000], [3_000_000, 4_000_000]])
    assert stats.count == 4 and stats.p50 == pytest.approx(2.5) and stats.min == 1.0 and stats.max == 4.0
    assert stats.round_medians == [1.5, 3.5] and stats.spread == (1.5, 3.5)


def test_stopping_rule_and_ratio_spread():
    assert not median_is_stable([[10, 10]], 0.01)  # one round says nothing yet
    assert median_is_stable([[10, 10, 10], [10, 10, 10]], 0.01)
    assert not median_is_stable([[10, 10], [20, 20, 20, 20]], 0.01)
    assert ratio_spread([[5], [6], [4]], [[10], [10], [10]]) == pytest.approx((0.5, 0.4, 0.6))


def test_a_winner_must_win_most_rounds_not_just_the_median():
    baseline = _result("fp32", [10.0] * 8)
    steady = score(_result("steady", [9.0] * 8), baseline)
    lucky = score(_result("lucky", [5.0, 5.0, 5.0, 11.0, 11.0, 11.0, 11.0, 5.0]), baseline)
    assert steady.wins == 1.0 and lucky.wins == 0.5
    assert consistent_winner([score(baseline, baseline), lucky, steady]) is steady
    assert consistent_winner([score(baseline, baseline), lucky]) is None
    assert isinstance(steady, CandidateScore) and steady.ratio == pytest.approx(0.9)


def test_bench_options_are_checked():
    for bad in ({"max_seconds": -1}, {"max_seconds": float("nan")}, {"startup_rounds": -2}, {"min_rounds": 1.5}):
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
