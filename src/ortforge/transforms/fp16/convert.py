"""The entry points that apply a plan or measure for one, and the checks a converted model must pass."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx

from ortforge.core import runtime
from ortforge.core.errors import UserError, first_line
from ortforge.core.model import Model, checker_problem, from_proto, loaded_copy, model_checker_problem, opset_versions
from ortforge.core.values import ort_feed
from ortforge.data import FeedSet
from ortforge.transforms import TransformResult
from ortforge.transforms.fp16.options import FLOAT, MAX_RUNTIME_REPAIRS, RUNTIME, Fp16Options
from ortforge.transforms.fp16.plan import Fp16Plan, plan_fp16
from ortforge.transforms.fp16.surgery import _Applied, _Surgery
from ortforge.transforms.fp16.types import _Context, _elem, _value_types

SIMULATION_NOTE = (
    "simulated float16: every tensor a float16 model would hold (weights, activations, boundary values) is rounded "
    "through float16 inside a float32 graph; rounding of storage is captured, float16 arithmetic inside kernels "
    "(accumulation, intermediate overflow) is not"
)


def _as_plan(model: Model, options: Fp16Options | Fp16Plan | None) -> Fp16Plan:
    return options if isinstance(options, Fp16Plan) else plan_fp16(model, options)


def convert_fp16(model: Model, options: Fp16Options | Fp16Plan | None = None, *, feeds: FeedSet | None = None) -> TransformResult:
    """The model with the plan's float16 nodes in float16, checked: onnx.checker, same I/O signature, loads in ORT.

    With `feeds`, the result also runs once (first sample) on the plan's EP when this ORT has it, else on
    CPU: a float16 node ORT fails to run (a registered kernel that refuses an attribute) is kept float32
    and the conversion redone. Raises UserError with the reason when the result fails a check.
    """
    plan = _as_plan(model, options)
    for _ in range(MAX_RUNTIME_REPAIRS + 1):
        applied = _Surgery(model, plan, simulate=False).run()
        # A large model's result goes to disk before it is checked: serialized for onnx.checker and ORT, it was held 3 times.
        spilled = TransformResult(applied.proto, True)
        spilled.to_disk_if_large(model)
        applied.proto, data_dir = spilled.proto, spilled.data_dir
        _check_converted(model, applied.proto, plan.options, data_dir)
        failure = _runtime_failure(model, applied.proto, plan, feeds, data_dir) if feeds is not None and len(feeds) else None
        if failure is None:
            result = _result(model, plan, applied, simulate=False)
            result.data_dir = data_dir
            return result
        node, message = failure
        plan = plan.with_fp32([node], f"ORT failed to run it in float16: {message}", kind=RUNTIME)
    raise UserError(f"{model.name}: float16 conversion still fails to run after keeping {MAX_RUNTIME_REPAIRS} nodes float32",
                    hint="keep the op types that fail in fp32 (block_ops, --block-op)")


def simulate_fp16(model: Model, options: Fp16Options | Fp16Plan | None = None) -> TransformResult:
    """A float32 model that computes with the values the plan's float16 model would hold, for judging accuracy on a CPU.

    Each float16 node's float16 outputs and inputs are rounded through float16 (Cast to float16 and back;
    constants rounded in numpy), so the rounding of every stored tensor is what real float16 gives. Not
    captured: float16 arithmetic inside kernels (a real float16 MatMul/reduction may accumulate in float16,
    or in float32 on most GPUs) and overflow of intermediates inside a kernel, and EP-specific fusions.
    Run it with ORT's CPU EP at any optimisation level (ORT keeps the Cast pairs).
    """
    plan = _as_plan(model, options)
    applied = _Surgery(model, plan, simulate=True).run()
    return _result(model, plan, applied, simulate=True)


def measure_activation_ranges(model: Model, feeds: FeedSet | Iterable[dict], *, session: Any = None) -> dict[str, float]:
    """Max |x| of every float32 activation of the main graph over the feeds (for `Fp16Options.activation_ranges`).

    Each sample runs once through the float32 model with a ReduceMin/ReduceMax pair per tensor (ortforge's
    streaming calibrator), so memory is one sample's run whatever the number of samples.
    """
    from ortforge.transforms.calibrate import (
        CalibrationOptions,
        calibrate,
        tensor_types,
    )

    proto = model.proto
    context = _Context(opset_versions(proto), list(proto.opset_import), {(f.domain, f.name) for f in proto.functions})
    types = _value_types(proto, context)
    known = tensor_types(proto)  # what the calibrator can see; contrib-op outputs it cannot type are skipped
    initializers = {tensor.name for tensor in proto.graph.initializer}
    candidates = [value.name for value in proto.graph.input] + [
        value for node in proto.graph.node if node.op_type != "Constant" for value in node.output
    ]
    names = [n for n in dict.fromkeys(candidates) if n and n not in initializers and types.get(n) == FLOAT and known.get(n) == FLOAT]
    if not names:
        return {}
    ranges = calibrate(model, feeds, CalibrationOptions(method="minmax"), tensors=names, session=session).ranges
    return {name: max(abs(low), abs(high)) for name, (low, high) in ranges.items()}


# --- checks and results -------------------------------------------------------------------------


def _signature_of(graph_values: Iterable[onnx.ValueInfoProto]) -> list[tuple[str, int | None, tuple]]:
    def dims(info: onnx.ValueInfoProto) -> tuple:
        shape = info.type.tensor_type.shape
        return tuple(d.dim_value or d.dim_param for d in shape.dim) if info.type.tensor_type.HasField("shape") else ()

    return [(info.name, _elem(info.type), dims(info)) for info in graph_values]


def _check_converted(model: Model, proto: onnx.ModelProto, options: Fp16Options, data_dir: Path | None = None) -> None:
    """onnx.checker, the I/O signature (names always; dtypes and shapes with keep_io_types), an ORT CPU session."""
    what = f"{model.name}: float16 conversion"
    # a large result on disk by path; a small one with the original's external weights read in, as ORT will see it
    problem = checker_problem(str(data_dir / "model.onnx") if data_dir else loaded_copy(from_proto(proto, base_dir=model.base_dir)))
    # A complaint the original model earns too (a missing output shape, say) is not the conversion's doing.
    if problem and model_checker_problem(model) != problem:
        raise UserError(f"{what} produced a model onnx.checker rejects: {problem}", hint="keep the op it names in fp32 (block_ops / block_nodes, --block-op / --block-node)")
    for kind in ("input", "output"):
        before = _signature_of(getattr(model.proto.graph, kind))
        after = _signature_of(getattr(proto.graph, kind))
        if [b[0] for b in before] != [a[0] for a in after] or (options.keep_io_types and before != after):
            raise UserError(f"{what} changed the graph {kind}s: {after} instead of {before}")
    try:
        _session(from_proto(proto, base_dir=data_dir or model.base_dir), ["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types per failure kind
        raise UserError(f"{what} produced a model ORT cannot load: {first_line(exc, 300)}", hint="keep the op it names in fp32 (block_ops / block_nodes, --block-op / --block-node)") from None


def _runtime_failure(model: Model, proto: onnx.ModelProto, plan: Fp16Plan, feeds: FeedSet, data_dir: Path | None = None) -> tuple[str, str] | None:
    """(node, ORT's message) when a float16 node of the converted model fails on the first sample, else None."""
    provider = plan.options.provider
    providers = [provider] if provider and provider in runtime.available_providers() else []
    providers += [] if "CPUExecutionProvider" in providers else ["CPUExecutionProvider"]
    try:
        _session(from_proto(proto, base_dir=data_dir or model.base_dir), providers).run(None, ort_feed(feeds.samples[0]))
    except Exception as exc:  # ORT raises its own exception types per failure kind
        message = str(exc)
        match = re.search(r"running (\S+) node\. Name:'([^']*)'", message)
        decision = plan.decisions.get(match.group(2)) if match else None
        if decision is None or not decision.fp16 or not _runs(model, providers, feeds.samples[0]):
            raise UserError(f"{model.name}: the float16 model fails to run: {first_line(exc, 300)}") from None
        detail = message.split("Status Message:", 1)[-1].strip().splitlines()
        return decision.name, (detail[0] if detail else "")[:160]
    return None


def _session(model: Model, providers: list[str]) -> Any:
    source, entries = model.ort_source()
    session_options = runtime.quiet_session_options()
    for key, value in entries.items():
        session_options.add_session_config_entry(key, value)
    return runtime.ort().InferenceSession(source, session_options, providers=providers)


def _runs(model: Model, providers: list[str], feed: dict) -> bool:
    """Whether the original model runs on the feed (a feed that breaks it too says nothing about float16)."""
    try:
        _session(model, providers).run(None, ort_feed(feed))
    except Exception:  # ORT raises its own exception types per failure kind
        return False
    return True


def _result(model: Model, plan: Fp16Plan, applied: _Applied, simulate: bool) -> TransformResult:
    summary = plan.summary()
    fp16, fp32 = summary["fp16_nodes"], summary["fp32_nodes"]
    reasons = ", ".join(f"{count} {kind}" for kind, count in Counter(summary["fp32_reasons"]).most_common())
    verb = "are simulated in" if simulate else "compute in"
    changes = [f"{fp16} of {fp16 + fp32} float nodes {verb} float16" + (f"; {fp32} stay float32 ({reasons})" if fp32 else "")]
    if applied.casts:
        changes.append(f"{applied.casts} " + ("float16 round trips (Cast pairs) inserted" if simulate else "Cast nodes at float16/float32 boundaries"))
    if applied.constants or applied.copies:
        stored = "rounded through float16" if simulate else "stored as float16"
        changes.append(f"{applied.constants + applied.copies} constants {stored}" + (f" ({applied.copies} as copies beside float32 readers)" if applied.copies else ""))
    notes = list(plan.notes) + _runtime_notes(plan, fp16, fp16 + fp32)
    if simulate:
        notes.insert(0, SIMULATION_NOTE)
    details = {**summary, "casts_inserted": applied.casts, "constants_converted": applied.constants, "constant_copies": applied.copies,
               "simulated": simulate}
    return TransformResult(applied.proto, changed=bool(fp16), changes=changes, notes=notes, details=details)


def _runtime_notes(plan: Fp16Plan, fp16: int, total: int) -> list[str]:
    """What the numbers mean on this machine: CPU float16 gains little, a missing EP cannot be timed."""
    provider = plan.options.provider
    if provider == "CPUExecutionProvider":
        return [(f"ORT's CPU EP has float16 kernels for few ops ({fp16} of {total} float nodes here): a float16 model on CPU "
                 f"mostly shrinks the file; it is not faster")]
    if provider is not None and provider not in runtime.available_providers():
        return [(f"{provider} is not available in this onnxruntime: judge accuracy with simulate_fp16; latency measured on this "
                 f"machine's CPU (which inserts Casts around float16 ops it lacks) does not represent {provider}")]
    return []
