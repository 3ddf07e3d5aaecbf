"""Mixed precision (`fp16 --auto`) and the gate every fp16 conversion passes (judged for real on a GPU EP, else simulated).

The search finds a large set of nodes that can run in fp16 within the tolerance, in few evaluations.
fp16 rounding is a small perturbation, so the output error of a set of nodes is close to the sum of
the errors its parts cause alone. The fp16 nodes are cut into groups (graph-order chunks, the heavy
MatMul/Conv nodes apart from the cheap ones); each group is simulated alone once, and groups are
chosen greedily while their summed error stays under a margin of the tolerance. A simulation of the
choice is the judge; a miss tightens the margin. With evaluations left, the rejected group with the
least error alone is split in halves and the choice made again. One evaluation = one simulated
model, one session, every sample.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ortforge.accuracy.judge import Judge, Verdict
from ortforge.accuracy.metrics import Outputs
from ortforge.accuracy.tolerance import Tolerance
from ortforge.analysis.macs import count_macs
from ortforge.core.deadline import WRITE_S, Deadline, timed
from ortforge.core.errors import OptionError, UserError
from ortforge.core.model import Model
from ortforge.core.runtime import GPU_PROVIDERS, available_providers
from ortforge.core.session import SessionConfig, run_outputs
from ortforge.data import FeedSet
from ortforge.measure.memory import release_freed_memory
from ortforge.transforms import TransformResult
from ortforge.transforms.fp16 import (
    Fp16Options,
    Fp16Plan,
    convert_fp16,
    measure_activation_ranges,
    plan_fp16,
    simulate_fp16,
)

HEAVY_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose", "Attention", "MultiHeadAttention", "FusedMatMul", "Einsum",
             "LSTM", "GRU", "RNN"}  # fmt: skip
FIRST_CHUNKS = 8  # graph-order chunks, each split heavy/cheap: up to 16 groups simulated alone
MARGIN = 0.8  # a choice's summed error must stay under this fraction of the tolerance
IDLE_SPLITS = 2  # splits in a row that found nothing better end the search
PROBED_ELEMENTS = 200_000  # output elements the error model keeps: bounded memory and greedy time


@dataclass
class SearchReport:
    """What `--auto` did; its plan always meets the tolerance (with every node fp32 at worst)."""

    evaluations: int
    wall_s: float
    kept_fp32: list[tuple[str, str]]  # (node, why)
    notes: list[str] = field(default_factory=list)
    choices: list[tuple[int, float, bool]] = field(default_factory=list)  # (fp16 nodes, predicted error / tolerance, met when judged)

    def to_dict(self) -> dict:
        return {"evaluations": self.evaluations, "wall_s": self.wall_s, "kept_fp32": self.kept_fp32, "notes": self.notes,
                "choices": [{"fp16_nodes": n, "predicted": p, "met": m} for n, p, m in self.choices]}  # fmt: skip


def simulated_outputs(model: Model, plan: Fp16Plan, feeds: FeedSet) -> Outputs:
    simulated = simulate_fp16(model, plan)
    return run_outputs(simulated.as_model(model), feeds, SessionConfig(graph_optimization_level="disable"))


def fp16_outputs(model: Model, plan: Fp16Plan, feeds: FeedSet, judge_on: str | None = None) -> Outputs:
    """The plan's outputs: simulated on the CPU, or with `judge_on` (an EP this ORT has, e.g. CUDA) the
    converted model run there, real fp16 kernels and all."""
    if judge_on is None:
        return simulated_outputs(model, plan, feeds)
    return run_outputs(convert_fp16(model, plan).as_model(model), feeds, SessionConfig.on(judge_on))


def judge_for(provider: str | None) -> str | None:
    """Where fp16 is judged for a plan made for `provider`: for real on a GPU EP this ORT has, else None (simulation)."""
    return provider if provider in GPU_PROVIDERS and provider in available_providers() else None


def fp16_mac_share(model: Model, plan: Fp16Plan, feeds: FeedSet) -> float | None:
    """Fraction of the counted MACs that the plan's fp16 nodes compute: the part fp16 can speed up."""
    sample = feeds.samples[0]
    macs = count_macs(model, {name: np.shape(value) for name, value in sample.items()}, feeds=sample, top=sys.maxsize)  # every counted node
    counted = sum(node.macs for node in macs.top_nodes)  # both branches of an If count here, unlike in total_macs
    if not counted:
        return None
    fp16 = set(plan.fp16_nodes())
    return sum(node.macs for node in macs.top_nodes if node.name in fp16) / counted


class _ErrorProbe:
    """A candidate's output error on a bounded set of float output elements, and its size in tolerances."""

    def __init__(self, reference: Outputs, all_fp16: Outputs, rtol: float, atol: float, limit: int = PROBED_ELEMENTS) -> None:
        first = reference[0]
        # Float tensors only: sequences and maps are judged by the simulation that checks every choice.
        self.shapes = {n: first[n].shape for n in first if isinstance(first[n], np.ndarray) and first[n].dtype.kind == "f"}
        flat = self._flat(reference)
        index = np.flatnonzero(np.isfinite(flat))
        if index.size > limit:  # the elements full fp16 hurts most, and a random sample of the rest
            hurt = np.nan_to_num(np.abs(self._flat(all_fp16)[index] - flat[index]) / (atol + rtol * np.abs(flat[index]) + 1e-30), nan=np.inf)
            worst = index[np.argsort(-hurt)[: limit // 2]]
            rest = np.setdiff1d(index, worst)
            index = np.union1d(worst, np.random.default_rng(0).choice(rest, limit - worst.size, replace=False))
        self.index = index
        self.reference = flat[index]
        self.tolerance = atol + rtol * np.abs(self.reference)

    def _flat(self, outputs: Outputs) -> np.ndarray:
        parts = []
        for sample in outputs:
            for name, shape in self.shapes.items():
                value = np.asarray(sample[name], np.float64)
                parts.append(value.ravel() if value.shape == shape else np.full(int(np.prod(shape)), np.inf))
        return np.concatenate(parts) if parts else np.zeros(0)

    def error(self, outputs: Outputs) -> np.ndarray:
        return np.nan_to_num(self._flat(outputs)[self.index] - self.reference, nan=np.inf)

    def ratio(self, error: np.ndarray) -> float:
        """Worst |error| / tolerance: 1 or less is within."""
        if error.size == 0:
            return 0.0
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.max(np.where(error == 0, 0.0, np.abs(error) / self.tolerance)))


@dataclass(eq=False)  # compared by identity: groups are split and regrouped during the search
class _Group:
    nodes: tuple[str, ...]
    error: np.ndarray  # probed output error with only this group in fp16
    ratio: float


def _first_groups(plan: Fp16Plan) -> list[tuple[str, ...]]:
    """fp16 nodes in graph-order chunks, each split into heavy (MatMul, Conv, ...) and cheap nodes."""
    names = plan.fp16_nodes()
    groups = []
    for chunk in np.array_split(np.array(names, dtype=object), min(FIRST_CHUNKS, len(names))):
        heavy = tuple(n for n in chunk if plan.decisions[n].op_type in HEAVY_OPS)
        cheap = tuple(n for n in chunk if plan.decisions[n].op_type not in HEAVY_OPS)
        groups.extend(group for group in (heavy, cheap) if group)
    return groups


def _choose(groups: list[_Group], probe: _ErrorProbe, margin: float, plan: Fp16Plan) -> list[_Group]:
    """Greedy: heavy groups first, least error first; take each group while the summed error stays under the margin."""
    chosen: list[_Group] = []
    total = np.zeros_like(probe.reference)
    for group in sorted(groups, key=lambda g: (-_value([g], plan)[0] / max(g.ratio, 1e-9), g.ratio)):
        if group.ratio <= margin and probe.ratio(total + group.error) <= margin:
            chosen.append(group)
            total = total + group.error
    return chosen


def _value(groups: list[_Group], plan: Fp16Plan) -> tuple[int, int]:
    """Heavy fp16 nodes first (they bring the speed), then all fp16 nodes."""
    nodes = [n for group in groups for n in group.nodes]
    return sum(plan.decisions[n].op_type in HEAVY_OPS for n in nodes), len(nodes)


class _OutOfTime(Exception):
    """The next evaluation would not finish before the deadline (less the time kept for converting and writing)."""


class _GroupSearch:
    def __init__(self, model: Model, plan: Fp16Plan, feeds: FeedSet, judge: Judge, max_evaluations: int, judge_on: str | None = None,
                 deadline: Deadline | None = None, keep_s: float = 0.0) -> None:  # fmt: skip
        self.model, self.plan, self.feeds, self.judge, self.judge_on = model, plan, feeds, judge, judge_on
        self.deadline, self.keep_s, self.out_of_time = deadline, keep_s, False
        self.reference, self.max_evaluations = judge.reference, max_evaluations
        self.rtol, self.atol = _closeness(judge)
        self.evaluations = 0
        self.choices: list[tuple[int, float, bool]] = []
        self.with_islands = replace(plan, options=replace(plan.options, drop_islands=False))

    def evaluate(self, candidate: Fp16Plan) -> tuple[Outputs, bool]:
        # Kept for the end beyond `keep_s`: the conversion, the final judging run and the reopen, each about one evaluation.
        if self.evaluations and self.deadline is not None and not self.deadline.fits("fp16 evaluation", self.keep_s + 3 * self.deadline.typical("fp16 evaluation")):
            self.out_of_time = True
            raise _OutOfTime
        self.evaluations += 1
        with timed(self.deadline, "fp16 evaluation"):
            outputs = fp16_outputs(self.model, candidate, self.feeds, self.judge_on)
            ok = self.judge(outputs, detail=False).passed
        return outputs, ok

    def only(self, nodes: Iterable[str], plan: Fp16Plan | None = None) -> Fp16Plan:
        keep = set(nodes)
        plan = plan or self.plan
        return plan.with_fp32([n for n in plan.fp16_nodes() if n not in keep], reason="kept fp32 by the mixed-precision search")

    def alone(self, nodes: tuple[str, ...], probe: _ErrorProbe) -> _Group:
        # Measured with lone nodes left fp16: a group's own error, even where the final plan would drop an island.
        outputs, _ = self.evaluate(self.only(nodes, self.with_islands))
        error = probe.error(outputs)
        return _Group(nodes, error, probe.ratio(error))

    def run(self) -> tuple[list[_Group], list[_Group]] | None:
        """The groups of the best verified choice and the rest; None when full fp16 already meets the tolerance.
        Out of time, the best choice verified so far (none: every node fp32)."""
        outputs, ok = self.evaluate(self.plan)
        if ok:
            return None
        best: list[_Group] = []
        groups: list[_Group] = []
        try:
            self._search(outputs, groups, best)
        except _OutOfTime:
            pass
        return best, [group for group in groups if group not in best]

    def _search(self, outputs: Outputs, groups: list[_Group], best: list[_Group]) -> None:
        """Fill `groups` with the measured groups and `best` with the best verified choice of them."""
        probe = _ErrorProbe(self.reference, outputs, self.rtol, self.atol)
        for nodes in _first_groups(self.plan):
            groups.append(self.alone(nodes, probe))
        tried: set[frozenset[str]] = set()
        margin, idle_splits = MARGIN, 0
        while self.evaluations < self.max_evaluations and idle_splits < IDLE_SPLITS:
            chosen = _choose(groups, probe, margin, self.plan)
            key = frozenset(n for group in chosen for n in group.nodes)
            if chosen and key not in tried:
                tried.add(key)
                met = self.evaluate(self.only(key))[1]
                self.choices.append((len(key), probe.ratio(sum(group.error for group in chosen)), met))
                if not met:
                    margin *= 0.6  # the sum underestimated the error: ask for more headroom
                    continue
                if _value(chosen, self.plan) > _value(best, self.plan):
                    best[:], idle_splits = chosen, 0
            if not self._split_one(groups, best, probe):
                break
            idle_splits += 1

    def _split_one(self, groups: list[_Group], best: list[_Group], probe: _ErrorProbe) -> bool:
        """Split the rejected group with the least error alone in halves (two evaluations); False if none is left."""
        rejected = [group for group in groups if group not in best and len(group.nodes) > 1]
        if not rejected or self.evaluations + 3 > self.max_evaluations:
            return False
        closest = min(rejected, key=lambda group: group.ratio)
        groups.remove(closest)
        half = len(closest.nodes) // 2
        groups.extend(self.alone(part, probe) for part in (closest.nodes[:half], closest.nodes[half:]))
        return True


def _closeness(judge: Judge) -> tuple[float, float]:
    """The rtol/atol the search measures errors in: the judge must hold a `close` bound."""
    if judge.close is None:
        raise OptionError("tolerance", ", ".join(t.describe() for t in judge.tolerances), "the mixed-precision search needs an rtol/atol bound")
    return judge.close


def search_mixed_precision(
    model: Model, plan: Fp16Plan, feeds: FeedSet, judge: Judge, max_evaluations: int = 30, judge_on: str | None = None,
    deadline: Deadline | None = None, keep_s: float = 0.0,
) -> tuple[Fp16Plan, SearchReport]:
    """A plan with many fp16 nodes whose outputs on `feeds` (simulated, or run on `judge_on`) the judge accepts
    (every node fp32 at worst). The judge holds the fp32 outputs on the same feeds and an rtol/atol bound.
    With a `deadline`, no evaluation starts that would leave less than `keep_s` seconds."""
    start = time.perf_counter()
    search = _GroupSearch(model, plan, feeds, judge, max_evaluations, judge_on, deadline, keep_s)
    found = search.run()
    if found is None:
        return plan, SearchReport(search.evaluations, time.perf_counter() - start, [])
    kept, rejected = found
    why = [(node, f"{plan.decisions[node].op_type}: its group of {len(group.nodes)} node(s) alone put outputs at {group.ratio:.3g}x the tolerance")
           for group in rejected for node in group.nodes]  # fmt: skip
    bounds = ", ".join(tolerance.describe() for tolerance in judge.tolerances)
    notes = [] if kept else [f"no group of fp16 nodes met {bounds} in {search.evaluations} evaluations: every node stays fp32"]
    if search.out_of_time:
        notes.append(f"the search stopped after {search.evaluations} evaluations: the time budget (the best choice verified by then is kept)")
    result = search.only(n for group in kept for n in group.nodes)
    return result, SearchReport(search.evaluations, time.perf_counter() - start, why, notes, search.choices)


@dataclass
class Fp16Outcome:
    plan: Fp16Plan
    result: TransformResult  # the converted model
    reference: Outputs  # fp32 outputs on the feeds
    judged: Outputs  # the plan's fp16 outputs, simulated or real
    verdict: Verdict
    search: SearchReport | None = None
    judged_by: str = "simulation"
    judge: Judge | None = None  # the judge that gave the verdict (the written model is judged again with it)


def convert_within(model: Model, feeds: FeedSet, options: Fp16Options, tolerances: Sequence[Tolerance], *, auto: bool = False,
                   hook: Callable | None = None, force: bool = False, subject: str = "fp16 model", deadline: Deadline | None = None) -> Fp16Outcome:  # fmt: skip
    """The gate `ortforge fp16` applies: plan with measured ranges, search if `auto`, judge (for real on a local
    GPU EP, else by simulation), and convert only when the judge accepts the outputs (or `force`)."""
    plan = plan_fp16(model, replace(options, activation_ranges=measure_activation_ranges(model, feeds)))
    judge_on = judge_for(options.provider)
    judge = Judge(run_outputs(model, feeds), tolerances, hook, feeds=feeds, reference_label="fp32")
    search = None
    if auto:
        plan, search = search_mixed_precision(model, plan, feeds, judge, judge_on=judge_on, deadline=deadline, keep_s=WRITE_S)
    result = None
    if judge_on is None:
        judged = simulated_outputs(model, plan, feeds)
        release_freed_memory()  # the simulated copy (a whole fp32 model) is gone; glibc keeps its memory unless asked
    else:  # convert once: the model judged on the EP is the one written
        result = convert_fp16(model, plan, feeds=feeds)
        judged = run_outputs(result.as_model(model), feeds, SessionConfig.on(judge_on))
    verdict = judge(judged)
    if not verdict.passed and not force:
        how = f"on {judge_on}" if judge_on else "simulated"
        raise UserError(f"{subject}: not written, fp16 outputs ({how}): {verdict.reason}",
                        hint="auto (--auto) keeps the sensitive nodes in fp32; force (--force) writes it anyway")  # fmt: skip
    return Fp16Outcome(plan, result or convert_fp16(model, plan, feeds=feeds), judge.reference, judged, verdict, search, judge_on or "simulation",
                       judge)  # fmt: skip
