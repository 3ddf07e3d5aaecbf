"""Automatic exclusion: the smallest set of nodes kept in float that brings a recipe within tolerance.

Candidates come in the order that usually pays off: the quantized nodes nearest the outputs (logits
suffer most), then consumers of wide-range activations, then layers by quant-debug's SQNR ranking.
A growing prefix of that list is excluded (1, 2, 4, ... nodes) until the tolerance is met, then the
prefix is bisected down to the shortest one that still meets it.
"""

from __future__ import annotations

import statistics
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
from ortforge.transforms.quantize import QuantizeOptions, prepare

WIDE_RANGE_FACTOR = 20.0  # an activation this many times wider than the median one counts as wide-range


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
    out_of_time: bool = False  # stopped by the deadline before the attempts ran out

    def to_dict(self) -> dict:
        return {
            "met": self.met,
            "excluded": [c.__dict__ for c in self.excluded],
            "attempts": self.attempts,
            "worst_layers": [e.__dict__ for e in self.ranking.worst_layers(10)],
            "notes": self.notes,
            "out_of_time": self.out_of_time,
        }


def _quantizable_nodes(float_proto: onnx.ModelProto, quantized_proto: onnx.ModelProto) -> set[str]:
    """Float nodes whose inputs or outputs the recipe quantized (excluding any other node changes nothing)."""
    touched = {node.input[0] for node in quantized_proto.graph.node if node.op_type == "QuantizeLinear"}
    touched |= {node.output[0] for node in quantized_proto.graph.node if node.op_type == "DequantizeLinear"}
    touched = {name.removesuffix("_DequantizeLinear_Output").removesuffix("_quantized") for name in touched}
    return {n.name for n in float_proto.graph.node if touched & (set(n.input) | set(n.output))}


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


def candidates(float_proto: onnx.ModelProto, quantized_proto: onnx.ModelProto, ranking: QuantDebugReport) -> list[ExclusionCandidate]:
    """Nodes to try keeping in float, most promising first, each with the reason it is on the list."""
    quantizable = _quantizable_nodes(float_proto, quantized_proto)
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
    """Keep the fewest nodes in float that make `outcome`'s recipe meet the judge's tolerances on `evaluation`
    (layers ranked on `ranking_feeds`, default `evaluation`: a few samples rank as well as many, at a fraction of the time).
    With a `deadline`, no attempt starts that would leave less than `keep_s` seconds (the slowest attempt so far as the guide)."""
    recipe = outcome.candidate.recipe
    assert isinstance(recipe, QuantizeOptions) and outcome.model is not None
    report_progress = progress or silent
    report_progress("ranking layers (quant-debug)", 0.0)
    # Rank and exclude in the graph ORT quantized (pre-processing renames and fuses nodes).
    prepared = prepare(model, recipe, [])
    ranking = debug_quantization(prepared, outcome.model, ranking_feeds or evaluation)
    ordered = candidates(prepared.proto, outcome.model.proto, ranking)
    base_exclude = tuple(recipe.exclude)
    attempts = 0
    tried: dict[int, Trial] = {}

    def attempt(count: int) -> Trial:
        nonlocal attempts
        if count not in tried:
            attempts += 1
            report_progress(f"keeping {count} node(s) in float", min(0.95, attempts / max_attempts))
            # Names are those of the prepared graph; pre-processing is deterministic, so they match again.
            options = replace(recipe, exclude=base_exclude + tuple(c.node for c in ordered[:count]))
            with timed(deadline, "exclusion attempt"):
                tried[count] = build_recipe(model, options, calibration, evaluation, judge)
        return tried[count]

    def may_attempt() -> bool:
        return attempts < max_attempts and (deadline is None or deadline.fits("exclusion attempt", keep_s, deadline.typical("build")))

    low, high = 0, None
    count = 1
    while count <= len(ordered) and may_attempt():
        if attempt(count).passed:
            high = count
            break
        low = count
        count = min(count * 2, len(ordered)) if count < len(ordered) else count + 1
    if high is None:
        notes = ([f"no prefix of {len(ordered)} candidate node(s) met the tolerance within {attempts} attempt(s)"] if ordered else
                 ["quant-debug ranked no quantized node of this recipe, so none could be kept in float"])  # fmt: skip
        out_of_time = attempts < max_attempts and count <= len(ordered)
        if out_of_time:
            notes.append(f"stopped after {attempts} attempt(s): the time budget")
        return outcome, ExclusionReport(False, [], attempts, ranking, notes, out_of_time)
    while high - low > 1 and may_attempt():
        middle = (low + high) // 2
        if attempt(middle).passed:
            high = middle
        else:
            low = middle
    chosen = tried[high]
    return chosen, ExclusionReport(True, ordered[:high], attempts, ranking)
