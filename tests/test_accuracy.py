"""Accuracy metrics, tolerances and the --eval hook."""

from __future__ import annotations

import numpy as np
import pytest

from ortforge.accuracy.metrics import (
    Tolerance,
    compare,
    load_eval_hook,
    parse_tolerance,
)
from ortforge.core.errors import UserError


def test_metrics_on_known_differences():
    reference = [{"y": np.array([[1.0, 2.0, 3.0, 4.0] * 8])}]
    candidate = [{"y": reference[0]["y"] + np.array([[0.5, 0.0, 0.0, 0.0] * 8])}]
    report = compare(reference, candidate)
    (output,) = report.outputs
    assert output.max_abs == pytest.approx(0.5)
    assert output.mean_abs == pytest.approx(0.125)
    assert output.rel == pytest.approx(0.5 / 4.0)
    assert 0.99 < output.cosine < 1.0
    assert output.top1 == 1.0


def test_top1_applies_to_scores_not_to_states():
    probabilities = np.full((1, 5, 4), 0.25)
    probabilities[..., 0] = 0.4
    probabilities[..., 1:] = 0.2
    state = np.random.default_rng(0).standard_normal((2, 1, 128))
    report = compare([{"p": probabilities, "s": state}], [{"p": probabilities, "s": state}])
    tops = {o.name: o.top1 for o in report.outputs}
    assert tops["p"] == 1.0 and tops["s"] is None


def test_changed_argmax_lowers_top1():
    reference = [{"y": np.array([[0.9, 0.1]])}, {"y": np.array([[0.2, 0.8]])}]
    candidate = [{"y": np.array([[0.9, 0.1]])}, {"y": np.array([[0.8, 0.2]])}]
    assert compare(reference, candidate).metric("top1") == 0.5


def test_tiny_outputs_pool_cosine_over_samples():
    reference = [{"p": np.array([[v]])} for v in (0.1, 0.9, 0.2, 0.8)]
    flipped = [{"p": np.array([[v]])} for v in (0.9, 0.1, 0.8, 0.2)]
    assert compare(reference, flipped).metric("cosine") < 0.6  # per-sample cosines of scalars would all be 1


def test_tolerances_parse_and_judge():
    assert parse_tolerance("cosine=0.99") == Tolerance("cosine", 0.99)
    assert Tolerance("cosine", 0.99).met_by(0.995) and not Tolerance("cosine", 0.99).met_by(0.98)
    assert Tolerance("max_abs", 1e-3).met_by(1e-4) and not Tolerance("max_abs", 1e-3).met_by(1e-2)
    for bad in ("cosine", "speed=1", "cosine=high"):
        with pytest.raises(UserError, match="--tolerance"):
            parse_tolerance(bad)


def test_eval_hook(tmp_path, monkeypatch):
    (tmp_path / "metric.py").write_text(
        "def agreement(outputs, reference):\n"
        "    return sum(float((o['y'] == r['y']).all()) for o, r in zip(outputs, reference)) / len(reference)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = load_eval_hook("metric:agreement")
    reference = [{"y": np.array([1.0])}, {"y": np.array([2.0])}]
    report = compare(reference, [{"y": np.array([1.0])}, {"y": np.array([3.0])}], hook)
    assert report.metric("eval") == 0.5
    with pytest.raises(UserError, match="no function 'nope'"):
        load_eval_hook("metric:nope")
