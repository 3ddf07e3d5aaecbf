"""The time budget as a deadline: stages planned from what a measurement costs, dropped when they cannot fit."""

from __future__ import annotations

import time

import numpy as np
import pytest

from helpers import linear_model, save
from ortforge.core.deadline import Deadline, timed
from ortforge.core.errors import OptionError
from ortforge.core.model import load_model
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import generate_feeds
from ortforge.measure.bench import MIN_ROUNDS, BenchOptions, Variant, bench
from ortforge.measure.cost import MeasureCost, reference_run
from ortforge.tuning.schedule import Schedule, Stage
from ortforge.tuning.search import CONFIRM, FINAL, SCREEN, TuneOptions, tune_search

COST = MeasureCost(process_s=0.5, create_s=0.01)  # scripted costs: the decisions below must not depend on this machine


def stages() -> list[Stage]:
    return [Stage("screening", 6, SCREEN, 0.25, 3), Stage("session screening", 10, SCREEN, 0.1, 1),
            Stage("final", 6, FINAL, 0.8, 0), Stage("confirmation", 5, CONFIRM, 0.5, 2)]  # fmt: skip


def test_stages_that_cannot_fit_are_dropped_least_important_first():
    generous = Schedule(Deadline(600), COST, stages())
    assert generous.fit() == [] and len(generous.stages) == 4
    need = {s.name: COST.minimum(s.variants, s.options) for s in stages()}
    room = need["final"] + need["screening"] + generous.tail_s + 1.0  # the final run and the screen fit, nothing else
    tight = Schedule(Deadline(room), COST, stages())
    assert tight.fit() == ["session screening", "confirmation"]
    assert [s.name for s in tight.stages] == ["screening", "final"]
    hopeless = Schedule(Deadline(0.5), COST, stages())
    hopeless.fit()
    assert [s.name for s in hopeless.stages] == ["final"]  # the final run is never dropped


def test_a_granted_stage_gets_its_minimum_and_leaves_the_later_ones_theirs():
    schedule = Schedule(Deadline(120), COST, stages())
    schedule.fit()
    granted = schedule.grant("screening", 6)
    assert granted is not None and granted.max_seconds >= SCREEN.min_rounds * SCREEN.block_seconds
    later = sum(COST.minimum(s.variants, s.options) for s in schedule.stages) + schedule.tail_s
    assert granted.deadline is not None and granted.deadline <= schedule.deadline.at - later + 0.5
    assert schedule.grant("screening", 6) is None  # granted once
    final = schedule.grant("final", 3)  # fewer finalists than planned: the measurement is smaller
    assert final is not None and final.max_seconds <= 6.0


def test_an_optional_stage_that_no_longer_fits_is_skipped_and_said():
    schedule = Schedule(Deadline(60, started=time.monotonic() - 59.5), COST, stages())  # a budget nearly spent
    assert schedule.grant("confirmation", 5) is None and "confirmation" in schedule.dropped
    assert schedule.grant("final", 4) is not None  # the final run still runs, at its minimum


def test_a_budget_too_short_for_one_comparison_is_refused_before_any_build(tmp_path):
    class NeverBuilds:
        def build(self, candidate):
            raise AssertionError("built despite a budget too short to compare anything")

    with pytest.raises(OptionError, match="too short for even one timed comparison") as caught:
        tune_search(NeverBuilds(), [], TuneOptions(time_budget_s=1.0), cost=COST)
    assert caught.value.option == "time_budget_s" and "give at least" in str(caught.value)


def test_measure_cost_learns_from_a_measurement(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    options = BenchOptions(max_seconds=0.3, profile=True, profile_seconds=0.05, block_seconds=0.02, min_rounds=3)
    report = bench([Variant("a", model, SessionConfig(), generate_feeds(model)), Variant("b", model, SessionConfig(), generate_feeds(model))], options)
    cost = MeasureCost(process_s=99.0)
    cost.learn(report, options)
    assert set(report.phases) >= {"start", "load", "timed", "collect"}
    assert cost.process_s < 99.0 and cost.collect_s is not None and cost.create_s > 0


def test_the_reference_run_gives_the_judge_its_outputs_and_the_first_cost_guess(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    feeds = generate_feeds(model, 2)
    reference, cost = reference_run(model, feeds)
    expected = run_outputs(model, feeds)
    assert len(reference) == 2 and all(np.array_equal(a["y"], b["y"]) for a, b in zip(reference, expected))
    assert cost.create_s > 0 and cost.process_s > cost.create_s


def test_a_deadline_cuts_the_timed_rounds_short(tmp_path):
    model = load_model(save(linear_model(), tmp_path / "m.onnx"))
    feeds = generate_feeds(model)
    options = BenchOptions(max_seconds=30.0, profile=True, block_seconds=0.02, deadline=time.monotonic())  # already past
    report = bench([Variant("a", model, SessionConfig(), feeds), Variant("b", model, SessionConfig(), feeds)], options)
    assert report.rounds == MIN_ROUNDS and all(v.profile is None for v in report.variants)
    assert any("time budget ran out" in note for note in report.notes)


def test_work_timed_against_a_deadline_guides_whether_more_fits():
    deadline = Deadline(10.0)
    assert deadline.fits("build") and deadline.typical("build", 3.0) == 3.0
    with timed(deadline, "build"):
        time.sleep(0.05)
    assert 0.04 < deadline.typical("build") < 5.0
    deadline.record("build", 20.0)  # the slowest build guides the next decision
    assert not deadline.fits("build")
    with pytest.raises(OptionError):
        Deadline(float("nan"))
