"""tune-session: candidate configs and a real end-to-end run (the winner rule is tested in tests/measure)."""

from __future__ import annotations

from helpers import linear_model, save
from ortforge.commands.tune_session import candidates, tune_session
from ortforge.core.session import SPINNING, SessionConfig
from ortforge.tuning.sessions import AFFINITY, CPU_KINDS, thread_counts


def test_candidates_change_one_thing_from_the_defaults():
    found = {c.label: c.config for c in candidates(SessionConfig(), cores=4)}
    assert found["ORT defaults"] == SessionConfig()
    assert [found[f"{n} intra-op thread(s)"].intra_op_num_threads for n in (1, 2, 4)] == [1, 2, 4]
    assert "3 intra-op thread(s)" not in found  # a ladder of counts, not every one
    assert found["4 intra-op thread(s), pinned"].config_entries[AFFINITY] == "2;3;4"  # one group per extra thread
    assert found["no spinning"].config_entries[SPINNING] == "0"
    assert found["parallel execution, 2 inter-op threads"].execution_mode == "parallel"
    assert not found["no CPU memory arena"].enable_cpu_mem_arena


def test_thread_counts_climb_in_powers_of_two_to_the_core_count():
    assert thread_counts(1) == [1] and thread_counts(2) == [1, 2]
    assert thread_counts(6) == [1, 2, 4, 6] and thread_counts(16) == [1, 2, 4, 8, 16]


def test_ep_options_are_tried_only_for_configured_eps_and_a_gpu_base_gets_no_cpu_thread_settings():
    cuda = candidates(SessionConfig.on("CUDAExecutionProvider"), cores=4)
    assert any("cudnn_conv_algo_search=HEURISTIC" in c.label for c in cuda) and any("prefer_nhwc=1" in c.label for c in cuda)
    assert not any(c.kind in CPU_KINDS for c in cuda)  # the CPU runs only what CUDA leaves: its threads are not the question
    assert not any("cudnn" in c.label for c in candidates(SessionConfig(), cores=1))


def test_tune_session_writes_a_loadable_config(tmp_path):
    model = save(linear_model(64), tmp_path / "m.onnx")
    tuning, path = tune_session(str(model), tmp_path / "best.json", seconds=0.4)
    config = SessionConfig.load(path)  # the "measurements" section is ignored on load
    assert config == tuning.chosen.config
    assert tuning.scores[0].label == "ORT defaults" and len(tuning.scores) >= 2
    assert all(len(v.latency.round_medians) >= 2 for v in tuning.final.variants)


def test_candidate_configs_build_sessions(tmp_path):
    from ortforge.core.model import load_model

    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    for candidate in candidates(SessionConfig(), cores=2):
        candidate.config.build(model)  # every candidate must be a config ORT accepts (affinity format included)


def test_the_denormals_candidate_flushes_them_on_the_pool_threads(tmp_path):
    """x86 cores slow down on denormal floats; the candidate asks ORT to flush them, which the outputs show."""
    import numpy as np
    from onnx import helper

    from helpers import make_model, tensor
    from ortforge.core.model import from_proto
    from ortforge.core.session import run_outputs
    from ortforge.data import FeedSet
    from ortforge.tuning.sessions import DENORMALS

    size = 1 << 20  # large enough for ORT to split the Mul over both threads
    model = from_proto(make_model([helper.make_node("Mul", ["x", "x"], ["y"])], [tensor("x", [size])], [tensor("y", [size])]))
    feeds = FeedSet([{"x": np.full(size, 1e-20, np.float32)}], origin="test", generated=True)  # squares are denormal
    flushed = next(c for c in candidates(SessionConfig(), cores=2) if c.label == "denormals as zero").config
    assert flushed.config_entries[DENORMALS] == "1" and flushed.intra_op_num_threads == 0
    kept = run_outputs(model, feeds, SessionConfig(intra_op_num_threads=2))[0]["y"]
    zeroed = run_outputs(model, feeds, SessionConfig(intra_op_num_threads=2, config_entries=flushed.config_entries))[0]["y"]
    assert not (kept == 0).any() and (zeroed == 0).any()  # the calling thread's share keeps them: ORT sets the pool's flags
