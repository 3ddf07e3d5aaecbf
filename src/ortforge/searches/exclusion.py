"""Automatic exclusion: a small set of nodes kept in float that brings a recipe within tolerance, in a budget of evaluations.

Candidates come in the order that usually pays off: the quantized nodes nearest the outputs (logits suffer most), then
consumers of wide-range activations, then layers by quant-debug's SQNR ranking. The search first keeps the worse half of
that list in float: when even that misses, the recipe cannot be rescued without keeping most of its heavy layers float
(little int8 speed would be left) and the search says so and stops. Otherwise short prefixes (1, 2, 4, ... nodes) are
tried, since one or two culprits are common; then the passing set is shrunk by groups (delta debugging: a group alone,
then the set without a group, halving the groups), which finds the culprits wherever the ranking put them. Every attempt
is judged on the samples given (tune gives the calibration half and judges the result on the evaluation half). The
report gives the set, its size, and the share of the recipe's int8 MACs it leaves in float.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import onnx

from ortforge.accuracy.judge import Judge
from ortforge.analysis.quant_errors import QuantDebugReport, debug_quantization
from ortforge.core.deadline import Deadline, timed
from ortforge.core.graph import GraphIndex
from ortforge.core.model import Model
from ortforge.core.progress import Progress, silent
from ortforge.data import FeedSet
from ortforge.searches.recipes import build_recipe
from ortforge.searches.trial import Trial
from ortforge.transforms.quantize import QuantizeOptions, float_graph

WIDE_RANGE_FACTOR = 20.0  # an activation this many times wider than the median one counts as wide-range
PREFIXES = (1, 2, 4)  # the short prefixes of the ranking tried before the search by groups
RANKING_SAMPLES = 4  # samples quant-debug ranks layers on: a few rank as well as many, at a fraction of the time
HEAVY_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the layers a leading region counts
# Attempts judged on the calibration half leave this share of each bound's error unspent: the recipe was calibrated on
# those samples, so it does better there than on held-out ones (a set that passed there by a hair missed on both det and magika).
SEARCH_MARGIN = 0.75


@dataclass
class ExclusionCandidate:
    node: str
    reason: str


@dataclass
class ExclusionReport:
    met: bool
    excluded: list[ExclusionCandidate]
    attempts: int
    ranking: QuantDebugReport
    notes: list[str] = field(default_factory=list)
    out_of_time: bool = False  # stopped by the deadline (or the attempts) before the search was done
    float_macs_share: float | None = None  # of the MACs the recipe quantized, the share the set keeps float
    minimal: bool = False  # no node of the set can go back to int8 alone (the search ran to the end)

    def to_dict(self) -> dict:
        return {
            "met": self.met,
            "excluded": [c.__dict__ for c in self.excluded],
            "size": len(self.excluded),
            "float_macs_share": self.float_macs_share,
            "minimal": self.minimal,
            "attempts": self.attempts,
            "worst_layers": [e.__dict__ for e in self.ranking.worst_layers(10)],
            "notes": self.notes,
            "out_of_time": self.out_of_time,
        }


@dataclass
class SetSearch:
    """What `find_float_set` found: a passing set (None when none), the attempts spent, and why it stopped where it did."""

    found: tuple[str, ...] | None
    attempts: int
    minimal: bool = False
    notes: list[str] = field(default_factory=list)
    out_of_budget: bool = False


def find_float_set(ordered: Sequence[str], passes: Callable[[tuple[str, ...]], bool], may_attempt: Callable[[], bool]) -> SetSearch:
    """A small set of `ordered` (most suspect first) whose nodes kept float make `passes` true: the worse half first (or give
    up), then one culprit at a time, each the end of the shortest passing prefix (found by galloping 1, 2, 4, ... then
    bisecting, so culprits ranked high cost few attempts), until the culprits found pass alone. With a verdict that only
    improves as nodes go float, the set is minimal: no node of it can go back to int8."""
    tried: dict[tuple[str, ...], bool] = {}

    def attempt(nodes: tuple[str, ...]) -> bool:
        key = tuple(sorted(nodes))
        if key not in tried:
            tried[key] = passes(nodes)
        return tried[key]

    names = tuple(ordered)
    if not names:
        return SetSearch(None, 0, notes=["quant-debug ranked no quantized node of this recipe, so none could be kept in float"])
    if not may_attempt():
        return SetSearch(None, 0, notes=["no attempt fitted in the budget"], out_of_budget=True)
    rest = names[: max(1, (len(names) + 1) // 2)]
    if not attempt(rest):
        return SetSearch(None, len(tried), notes=[f"keeping the worse half of the ranked nodes ({len(rest)} of {len(names)}) in float still misses "
                                                  "the tolerance: no small set of nodes holds the error"])  # fmt: skip
    found: tuple[str, ...] = ()  # culprits so far: found + rest always passes, found alone (at first, the recipe) does not

    def unfinished(nodes: tuple[str, ...]) -> SetSearch:
        return SetSearch(nodes, len(tried), notes=[f"the budget of attempts ended before the set was minimal ({len(nodes)} node(s))"],
                         out_of_budget=True)  # fmt: skip

    while True:
        low, high = 0, len(rest)  # found + rest[:low] misses, found + rest[:high] passes
        step = 1
        while step < high and may_attempt():  # gallop: culprits ranked high are found in few attempts
            if attempt(found + rest[:step]):
                high = step
                break
            low, step = step, step * 2
        while high - low > 1 and may_attempt():
            middle = (low + high) // 2
            if attempt(found + rest[:middle]):
                high = middle
            else:
                low = middle
        if high - low > 1:
            return unfinished(found + rest[:high])
        found, rest = found + (rest[high - 1],), rest[: high - 1]
        if not rest:  # found + rest passes, so found does
            break
        if tuple(sorted(found)) not in tried and not may_attempt():
            return unfinished(found + rest)
        if attempt(found):
            break
    return SetSearch(found, len(tried), minimal=True)


def find_leading_region(regions: Sequence[tuple[str, ...]], passes: Callable[[tuple[str, ...]], bool],
                        may_attempt: Callable[[], bool]) -> SetSearch:  # fmt: skip
    """The shortest of `regions` (growing leading parts of the graph: everything up to the k-th heavy layer) whose nodes
    kept float make `passes` true, by bisection; the first half of the heavy layers at most (more would leave little int8).
    For networks whose early, high-resolution layers carry the error that every later layer then passes on."""
    if not regions:
        return SetSearch(None, 0, notes=["no heavy layer to keep float"])
    attempts = 0
    low, high = 0, max(1, len(regions) // 2)  # regions[low - 1] misses (none at 0), regions[high - 1] is the first to check
    if not may_attempt():
        return SetSearch(None, 0, notes=["no attempt fitted in the budget"], out_of_budget=True)
    attempts += 1
    if not passes(regions[high - 1]):
        return SetSearch(None, attempts, notes=[f"keeping the first {high} of {len(regions)} heavy layers float (and everything before "
                                                "them) still misses: only keeping most heavy layers float could rescue this recipe, which "
                                                "would leave little int8 speed; not searched further"])  # fmt: skip
    while high - low > 1 and may_attempt():
        middle = (low + high) // 2
        attempts += 1
        if passes(regions[middle - 1]):
            high = middle
        else:
            low = middle
    done = high - low <= 1
    notes = [f"kept float: the leading part of the graph through heavy layer {high} of {len(regions)} ({len(regions[high - 1])} node(s))"
             + ("" if done else "; the budget of attempts ended before the shortest such part was found")]  # fmt: skip
    return SetSearch(regions[high - 1], attempts, minimal=False, notes=notes, out_of_budget=not done)


def leading_regions(proto: onnx.ModelProto, quantizable: set[str]) -> list[tuple[str, ...]]:
    """For each heavy quantizable layer in graph order, the quantizable nodes up to and including it."""
    regions, region = [], []
    for node in proto.graph.node:
        if node.name not in quantizable:
            continue
        region.append(node.name)
        if node.op_type in HEAVY_OPS:
            regions.append(tuple(region))
    return regions


def _quantizable_nodes(float_proto: onnx.ModelProto, quantized_proto: onnx.ModelProto, op_types: Sequence[str] = ()) -> set[str]:
    """Float nodes whose inputs or outputs the recipe quantized, of the recipe's op types when it names them (excluding
    any other node changes nothing: a HardSwish between two quantized Convs reads dequantized values either way)."""
    touched = {node.input[0] for node in quantized_proto.graph.node if node.op_type == "QuantizeLinear"}
    touched |= {node.output[0] for node in quantized_proto.graph.node if node.op_type == "DequantizeLinear"}
    touched = {name.removesuffix("_DequantizeLinear_Output").removesuffix("_quantized") for name in touched}
    wanted = set(op_types) | ({"Gemm"} if "MatMul" in op_types else set())  # pre-processing fuses MatMul + Add into Gemm
    return {n.name for n in float_proto.graph.node if touched & (set(n.input) | set(n.output)) and (not wanted or n.op_type in wanted)}


def _tail_nodes(proto: onnx.ModelProto, index: GraphIndex, quantizable: set[str]) -> list[str]:
    """The quantizable nodes closest to each graph output (walking producers back from the outputs)."""
    found: list[str] = []
    frontier = [o.name for o in proto.graph.output]
    seen: set[str] = set()
    while frontier and len(found) < 2 * len(proto.graph.output):
        name = frontier.pop(0)
        node = index.producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in quantizable:
            found.append(node.name)
        else:
            frontier.extend(node.input)
    return found


def candidates(float_proto: onnx.ModelProto, quantized_proto: onnx.ModelProto, ranking: QuantDebugReport,
               op_types: Sequence[str] = ()) -> list[ExclusionCandidate]:  # fmt: skip
    """Nodes to try keeping in float, most promising first, each with the reason it is on the list."""
    quantizable = _quantizable_nodes(float_proto, quantized_proto, op_types)
    index = GraphIndex(float_proto)
    ordered: dict[str, str] = {}
    for name in _tail_nodes(float_proto, index, quantizable):
        ordered.setdefault(name, "nearest quantized node to a model output")
    ranges = [e.float_absmax for e in ranking.activations if e.float_absmax > 0]
    typical = statistics.median(ranges) if ranges else 0.0
    for error in sorted(ranking.activations, key=lambda e: -e.float_absmax):
        if typical and error.float_absmax >= WIDE_RANGE_FACTOR * typical:
            for consumer in [node.name for node in index.consumers.get(error.tensor, [])]:
                if consumer in quantizable:
                    ordered.setdefault(consumer, f"input '{error.tensor}' spans |x| up to {error.float_absmax:.3g} ({error.float_absmax / typical:.0f}x the median)")
    for rank, error in enumerate(ranking.activations, 1):
        if error.node in quantizable:
            ordered.setdefault(error.node, f"SQNR {error.sqnr_db:.1f} dB (rank {rank} of {len(ranking.activations)})")
    return [ExclusionCandidate(node, reason) for node, reason in ordered.items()]


def search_exclusions(
    model: Model,
    outcome: Trial,
    calibration: FeedSet,
    evaluation: FeedSet,
    judge: Judge,
    progress: Progress | None = None,
    max_attempts: int = 12,
    ranking_feeds: FeedSet | None = None,
    deadline: Deadline | None = None,
    keep_s: float = 0.0,
) -> tuple[Trial, ExclusionReport]:
    """Keep a small set of nodes in float that makes `outcome`'s recipe meet the judge's tolerances on `evaluation` (pass
    the calibration half, and judge the result on held-out samples after), within `max_attempts` quantize-and-judge rounds;
    layers are ranked on `ranking_feeds` (default `evaluation`: a few samples rank as well as many). With a `deadline`, no
    attempt starts that would leave less than `keep_s` seconds (the slowest attempt so far as the guide)."""
    recipe = outcome.candidate.recipe
    assert isinstance(recipe, QuantizeOptions) and outcome.model is not None
    report_progress = progress or silent
    report_progress("ranking layers (quant-debug)", 0.0)
    # Rank and exclude in the graph ORT quantized (pre-processing renames and fuses nodes; equalization rescales channels).
    prepared = float_graph(model, recipe, calibration, [])
    ranking = debug_quantization(prepared, outcome.model, ranking_feeds or evaluation)
    ordered = candidates(prepared.proto, outcome.model.proto, ranking, recipe.op_types)
    reasons = {c.node: c.reason for c in ordered}
    base_exclude = tuple(recipe.exclude)
    built: dict[tuple[str, ...], Trial] = {}

    def passes(nodes: tuple[str, ...]) -> bool:
        report_progress(f"keeping {len(nodes)} node(s) in float", min(0.95, (len(built) + 1) / max_attempts))
        # Names are those of the prepared graph; pre-processing is deterministic, so they match again.
        options = replace(recipe, exclude=base_exclude + nodes)
        with timed(deadline, "exclusion attempt"):
            built[nodes] = build_recipe(model, options, calibration, evaluation, judge)
        return built[nodes].passed

    def may_attempt() -> bool:
        return len(built) < max_attempts and (deadline is None or deadline.fits("exclusion attempt", keep_s, deadline.typical("build")))

    search = find_float_set([c.node for c in ordered], passes, may_attempt)
    if search.found is None and not search.out_of_budget and search.attempts:
        # The worse half missed: the error may be spread over the early layers rather than held by a few nodes.
        quantizable = _quantizable_nodes(prepared.proto, outcome.model.proto, recipe.op_types)
        region = find_leading_region(leading_regions(prepared.proto, quantizable), passes, may_attempt)
        reasons.update({node: "in the leading part of the graph kept float" for node in region.found or ()})
        search = replace(region, attempts=search.attempts + region.attempts, notes=search.notes + region.notes)
    if search.found is None:
        # Stopped by the deadline rather than by the attempts' cap or a verdict: a run with more time may find a set.
        out_of_time = search.out_of_budget and len(built) < max_attempts
        return outcome, ExclusionReport(False, [], search.attempts, ranking, search.notes, out_of_time)
    chosen = next(trial for nodes, trial in built.items() if tuple(sorted(nodes)) == tuple(sorted(search.found)))
    excluded = [ExclusionCandidate(node, reasons[node]) for node in search.found]
    share = _float_macs_share(prepared, evaluation, outcome.model.proto, search.found, recipe.op_types)
    notes = list(search.notes)
    if share is not None:
        notes.append(f"{len(excluded)} node(s) kept float, {share:.0%} of the MACs the recipe quantized")
    return chosen, ExclusionReport(True, excluded, search.attempts, ranking, notes, search.out_of_budget, share, search.minimal)


def _float_macs_share(prepared: Model, feeds: FeedSet, quantized: onnx.ModelProto, kept: Sequence[str], op_types: Sequence[str]) -> float | None:
    """Of the MACs in nodes the recipe quantized, the share in the nodes kept float (None when they cannot be counted)."""
    import sys

    from ortforge.analysis.macs import count_macs
    from ortforge.core.errors import UserError

    sample = feeds.samples[0] if feeds.samples else None
    if sample is None or any(not hasattr(value, "shape") for value in sample.values()):
        return None
    try:
        report = count_macs(prepared, {name: tuple(value.shape) for name, value in sample.items()}, feeds=sample, top=sys.maxsize)
    except UserError:
        return None
    quantizable = _quantizable_nodes(prepared.proto, quantized, op_types)
    macs = {node.name: node.macs for node in report.top_nodes if not node.where and node.name in quantizable}
    total = sum(macs.values())
    return sum(macs.get(name, 0) for name in kept) / total if total else None
