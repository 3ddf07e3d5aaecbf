"""The one judge: tolerances applied to measured metrics, the hook, cached metrics, and model-vs-model verification."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import linear_model
from ortforge.accuracy.judge import Judge, require, verify
from ortforge.accuracy.tolerance import Tolerance, close
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto
from ortforge.data import FeedSet

REFERENCE = [{"y": np.array([[1.0, 2.0, 3.0, 4.0] * 8])}, {"y": np.array([[4.0, 3.0, 2.0, 1.0] * 8])}]


def _shifted(delta: float) -> list[dict]:
    return [{"y": sample["y"] + delta} for sample in REFERENCE]


def test_every_tolerance_must_hold_and_each_miss_is_named():
    judge = Judge(REFERENCE, [Tolerance("cosine", 0.99), Tolerance("max_abs", 0.01)])
    assert judge(REFERENCE).passed
    verdict = judge(_shifted(0.1))
    assert not verdict.passed and verdict.failures == ["max_abs 0.1 misses max_abs <= 0.01"]
    assert verdict.measured["cosine"] > 0.99 and verdict.samples == 2
    assert "OUTSIDE" in verdict.summary() and "max_abs" in verdict.reason


def test_close_bound_and_a_candidate_that_cannot_be_compared():
    judge = Judge(REFERENCE, [close(1e-2, 1e-3)])
    assert judge(_shifted(1e-3)).passed and not judge(_shifted(0.5)).passed
    assert not judge([{"y": np.zeros((2, 2))}, {"y": np.zeros((2, 2))}]).passed  # other shape: one line, no exception
    with pytest.raises(UserError, match="one rtol/atol bound"):
        Judge(REFERENCE, [close(1e-2, 0), close(0, 1e-3)])


def test_a_boolean_hook_is_a_check_and_a_numeric_hook_is_bounded_by_eval():
    says_no = Judge(REFERENCE, [Tolerance("cosine", 0.9)], hook=lambda outputs, reference: False)
    assert says_no(REFERENCE).failures == ["the eval hook said no"]
    assert says_no.decide_measured(says_no(REFERENCE).measured).failures == ["the eval hook said no"]  # cached: still a no
    scored = Judge(REFERENCE, [Tolerance("eval", 0.5)], hook=lambda outputs, reference: 0.25)
    assert not scored(REFERENCE).passed and scored(REFERENCE).measured["eval"] == 0.25
    raising = Judge(REFERENCE, [], hook=lambda outputs, reference: 1 / 0)
    with pytest.raises(UserError, match="^the eval hook raised ZeroDivisionError"):  # the user's bug stops the command: not a verdict
        raising(REFERENCE)


def test_cached_metrics_are_judged_by_the_same_rules_and_the_key_tracks_the_judge():
    judge = Judge(REFERENCE, [Tolerance("cosine", 0.99), Tolerance("top1", 1.0)])
    assert judge.decide_measured({"cosine": 0.995, "top1": 1.0}).passed
    assert judge.decide_measured({"cosine": 0.995}).failures == ["top1 does not apply to these outputs"]
    assert judge.key() != Judge(REFERENCE, [Tolerance("cosine", 0.999)]).key()
    assert judge.key() != Judge(REFERENCE, judge.tolerances, hook=lambda o, r: 1.0).key()


def test_verify_runs_both_models_with_their_configs(tmp_path):
    original = from_proto(linear_model(8, batch=1))
    altered_proto = linear_model(8, batch=1)
    altered_proto.graph.initializer[0].raw_data = bytes(len(altered_proto.graph.initializer[0].raw_data))
    feeds = FeedSet([{"x": np.ones((1, 8), np.float32)}], "ones", generated=True)
    same = verify(original, original, feeds, [close(1e-5, 1e-5)])
    assert same.passed and same.generated_inputs and "level disable" in same.reference
    changed = verify(original, from_proto(altered_proto), feeds, [close(1e-5, 1e-5)])
    assert not changed.passed
    with pytest.raises(UserError, match="not written"):
        require(changed, "out.onnx")
    require(changed, "out.onnx", force=True)  # forced: no error


def test_a_search_judge_with_a_margin_leaves_part_of_each_bound_unspent():
    from ortforge.accuracy.tolerance import Tolerance, close

    assert Tolerance("cosine", 0.99).tightened(0.75).value == pytest.approx(0.9925)
    assert Tolerance("top1", 0.9).tightened(0.5).value == pytest.approx(0.95)
    assert Tolerance("max_abs", 1e-2).tightened(0.75).value == pytest.approx(7.5e-3)
    assert close(1e-2, 1e-3).tightened(0.5).value == pytest.approx(0.5)
    assert Tolerance("eval", 0.8).tightened(0.5).value == 0.8  # a hook's score has no scale to tighten on
    reference = [{"y": np.ones(8, np.float32)}]
    judge = Judge(reference, [Tolerance("cosine", 0.99)])
    stricter = judge.on(reference, FeedSet([{"x": np.zeros(1, np.float32)}], origin="test", generated=True), margin=0.75)
    assert stricter.tolerances[0].value == pytest.approx(0.9925) and judge.tolerances[0].value == 0.99
