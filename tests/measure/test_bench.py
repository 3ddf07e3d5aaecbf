"""bench: real sessions in subprocesses, interleaved rounds, ratios, memory, profile, placement."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from helpers import linear_model, make_model, save, tensor, weight
from ortforge.commands.bench import BenchTarget, bench, parse_bench_targets
from ortforge.core.errors import UserError
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.measure.bench import BenchOptions

QUICK = BenchOptions(max_seconds=0.6, warmup_seconds=0.05, block_seconds=0.05, min_rounds=3, profile_seconds=0.1)


def deep_model(width: int, layers: int, inner: int | None = None):
    """x [4, width] -> `layers` MatMuls through `inner` features (default `width`) -> y [4, width]."""
    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    sizes = [width] + [inner or width] * (layers - 1) + [width]
    for index in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, f"w{index}"], [f"h{index}"], name=f"mm{index}"))
        weights.append(weight(f"w{index}", rng.standard_normal((sizes[index], sizes[index + 1])).astype(np.float32) / sizes[index]))
        previous = f"h{index}"
    nodes.append(helper.make_node("Relu", [previous], ["y"], name="relu"))
    return make_model(nodes, [tensor("x", [4, width])], [tensor("y", [4, width])], weights)


def test_two_models_side_by_side_with_ratios(tmp_path):
    small = save(deep_model(32, 1), tmp_path / "small.onnx")
    big = save(deep_model(32, 6, inner=512), tmp_path / "big.onnx")  # same inputs, ~400x the arithmetic
    report = bench([str(small), str(big)], options=QUICK)
    first, second = report.variants
    assert (first.label, second.label) == ("small.onnx", "big.onnx")
    assert first.ratio.median == pytest.approx(1.0)
    assert second.ratio.median > 3  # ~400x the arithmetic: must show up as slower whatever the noise
    assert second.ratio.low <= second.ratio.median <= second.ratio.high
    for result in report.variants:
        stats = result.latency
        assert 0 < stats.min <= stats.p50 <= stats.p90 <= stats.p99 <= stats.max
        assert result.create_s > 0 and result.first_run_s > 0
        assert result.throughput == pytest.approx(4 / (stats.p50 / 1e3))
        assert result.placement.counts.get("CPUExecutionProvider", 0) >= 1
    # What was run is recorded, whatever a busy machine allowed in the time: every variant in every round, the A/A pair too.
    assert report.rounds == len(first.latency.round_medians) == len(second.latency.round_medians) == report.noise.rounds >= 1
    assert "MatMul" in {item.op_type for item in second.profile.by_op_type}
    assert any("generated" in note for note in report.notes)


def test_every_variant_runs_on_the_same_inputs(tmp_path):
    narrow, wide = save(deep_model(32, 1), tmp_path / "narrow.onnx"), save(deep_model(64, 1), tmp_path / "wide.onnx")
    with pytest.raises(UserError, match="wide.onnx: cannot be measured on the inputs of .*narrow.onnx.*axis 1 must be 64"):
        bench([str(narrow), str(wide)], options=QUICK)


def test_session_memory_reflects_weights(tmp_path):
    path = save(deep_model(2048, 4), tmp_path / "heavy.onnx")  # 64 MiB of weights
    (result,) = bench([str(path)], options=BenchOptions(max_seconds=0.3, warmup_seconds=0.05, block_seconds=0.05, min_rounds=2, profile=False)).variants
    assert result.session_rss > 60 * 2**20
    assert result.peak_rss > result.session_rss
    assert result.profile is None


def test_config_files_apply_to_the_model_before_them(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    config = tmp_path / "one_thread.json"
    config.write_text(SessionConfig(intra_op_num_threads=1).to_json())
    targets = parse_bench_targets([str(model), str(config)])
    assert targets == [BenchTarget(str(model)), BenchTarget(str(model), str(config))]
    report = bench(targets, options=QUICK)
    assert report.variants[1].config["intra_op_num_threads"] == 1
    assert report.variants[1].label == "m.onnx + one_thread.json"


def test_config_before_any_model_is_refused(tmp_path):
    with pytest.raises(UserError, match="must follow the model"):
        parse_bench_targets(["cfg.json", "m.onnx"])


def test_bad_provider_fails_with_one_line(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="not available"):
        bench([str(model)], default_config=SessionConfig(providers=[ProviderSpec("NoSuchExecutionProvider")]), options=QUICK)


def test_user_data_is_used(tmp_path):
    model = save(linear_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((16, 8), np.float32))
    report = bench([str(model)], data=str(tmp_path / "in.npz"), options=QUICK)
    assert report.variants[0].batch == 16
    assert report.feeds["generated"] is False
    assert not any("generated" in note for note in report.notes)


def test_requests_in_flight_share_one_session_across_threads(tmp_path):
    import threading

    import onnxruntime as ort

    from ortforge.measure.worker import Worker

    model = save(deep_model(32, 2), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    callers = []

    class Recording:  # the real session, noting which thread calls it
        def run(self, names, feed):
            callers.append(threading.get_ident())
            return session.run(names, feed)

    worker = Worker()
    worker.session, worker.feeds = Recording(), [{"x": np.ones((4, 32), np.float32)}]
    times = worker.run(10, streams=2)
    assert len(callers) == 10 and len(set(callers)) == 2
    assert len(times) == 10 and min(times) > 0


def test_bench_with_streams_reports_time_per_request(tmp_path):
    model = save(deep_model(32, 2), tmp_path / "m.onnx")
    report = bench([str(model)], options=QUICK, streams=2, default_config=SessionConfig(intra_op_num_threads=1))
    result = report.variants[0]
    assert result.streams == 2 and result.latency.p50 > 0 and result.throughput > 0
    assert any("requests in flight" in note for note in report.notes)
    with pytest.raises(UserError, match="^streams=0: give 1 or more"):
        bench([str(model)], options=QUICK, streams=0)


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="malloc_trim is glibc's; elsewhere the call is a no-op")
def test_freed_heap_memory_goes_back_to_the_os():
    import subprocess
    import sys

    script = (
        "import psutil\n"
        "from ortforge.measure.memory import release_freed_memory\n"
        "rss = lambda: psutil.Process().memory_info().rss >> 20\n"
        "blocks = [bytes(4096) + bytes([i % 251]) for i in range(50_000)]\n"  # ~200 MiB in glibc's heap, not pymalloc's
        "sentinel = bytes(4096) + b'x'\n"  # allocated last: the heap cannot shrink from its top by itself
        "del blocks\n"
        "kept = rss()\n"
        "release_freed_memory()\n"
        "print(kept, rss())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    kept, after = map(int, result.stdout.split())
    assert kept - after > 100, (kept, after)
