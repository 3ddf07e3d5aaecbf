"""`ortforge fp16`: fp16 conversion judged by simulation on the CPU, and `--auto` mixed precision.

The search finds a small set of nodes to keep in fp32 in few evaluations: one instrumented run ranks
the fp16 nodes by the error they add (simulated fp16 vs fp32, tensor by tensor), risky ops (Exp,
Pow, reductions, Softmax, the nodes that produce outputs) go first, then the kept set grows
1, 2, 4, ... nodes down the ranking until the outputs are within tolerance and is bisected back to
the shortest prefix that still is. Each evaluation is one simulated model and one session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from .accuracy import Outputs, compare
from .data import FeedSet
from .model import Model, from_proto
from .quantization import run_outputs
from .session import SessionConfig, run_checked
from .transforms.fp16 import Fp16Plan, simulate_fp16
from .verify import ShapeMismatch, compare_outputs

RISKY_OPS = {"Exp", "Pow", "Log", "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2",
             "ReduceLogSumExp", "Sqrt", "Reciprocal", "Div", "CumSum", "Erf"}  # fmt: skip


@dataclass
class SearchReport:
    met: bool
    evaluations: int
    wall_s: float
    kept_fp32: list[tuple[str, str]]  # (node, why)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"met": self.met, "evaluations": self.evaluations, "wall_s": self.wall_s, "kept_fp32": self.kept_fp32, "notes": self.notes}


def within(reference: Outputs, candidate: Outputs, rtol: float, atol: float) -> bool:
    """Every output element within atol + rtol * |fp32| (NaNs where fp32 has them), as `ortforge.verify` judges."""
    names = list(reference[0]) if reference else []
    try:
        diffs = compare_outputs([[s[n] for n in names] for s in reference], [[s[n] for n in names] for s in candidate], names, rtol, atol)
    except ShapeMismatch:
        return False
    return not any(diff.mismatched for diff in diffs)


def simulated_outputs(model: Model, plan: Fp16Plan, feeds: FeedSet) -> Outputs:
    simulated = simulate_fp16(model, plan)
    return run_outputs(from_proto(simulated.proto, base_dir=model.base_dir), feeds, SessionConfig(graph_optimization_level="disable"))


def _added_error(model: Model, plan: Fp16Plan, feed: dict) -> dict[str, float]:
    """fp16 node -> relative error of its outputs minus the worst of its inputs' (one instrumented run each)."""
    fp16 = set(plan.fp16_nodes())
    nodes = [n for n in model.proto.graph.node if n.name in fp16]
    names = sorted({o for n in nodes for o in n.output if o})
    errors: dict[str, float] = {}
    runs = []
    for proto in (model.proto, simulate_fp16(model, plan).proto):
        augmented = onnx.ModelProto()
        augmented.CopyFrom(proto)
        present = {o for n in augmented.graph.node for o in n.output}
        wanted = [name for name in names if name in present]
        augmented.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
        session = SessionConfig(graph_optimization_level="disable").build(from_proto(augmented, base_dir=model.base_dir))
        outputs = [o.name for o in session.get_outputs()]
        runs.append(dict(zip(outputs, run_checked(session, feed, model.name))))
    reference, simulated = runs
    for name in names:
        if name in reference and name in simulated and np.asarray(reference[name]).dtype.kind == "f":
            ref = np.asarray(reference[name], np.float64)
            norm = np.linalg.norm(ref)
            diff = np.linalg.norm(np.asarray(simulated[name], np.float64) - ref) if ref.shape == np.shape(simulated[name]) else np.inf
            errors[name] = float(diff / norm) if norm > 0 else float(diff > 0)
    added = {}
    for node in nodes:
        own = max((errors.get(o, 0.0) for o in node.output), default=0.0)
        inherited = max((errors.get(i, 0.0) for i in node.input), default=0.0)
        added[node.name] = own - inherited if np.isfinite(own) else np.inf
    return added


def ranked_candidates(model: Model, plan: Fp16Plan, feeds: FeedSet) -> list[tuple[str, str]]:
    """fp16 nodes in the order to try keeping them fp32, each with why it is on the list."""
    fp16 = set(plan.fp16_nodes())
    outputs = {o.name for o in model.proto.graph.output}
    ordered: dict[str, str] = {}
    for node in model.proto.graph.node:
        if node.name in fp16 and set(node.output) & outputs:
            ordered.setdefault(node.name, "produces a model output")
    for node in model.proto.graph.node:
        if node.name in fp16 and node.op_type in RISKY_OPS:
            ordered.setdefault(node.name, f"{node.op_type}: sensitive to fp16 range and precision")
    added = _added_error(model, plan, feeds.samples[0])
    for name, error in sorted(added.items(), key=lambda item: -item[1]):
        ordered.setdefault(name, f"adds {error:.2g} relative error in simulated fp16")
    return list(ordered.items())


def search_mixed_precision(
    model: Model, plan: Fp16Plan, feeds: FeedSet, rtol: float, atol: float, hook: Callable | None = None, max_evaluations: int = 30,
    reference: Outputs | None = None,
) -> tuple[Fp16Plan, SearchReport]:
    """The plan with the fewest extra fp32 nodes (down a ranked list) whose simulated outputs meet the tolerance."""
    start = time.perf_counter()
    reference = reference if reference is not None else run_outputs(model, feeds)
    evaluations = 0
    tried: dict[int, bool] = {}

    def meets(candidate: Fp16Plan) -> bool:
        nonlocal evaluations
        evaluations += 1
        outputs = simulated_outputs(model, candidate, feeds)
        ok = within(reference, outputs, rtol, atol)
        if ok and hook is not None:
            ok = bool(hook(outputs, reference))  # the user's validate function has the last word
        return ok

    if meets(plan):
        return plan, SearchReport(True, evaluations, time.perf_counter() - start, [])
    order = ranked_candidates(model, plan, feeds)
    evaluations += 1  # the instrumented ranking run

    def with_prefix(count: int) -> Fp16Plan:
        return plan.with_fp32([name for name, _ in order[:count]], reason="kept fp32 by the mixed-precision search")

    def passes(count: int) -> bool:
        if count not in tried:
            tried[count] = meets(with_prefix(count))
        return tried[count]

    low, high, count = 0, None, 1
    while count <= len(order) and evaluations < max_evaluations:
        if passes(count):
            high = count
            break
        low = count
        count = len(order) if count * 2 > len(order) and count < len(order) else count * 2
    if high is None:
        note = f"no prefix of {len(order)} ranked node(s) met rtol={rtol:g} atol={atol:g} in {evaluations} evaluations"
        return plan.with_fp32([n for n, _ in order], reason="search gave up"), SearchReport(False, evaluations, time.perf_counter() - start, [], [note])
    while high - low > 1 and evaluations < max_evaluations:
        middle = (low + high) // 2
        if passes(middle):
            high = middle
        else:
            low = middle
    return with_prefix(high), SearchReport(True, evaluations, time.perf_counter() - start, order[:high])


def accuracy_of(reference: Outputs, simulated: Outputs) -> dict:
    """Simulated fp16 against fp32: metrics for the report."""
    report = compare(reference, simulated)
    return {name: report.metric(name) for name in ("cosine", "max_abs", "rel")}
