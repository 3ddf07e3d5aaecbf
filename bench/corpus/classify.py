"""Run one corpus case through one transform and say what happened, in one of a few verdicts.

The verdicts, in the order a case can reach them:

- `excluded`: ORT cannot run the original model on its inputs (or gives different answers on two
  fresh sessions, e.g. unseeded random ops): nothing to judge a transform by.
- `not-float`: a float-only transform (fp16) and a case with no float32 input, weight or constant.
- `refused`: ortforge said no in one line (a `UserError` from the loader or the transform).
- `loud`: the comparison tool (onnxconverter-common) raised: it wrote nothing, the user saw an error.
- `crashed`: ortforge raised something other than a `UserError` (a traceback for the user).
- `wrong`: a model was written but ORT cannot load it, cannot run it on the case's inputs, it
  changed the inputs' or outputs' names or types, or its outputs are not close to the original's.
- `correct`: everything else.

Outputs are compared with the *original model's ORT outputs* (not the test's expected values),
since the question is whether the transform preserved what this ORT computes.
"""

from __future__ import annotations

import re
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ortforge.core.errors import UserError, first_line
from ortforge.core.model import iter_tensors, save_model
from ortforge.core.session import OPTIMIZATION_LEVELS

from .generate import Case, read_feeds, real_inputs

VERDICTS = ("excluded", "not-float", "correct", "refused", "loud", "crashed", "wrong")
REFERENCE_LEVEL = "disable"  # the original as written, no ORT rewrite in the reference
FLOAT_TYPES = {onnx.TensorProto.FLOAT}
ULPS = 2  # the finest tolerance in units of an output dtype's epsilon


@dataclass(frozen=True)
class Tolerance:
    """How close a written model's outputs must be: `|a - e| <= atol + rtol * |e|` per float element.

    Non-float outputs (ints, bools, strings) must be equal, NaNs must sit where the original has
    them, and shapes and dtypes must always match. `values=False` checks only the latter (for
    quantization, which changes values by design).
    """

    rtol: float
    atol: float
    values: bool = True

    def for_dtype(self, dtype: np.dtype) -> tuple[float, float]:
        """(rtol, atol) for outputs of `dtype`: never finer than a few units in its last place.

        An fp16 output cannot be closer than its own rounding step (2**-11 relative), whatever
        rewrote the graph before it; fp32 and fp64 outputs are held to the tolerance as given.
        """
        floor = ULPS * float(np.finfo(dtype).eps) if dtype.kind == "f" else 0.0
        return max(self.rtol, floor), max(self.atol, floor)

    def describe(self) -> str:
        if not self.values:
            return "loads and runs, same output structure, shapes and dtypes (values not compared)"
        return f"rtol {self.rtol:g}, atol {self.atol:g} (at least {ULPS} ulp of the output's dtype); non-float outputs equal; NaN positions equal"


@dataclass
class Written:
    """What a transform produced: the model to write and how ORT is to load it."""

    proto: onnx.ModelProto
    changed: bool = True
    level: str = "all"  # ORT graph optimization level the written model is loaded with


@dataclass(frozen=True)
class Transform:
    """A transform as the corpus runs it: how it reads the case's model and what it makes of it."""

    name: str
    label: str  # what it is, for the report
    load: Callable[[Path], Any]
    apply: Callable[[Any], Written]
    tolerance: Tolerance
    float_only: bool = False
    comparison: bool = False  # a third-party tool: its exceptions are loud failures, not ortforge crashes
    uses_inputs: bool = False  # apply(model, feeds): the transform sees the case's inputs, as the CLI sees --data


@dataclass
class Result:
    """One case through one transform. `reason` is one line; `detail` keeps a traceback for crashes."""

    case: str
    transform: str
    verdict: str
    reason: str = ""
    category: str = ""  # groups reasons in the report (e.g. 'IR version newer than ORT supports')
    float_case: bool | None = None
    changed: bool | None = None
    seconds: float = 0.0
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Verdict(Exception):
    """Raised inside `evaluate_case` to stop at the first verdict reached."""

    def __init__(self, verdict: str, reason: str, category: str = "", detail: str = "") -> None:
        super().__init__(reason)
        self.verdict, self.reason, self.category, self.detail = verdict, reason, category, detail


def evaluate_case(case: Case, transform: Transform, workdir: Path, stage: Callable[[str], None] = lambda _: None) -> Result:
    """Classify `case` under `transform`; `stage` is told each step so a dead worker can be attributed."""
    started = time.monotonic()
    result = Result(case.name, transform.name, "correct")
    try:
        stage("original")
        original = onnx.load(str(case.model_path), load_external_data=False)
        feeds = _feeds(case, original)
        reference = _reference_outputs(case.model_path, feeds)
        result.float_case = is_float_case(original)
        if transform.float_only and not result.float_case:
            raise _Verdict("not-float", "no float32 input, weight or constant")
        written = _transform(case, transform, stage)
        result.changed = written.changed
        stage("save")
        path = _save(written, workdir, transform)
        stage("candidate")
        _judge_written(original, path, written.level, feeds, reference, transform.tolerance)
    except _Verdict as verdict:
        result.verdict, result.reason, result.category, result.detail = verdict.verdict, verdict.reason, verdict.category, verdict.detail
    result.seconds = round(time.monotonic() - started, 3)
    return result


def interrupted_result(case: Case, transform: Transform, stage: str, kind: str, detail: str) -> Result:
    """The verdict for a worker that died (`kind` 'crashed') or hung ('hung') during `stage`."""
    what = f"{kind} ({detail})"
    if stage in ("", "original"):
        return Result(case.name, transform.name, "excluded", f"ORT {what} on the original", f"ORT {kind} on the original")
    if stage == "candidate":
        return Result(case.name, transform.name, "wrong", f"ORT {what} on the written model", f"ORT {kind} on the written model")
    verdict = "loud" if transform.comparison else "crashed"
    return Result(case.name, transform.name, verdict, f"the worker {what} during {stage}", f"worker {kind} during {stage}")


# -- the original ---------------------------------------------------------------------------------


def _feeds(case: Case, original: onnx.ModelProto) -> list[dict[str, Any]]:
    try:
        return read_feeds(case, original.graph)
    except Exception as exc:  # noqa: BLE001 - a case whose files do not parse is the corpus's problem, not a transform's
        raise _Verdict("excluded", f"test data unreadable: {first_line(exc)}", "test data unreadable") from None


def _reference_outputs(path: Path, feeds: list[dict[str, Any]]) -> list[list[Any]]:
    """The original's ORT outputs; two fresh sessions must agree, else nothing can be compared with them."""
    try:
        first = run_model(path, REFERENCE_LEVEL, feeds)
        second = run_model(path, REFERENCE_LEVEL, feeds)
    except OrtFailure as failure:
        raise _Verdict("excluded", short_ort_message(failure.message), ort_failure_category(failure), failure.message) from None
    if compare_outputs(first, second, Tolerance(0.0, 0.0), ["?"] * max(map(len, first), default=0)):
        raise _Verdict("excluded", "two fresh ORT sessions give different outputs", "original is nondeterministic")
    return first


class OrtFailure(Exception):
    """ORT could not load (`step` 'load') or run ('run') a model; `message` is ORT's, unabridged."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step, self.message = step, message


def run_model(path: Path, level: str, feeds: list[dict[str, Any]]) -> list[list[Any]]:
    """A single-threaded CPU session (threads would only fight the other worker) run on every feed.

    ORT is called directly rather than through ortforge's session helpers, so that its messages
    reach the report whole (they name the op, opset or type at fault at the end of long lines); only
    the feeds go through ortforge's crossing (core/values.py), which ORT's binding lacks for float8/int4.
    """
    import onnxruntime

    from ortforge.core.values import ort_feed  # float8, int4, sequences and optionals as ORT's binding takes them

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, OPTIMIZATION_LEVELS[level])
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types per failure kind
        raise OrtFailure("load", _one_line(exc)) from None
    outputs = []
    for feed in feeds:
        try:
            outputs.append(session.run(None, ort_feed(feed)))
        except Exception as exc:  # noqa: BLE001 - likewise
            raise OrtFailure("run", _one_line(exc)) from None
    return outputs


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


ORT_NOISE = (
    r"\[ONNXRuntimeError\] : \d+ : \w+ : ",
    r"Load model from \S+ failed:",
    r"/onnxruntime_src/\S+:\d+ .*?\) (?=[A-Z\[])",
)


def short_ort_message(message: str, limit: int = 220) -> str:
    """ORT's message without the file path, error-code banner and C++ source location."""
    text = message
    for pattern in ORT_NOISE:
        text = re.sub(pattern, "", text)
    return text.strip()[:limit]


ORT_FAILURE_CATEGORIES = (  # (step, pattern, category), first match wins
    ("load", r"Unsupported model IR version", "IR version newer than ORT supports"),
    ("load", r"ONNX Runtime only \*guarantees\*|is under development|Current official support for domain", "opset newer than ORT supports"),
    ("load", r"Could not find an implementation|NOT_IMPLEMENTED", "no ORT kernel for an op at this opset or type"),
    ("load", r"is not a registered function/op|Unrecognized attribute", "op or attribute unknown to ORT"),
    ("load", r"Exception during initialization", "ORT's kernel rejects the node's attributes"),
    ("load", r"Type Error|TypeInferenceError|ShapeInferenceError", "ORT's type/shape inference rejects the graph"),
    ("load", r".", "ORT rejects the graph"),
    ("run", r"Numpy_type \d+ can't be converted", "ORT's Python API cannot take an input's type (float8/int4/...)"),
    ("run", r".", "ORT fails at run time"),
)


def ort_failure_category(failure: OrtFailure) -> str:
    """A short class of why ORT failed on an original, for grouping the exclusions."""
    matches = (category for step, pattern, category in ORT_FAILURE_CATEGORIES if step == failure.step and re.search(pattern, failure.message))
    return next(matches, "other ORT failure")


def is_float_case(proto: onnx.ModelProto) -> bool:
    """A float32 input (tensor, or inside a sequence/optional), initializer or tensor attribute anywhere."""
    if any(_element_type(value.type) in FLOAT_TYPES for value in real_inputs(proto.graph)):
        return True
    return any(tensor.data_type in FLOAT_TYPES for tensor in iter_tensors(proto))


def _element_type(type_proto: onnx.TypeProto) -> int:
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return type_proto.tensor_type.elem_type
    if kind == "sequence_type":
        return _element_type(type_proto.sequence_type.elem_type)
    if kind == "optional_type":
        return _element_type(type_proto.optional_type.elem_type)
    return 0


# -- the transform --------------------------------------------------------------------------------


def _transform(case: Case, transform: Transform, stage: Callable[[str], None]) -> Written:
    """Load, then transform: a UserError is a refusal, anything else a crash (or a loud comparison failure)."""
    stage("load")
    loaded = _attempt("load", transform, lambda: transform.load(case.model_path))
    stage("transform")
    if transform.uses_inputs:
        return _attempt("transform", transform, lambda: transform.apply(loaded, read_feeds(case, loaded.proto.graph)))
    return _attempt("transform", transform, lambda: transform.apply(loaded))


def _attempt(step: str, transform: Transform, action: Callable[[], Any]) -> Any:
    try:
        return action()
    except UserError as exc:
        raise _Verdict("refused", str(exc), f"{step}: {refusal_category(exc.message)}") from None
    except Exception as exc:  # noqa: BLE001 - anything else is what a user would see as a traceback
        verdict = "loud" if transform.comparison else "crashed"
        reason = f"{type(exc).__name__} while {step}ing: {first_line(exc)}"
        raise _Verdict(verdict, reason, f"{type(exc).__name__} in {step}", traceback.format_exc(limit=-8)) from None


def refusal_category(message: str) -> str:
    """A refusal message without its model name and numbers, so equal reasons group together."""
    text = re.sub(r"^\S+\.onnx: ", "", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    return re.sub(r"\b\d+\b", "N", text)[:110]


def _save(written: Written, workdir: Path, transform: Transform) -> Path:
    try:
        return save_model(written.proto, workdir / "written.onnx")
    except Exception as exc:  # noqa: BLE001 - writing is part of the transform's job
        verdict = "loud" if transform.comparison else "crashed"
        raise _Verdict(verdict, f"could not write the result: {type(exc).__name__}: {first_line(exc)}", "could not write the result") from None


# -- the written model ----------------------------------------------------------------------------


def _judge_written(original: onnx.ModelProto, path: Path, level: str, feeds: list[dict[str, Any]], reference: list[list[Any]], tolerance: Tolerance) -> None:
    """Silently wrong unless the written model keeps the signature, loads, runs and agrees."""
    written = onnx.load(str(path), load_external_data=False)
    changed = signature_change(original, written)
    if changed:
        raise _Verdict("wrong", f"changed the I/O signature: {changed}", "changed the I/O signature")
    try:
        produced = run_model(path, level, feeds)
    except OrtFailure as failure:
        reason = f"written model fails to {failure.step} in ORT: {short_ort_message(failure.message)}"
        raise _Verdict("wrong", reason, f"written model fails to {failure.step}", failure.message) from None
    names = [output.name for output in original.graph.output]
    problem = compare_outputs(reference, produced, tolerance, names)
    if problem:
        raise _Verdict("wrong", problem, "outputs differ" if "values" in problem else "outputs' structure differs")


def signature_change(original: onnx.ModelProto, written: onnx.ModelProto) -> str:
    """'' when the inputs (by name) and outputs (in order) keep their names and element types."""
    old_inputs = {v.name: _type_text(v.type) for v in real_inputs(original.graph)}
    new_inputs = {v.name: _type_text(v.type) for v in real_inputs(written.graph)}
    for name, text in old_inputs.items():
        if new_inputs.get(name) != text:
            return f"input '{name}' is {new_inputs.get(name, 'gone')}, was {text}"
    extra = sorted(set(new_inputs) - set(old_inputs))
    if extra:
        return f"new input '{extra[0]}'"
    old_outputs = [(v.name, _type_text(v.type)) for v in original.graph.output]
    new_outputs = [(v.name, _type_text(v.type)) for v in written.graph.output]
    if old_outputs != new_outputs:
        changed = next(((o, n) for o, n in zip(old_outputs, new_outputs) if o != n), (old_outputs, new_outputs))
        return f"outputs {changed[1]} instead of {changed[0]}"
    return ""


def _type_text(type_proto: onnx.TypeProto) -> str:
    """'tensor(float)', 'seq(tensor(int64))', ... (shapes left out: transforms may refine them)."""
    kind = type_proto.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.TensorProto.DataType.Name(type_proto.tensor_type.elem_type).lower()})"
    if kind == "sequence_type":
        return f"seq({_type_text(type_proto.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_text(type_proto.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(type_proto.map_type.key_type).lower()
        return f"map({key},{_type_text(type_proto.map_type.value_type)})"
    return kind or "untyped"


def compare_outputs(reference: list[list[Any]], produced: list[list[Any]], tolerance: Tolerance, names: list[str]) -> str:
    """'' when every output of every sample agrees within `tolerance`, else what differs first."""
    for sample, (expected_outputs, actual_outputs) in enumerate(zip(reference, produced)):
        if len(expected_outputs) != len(actual_outputs):
            return f"{len(actual_outputs)} outputs instead of {len(expected_outputs)}"
        for name, expected, actual in zip(names, expected_outputs, actual_outputs):
            problem = compare_value(expected, actual, tolerance)
            if problem:
                return f"output '{name}'{f' (sample {sample})' if sample else ''}: {problem}"
    return ""


def compare_value(expected: Any, actual: Any, tolerance: Tolerance) -> str:
    """Compare one output value: arrays, sequences (lists), optionals (None) and maps (dicts)."""
    if expected is None or actual is None:
        return "" if expected is None and actual is None else f"{_kind(actual)} instead of {_kind(expected)}"
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        return _compare_sequences(expected, actual, tolerance)
    if isinstance(expected, dict) or isinstance(actual, dict):
        if not isinstance(expected, dict) or not isinstance(actual, dict) or set(expected) != set(actual):
            return "map keys differ"
        return next((p for key in expected if (p := compare_value(expected[key], actual[key], tolerance))), "")
    return compare_arrays(np.asarray(expected), np.asarray(actual), tolerance)


def _compare_sequences(expected: Any, actual: Any, tolerance: Tolerance) -> str:
    if not isinstance(expected, (list, tuple)) or not isinstance(actual, (list, tuple)):
        return f"{_kind(actual)} instead of {_kind(expected)}"
    if len(expected) != len(actual):
        return f"sequence of {len(actual)} instead of {len(expected)}"
    for index, (e, a) in enumerate(zip(expected, actual)):
        problem = compare_value(e, a, tolerance)
        if problem:
            return f"element {index}: {problem}"
    return ""


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, (list, tuple)):
        return "a sequence"
    return "a map" if isinstance(value, dict) else "a tensor"


def compare_arrays(expected: np.ndarray, actual: np.ndarray, tolerance: Tolerance) -> str:
    """Same dtype and shape; then float values within tolerance with NaNs in the same places, others equal."""
    if expected.dtype != actual.dtype:
        return f"dtype {actual.dtype} instead of {expected.dtype}"
    if expected.shape != actual.shape:
        return f"shape {list(actual.shape)} instead of {list(expected.shape)}"
    if not tolerance.values or expected.size == 0:
        return ""
    if expected.dtype.kind not in "fc":
        wrong = int(np.count_nonzero(expected != actual))
        return f"{wrong} of {expected.size} values differ (must be equal for {expected.dtype})" if wrong else ""
    wide = np.complex128 if expected.dtype.kind == "c" else np.float64
    e, a = expected.astype(wide), actual.astype(wide)
    nan_moved = int(np.count_nonzero(np.isnan(e) != np.isnan(a)))
    if nan_moved:
        return f"{nan_moved} of {e.size} values NaN in one and not the other"
    rtol, atol = tolerance.for_dtype(expected.dtype)
    outside = ~np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if not outside.any():
        return ""
    worst = int(np.argmax(np.where(outside, np.nan_to_num(np.abs(a - e), nan=np.inf, posinf=np.inf), -1.0)))
    return (
        f"{int(outside.sum())} of {e.size} values outside rtol {rtol:g} atol {atol:g} "
        f"(e.g. {a.flat[worst]:.6g} instead of {e.flat[worst]:.6g})"
    )
