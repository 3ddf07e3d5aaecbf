"""The fallback for shapes that shape inference leaves open: run the model in onnxruntime and look.

The open tensors are exposed as graph outputs of an unoptimised CPU run; for tensors inside If/Loop/Scan
bodies, each subgraph is lifted into a model of its own, fed from its parent's run (Loop/Scan bodies get
their first iteration). Runs are capped per model so a model with many subgraphs stays quick to inspect.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ortforge.analysis.shapes import error_line
from ortforge.analysis.tap import tap_session
from ortforge.core import runtime
from ortforge.core.graph import SMALL_CONSTANT, GraphIndex, attributes, is_default_domain, subgraphs
from ortforge.core.model import Model, iter_graphs
from ortforge.core.values import ort_feed
from ortforge.data import ShapeOptions, generate_feeds, input_specs

# Each fallback run builds a session; a model with many subgraphs must not make inspect slow.
MAX_RUNS = 16

Dims = tuple[int, ...]


@dataclass
class RunFindings:
    """What the runs saw: every tensor's shape, and the small integer values that describe the model."""

    shapes: dict[str, Dims] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)


class ShapeResolver:
    """Real shapes for tensors shape inference left open, from unoptimised CPU runs."""

    def __init__(
        self,
        model: Model,
        shapes: dict[str, tuple[int, ...]],
        feeds: dict[str, np.ndarray] | None,
        opset: int,
        index: GraphIndex,
    ) -> None:
        self.model = model
        self.shapes = shapes
        self.feeds = feeds
        self.opset = opset  # of the default domain: Scan changed meaning at 9
        self.tensors = index.tensors
        self.parents = index.parents  # id(subgraph) -> (the graph holding it, the node holding it)
        self.needs: dict[int, set[str]] = {}  # id(graph) -> tensors a run of that graph must expose
        self.active: set[int] = set()  # ids of the graphs to run: those with needs and all their ancestors
        self.found: dict[str, np.ndarray] = {}  # every value seen: the feeds and exposed outputs of each run
        self.errors: dict[int, str] = {}  # id(graph) -> why it could not be run
        self.runs = 0
        self.first_iteration = False

    def resolve(self, needs: Iterable[tuple[onnx.GraphProto, Iterable[str]]]) -> RunFindings:
        """Run for the (graph, tensor names) pairs needed; what the runs saw, or nothing when they could not start."""
        for graph, names in needs:
            self._need(graph, names)
        try:
            feeds = self.feeds if self.feeds is not None else self._generated_feeds()
        except Exception as exc:  # the generator raises UserError for inputs it cannot invent
            self.errors[id(self.model.proto.graph)] = f"no inputs to run it on: {error_line(exc)}"
            return RunFindings()
        self._run_scope(self.model.proto.graph, None, dict(feeds), None)
        # A generated input's value says nothing about the model (a random trip count), so only
        # given feeds and computed tensors count as values.
        generated = {value.name for value in self.model.proto.graph.input} if self.feeds is None else set()
        return RunFindings(
            shapes={name: tuple(int(d) for d in array.shape) for name, array in self.found.items()},
            values={
                name: array
                for name, array in self.found.items()
                if array.dtype.kind in "iu" and array.size <= SMALL_CONSTANT and name not in generated
            },
        )

    def summary(self, shapes_found: int) -> list[str]:
        """Notes on what the runs supplied."""
        if not shapes_found:
            return []
        origin = "the given inputs" if self.feeds is not None else "generated inputs"
        notes = [
            (
                f"shapes of {shapes_found} tensor(s) that shape inference left open came from onnxruntime "
                f"({self.runs} run(s) on {origin})"
            )
        ]
        if self.first_iteration:
            notes.append("shapes inside Loop/Scan bodies came from a run of their first iteration")
        return notes

    def _need(self, graph: onnx.GraphProto, names: Iterable[str]) -> None:
        self.needs.setdefault(id(graph), set()).update(names)
        child = graph
        while id(child) in self.parents and id(child) not in self.active:
            self.active.add(id(child))
            parent, holder = self.parents[id(child)]
            # A lifted child is fed from its parent's run: what it reads from outside, and for Loop/Scan
            # the holder's inputs (initial values). An If condition is not needed: both branches are run.
            fed = set(_outer_names(child))
            if holder.op_type != "If":
                fed.update(n for n in holder.input if n)
            self.needs.setdefault(id(parent), set()).update(fed)
            child = parent
        self.active.add(id(child))

    def _run_scope(
        self, graph: onnx.GraphProto, holder: onnx.NodeProto | None, env: dict[str, np.ndarray], parent_error: str | None
    ) -> None:
        """Run `graph` (the main graph when holder is None) for its needs, then its active subgraphs."""
        produced = {name for node in graph.node for name in node.output if name}
        wanted = sorted(self.needs.get(id(graph), set()) & produced)
        if holder is None:
            outputs, error = self._run(self.model.proto, env, wanted) if wanted else ({}, None)
        elif self.runs >= MAX_RUNS:
            outputs, error = {}, f"skipped: at most {MAX_RUNS} fallback runs per model"
        else:
            outputs, error = self._run_lifted(graph, holder, env, wanted, parent_error)
        self.found.update(env)
        self.found.update(outputs)
        if error is not None:
            self.errors[id(graph)] = error
        # Children are tried even when this scope failed: they may read only inputs and constants.
        scope = {**env, **outputs}
        for node in graph.node:
            for _, subgraph in subgraphs(node):
                if id(subgraph) in self.active:
                    self._run_scope(subgraph, node, scope, error or parent_error)

    def _run_lifted(
        self,
        graph: onnx.GraphProto,
        holder: onnx.NodeProto,
        env: dict[str, np.ndarray],
        wanted: list[str],
        parent_error: str | None,
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """Run one subgraph as a model of its own: outer-scope tensors become inputs or initializers."""
        try:
            own, error = self._own_inputs(graph, holder, env)
            if error is not None:
                return {}, parent_error or error
            lifted = onnx.GraphProto()
            lifted.CopyFrom(graph)
            feeds = dict(own)
            for name in sorted(_outer_names(graph)):
                if name in env:
                    array = env[name]
                    elem_type = helper.np_dtype_to_tensor_dtype(array.dtype)
                    lifted.input.append(helper.make_tensor_value_info(name, elem_type, array.shape))
                    feeds[name] = array
                elif name in self.tensors:
                    tensor = lifted.initializer.add()
                    tensor.CopyFrom(self.tensors[name])
                    tensor.name = name
                else:
                    return {}, parent_error or f"the value of outer tensor '{name}' is not available"
            proto = helper.make_model(lifted, opset_imports=list(self.model.proto.opset_import))
            proto.ir_version = self.model.proto.ir_version
            proto.functions.extend(self.model.proto.functions)
        except Exception as exc:  # odd dtypes (strings), bad scan axes: this scope is just not resolved
            return {}, error_line(exc)
        outputs, error = self._run(proto, feeds, wanted)
        # The body's own first-iteration inputs are real shapes too.
        return {**own, **outputs}, error

    def _own_inputs(
        self, graph: onnx.GraphProto, holder: onnx.NodeProto, env: dict[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """Feeds for a Loop/Scan body's own inputs: its first iteration."""
        names = [value.name for value in graph.input]
        if not names:
            return {}, None
        if holder.op_type == "Loop" and is_default_domain(holder):
            initial = list(holder.input[2:])
            if any(n not in env for n in initial):
                return {}, "initial Loop values not available"
            self.first_iteration = True
            values = [np.array(0, dtype=np.int64), np.array(True)] + [env[n] for n in initial]
            return dict(zip(names, values)), None
        if holder.op_type == "Scan" and is_default_domain(holder) and self.opset >= 9:
            attrs = attributes(holder)
            scan_count = int(attrs.get("num_scan_inputs", 0))
            states = list(holder.input[: len(holder.input) - scan_count])
            scans = list(holder.input[len(holder.input) - scan_count :])
            if any(n not in env for n in states + scans):
                return {}, "Scan inputs not available"
            axes = list(attrs.get("scan_input_axes", []) or [0] * scan_count)
            slices = [np.take(env[n], 0, axis=axes[i] if i < len(axes) else 0) for i, n in enumerate(scans)]
            self.first_iteration = True
            return dict(zip(names, [env[n] for n in states] + slices)), None
        return {}, f"a {holder.op_type} subgraph with its own inputs, which the fallback cannot feed"

    def _run(self, proto: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> tuple[dict[str, np.ndarray], str | None]:
        """One CPU run, unoptimised, with `names` exposed as outputs."""
        self.runs += 1
        try:
            session = tap_session(Model(proto=proto, data_dir=self.model.base_dir), names, purpose="shape")
            accepted = {i.name for i in session.get_inputs()}
            run_options = runtime.ort().RunOptions()
            run_options.log_severity_level = 4  # a failing run is reported in the result, not on stderr
            results = session.run(names, ort_feed({k: v for k, v in feeds.items() if k in accepted}), run_options)
        except Exception as exc:  # ORT and protobuf raise their own types
            return {}, error_line(_compact_ort_error(str(exc)))
        return {name: value for name, value in zip(names, results) if isinstance(value, np.ndarray)}, None

    def _generated_feeds(self) -> dict[str, np.ndarray]:
        """The package's seeded generated inputs, at exactly the shapes inference was given."""
        specs = input_specs(self.model)
        for spec in specs:
            if spec.name not in self.shapes:
                raise ValueError(f"no shape given for input '{spec.name}'")
        chosen = ShapeOptions(shapes={spec.name: tuple(self.shapes[spec.name]) for spec in specs})
        return generate_feeds(self.model, shape_options=chosen).samples[0]

    def failure(self, graph: onnx.GraphProto) -> str | None:
        """Why this graph, or the nearest enclosing one, could not be run; None if it ran."""
        while id(graph) not in self.errors:
            if id(graph) not in self.parents:
                return None
            graph = self.parents[id(graph)][0]
        return self.errors[id(graph)]


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph (nested ones included) reads from enclosing scopes."""
    produced: set[str] = set()
    used: set[str] = set()
    for inner in iter_graphs(graph):
        produced.update(value.name for value in inner.input)
        produced.update(tensor.name for tensor in inner.initializer)
        for node in inner.node:
            produced.update(n for n in node.output if n)
            used.update(n for n in node.input if n)
        used.update(value.name for value in inner.output)
    return used - produced


ORT_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)'")
ORT_SOURCE = re.compile(r"\S+\.(?:h|cc|cpp):\d+ [^()]*\(.*?\) ")
ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _compact_ort_error(text: str) -> str:
    """ORT's message cut to the innermost failing node and what it said (no source paths)."""
    text = ORT_PREFIX.sub("", text.strip())
    nodes = ORT_NODE.findall(text)
    message = ORT_SOURCE.sub("", text.rsplit("Status Message: ", 1)[-1])
    if nodes:
        op, name = nodes[-1]
        return f"{op} node '{name}': {message}"
    return message
