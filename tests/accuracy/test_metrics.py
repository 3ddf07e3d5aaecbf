"""Accuracy metrics, the tolerance vocabulary and the eval hook."""

from __future__ import annotations

import numpy as np
import pytest

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.metrics import compare
from ortforge.accuracy.tolerance import Tolerance, close, default_tolerances, parse_tolerances
from ortforge.core.errors import OptionError, UserError


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
    assert parse_tolerances(["cosine=0.99"]) == [Tolerance("cosine", 0.99)]
    assert Tolerance("cosine", 0.99).met_by(0.995) and not Tolerance("cosine", 0.99).met_by(0.98)
    assert Tolerance("max_abs", 1e-3).met_by(1e-4) and not Tolerance("max_abs", 1e-3).met_by(1e-2)
    assert not Tolerance("max_abs", 1e-3).met_by(float("nan"))
    for bad in ("cosine", "speed=1", "cosine=high", "cosine=2", "max_abs=-1", "cosine=nan", "rtol=-1"):
        with pytest.raises(OptionError, match="^tolerances="):
            parse_tolerances([bad])


def test_rtol_and_atol_spell_one_close_bound_over_the_defaults():
    defaults = [close(1e-2, 1e-3)]
    assert parse_tolerances([], defaults) == defaults
    assert parse_tolerances(["rtol=1e-4"], defaults) == [close(1e-4, 1e-3)]  # the default atol stays
    assert parse_tolerances(["atol=0.5", "cosine=0.9"]) == [Tolerance("cosine", 0.9), close(0.0, 0.5)]


def test_close_metric_is_allclose_and_nan_aware():
    reference = [{"y": np.array([1.0, 100.0, np.nan, 0.0] * 5)}]
    near = [{"y": np.array([1.005, 100.5, np.nan, 0.0] * 5)}]
    assert compare(reference, near, close=(1e-2, 1e-3)).metric("close") <= 1.0  # within, NaN where the reference has NaN
    far = [{"y": np.array([1.05, 100.0, np.nan, 0.0] * 5)}]
    assert compare(reference, far, close=(1e-2, 1e-3)).metric("close") > 1.0
    nan_out = [{"y": np.array([1.0, 100.0, np.nan, np.nan] * 5)}]
    assert compare(reference, nan_out, close=(1e-2, 1e-3)).metric("close") == float("inf")


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
    with pytest.raises(OptionError, match="^eval_hook=nosuchmodule:f: hook module cannot be imported"):
        load_eval_hook("nosuchmodule:f")


def test_change_rates_come_with_a_bound():
    from ortforge.accuracy.metrics import change_rate_bound

    assert change_rate_bound(0, 64) == pytest.approx(0.0457, abs=5e-4)  # the rule of three: ~3/64
    assert change_rate_bound(2, 20) == pytest.approx(0.2826, abs=2e-3)  # Clopper-Pearson, one-sided 95%
    assert change_rate_bound(20, 20) == 1.0 and change_rate_bound(0, 0) == 1.0


def test_per_step_class_scores_are_judged_as_whole_sequences():
    steps = np.full((1, 6, 3), 0.1)
    steps[0, :, 0] = 0.8
    changed = steps.copy()
    changed[0, 4] = [0.1, 0.8, 0.1]  # one step of six decodes differently
    report = compare([{"p": steps}], [{"p": changed}])
    (output,) = report.outputs
    assert output.top1 == pytest.approx(5 / 6) and output.sequence == 0.0
    assert output.counts["sequence"] == (1, 1) and any("sequence: 1 of 1 sequences changed" in line for line in report.evidence())
    assert [t.metric for t in default_tolerances([{"p": steps}])] == ["cosine", "top1", "sequence"]


def test_per_token_outputs_are_compared_over_real_tokens_and_as_pooled_embeddings():
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((1, 8, 4))
    padding_differs = hidden.copy()
    padding_differs[0, 3:] = -hidden[0, 3:]  # only the padding positions change
    mask = np.array([[1, 1, 1, 0, 0, 0, 0, 0]])
    masked = compare([{"h": hidden}], [{"h": padding_differs}], masks=[mask]).outputs[0]
    assert masked.real_tokens_only and masked.cosine == pytest.approx(1.0) and masked.pooled_cosine == pytest.approx(1.0)
    assert compare([{"h": hidden}], [{"h": padding_differs}]).outputs[0].cosine < 0.5  # whole tensor: padding counted
    real_differs = hidden.copy()
    real_differs[0, :3] *= np.array([1.0, 1.0, 0.2, 1.0])
    changed = compare([{"h": hidden}], [{"h": real_differs}], masks=[mask]).outputs[0]
    assert changed.cosine == min(changed.pooled_cosine, changed.cosine) < 0.99  # the worse of per-token and pooled


def test_probability_maps_are_judged_by_their_side_of_one_half():
    prob = np.linspace(0.0, 1.0, 100).reshape(1, 1, 10, 10)
    nudged = prob.copy()
    nudged[0, 0, 4, 9] = 0.51  # 0.4949 -> 0.51 crosses 0.5
    output = compare([{"map": prob}], [{"map": nudged}]).outputs[0]
    assert output.agreement == pytest.approx(0.99) and output.counts["agreement"] == (1, 100)
    assert Tolerance("agreement", 0.99) in default_tolerances([{"map": prob}])


def test_nan_or_infinite_inputs_are_refused_naming_input_and_sample(tmp_path):
    from helpers import linear_model, save
    from ortforge.core.model import load_model
    from ortforge.data import load_feeds

    model = load_model(save(linear_model(8, batch=1), tmp_path / "m.onnx"))
    bad = np.ones((1, 8), np.float32)
    bad[0, 3] = np.nan
    np.savez(tmp_path / "x.npz", x=bad)
    with pytest.raises(UserError, match=r"x.npz: input 'x' holds 1 NaN/infinite value"):
        load_feeds(model, str(tmp_path / "x.npz"))


def test_token_logits_are_judged_by_the_share_of_positions_whose_top1_holds():
    from ortforge.accuracy.metrics import output_accuracy
    from ortforge.accuracy.tolerance import default_tolerances, token_logits

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((1, 40, 50)).astype(np.float32)
    candidate = reference.copy()
    candidate[0, :2, :] = candidate[0, :2, ::-1]  # two positions' top-1 moved
    result = output_accuracy("logits", [reference], [candidate])
    assert result.token_top1 == pytest.approx(38 / 40) and result.counts["token_top1"] == (2, 40)
    assert token_logits("logits", reference) and not token_logits("last_hidden_state", reference)
    assert any(t.metric == "token_top1" for t in default_tolerances([{"logits": reference}]))
    assert not any(t.metric == "token_top1" for t in default_tolerances([{"last_hidden_state": reference}]))


def test_token_logits_carry_the_perplexity_of_the_inputs_own_next_tokens_as_evidence_not_a_gate():
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import parse_tolerances
    from ortforge.data import FeedSet

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (1, 40))
    reference = rng.standard_normal((1, 40, 50)).astype(np.float32)
    reference[0, np.arange(39), ids[0, 1:]] += 4.0  # the reference expects each next token
    candidate = reference * 0.5  # the same top-1 everywhere, flatter: a higher perplexity
    mask = np.ones((1, 40), np.int64)
    mask[0, 30:] = 0  # padding neither predicts nor is predicted
    feeds = FeedSet([{"input_ids": ids, "attention_mask": mask}], origin="test", generated=False)
    judge = Judge([{"logits": reference}], parse_tolerances(["token_top1=0.95"]), feeds=feeds)
    verdict = judge([{"logits": candidate}])
    assert verdict.passed and verdict.measured["token_top1"] == 1.0
    expected = []
    for logits in (reference, candidate):
        scores = logits[0, :29].astype(np.float64)
        log_total = np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1)) + scores.max(-1)
        expected.append(np.exp(np.mean(log_total - scores[np.arange(29), ids[0, 1:30]])))
    assert verdict.measured["perplexity_reference"] == pytest.approx(expected[0]) and verdict.measured["perplexity"] == pytest.approx(expected[1])
    assert verdict.measured["perplexity_tokens"] == 29 and expected[1] > expected[0]
    line = next(line for line in verdict.evidence if "perplexity" in line)
    assert "29 predicted" in line and judge.decide_measured(verdict.measured).evidence[-1] == line.split(": ", 1)[1]  # a cached verdict too
    assert verdict.accuracy.to_dict()["outputs"][0]["perplexity"][2] == 29  # in the JSON report too
