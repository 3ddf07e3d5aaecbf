"""The fp16 vocabulary: element types, thresholds, reason kinds, `Fp16Options` and `NodeDecision`.

The rest of the package reads these and they read nothing of it, so every module can import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from onnx import TensorProto

from ortforge.core.errors import OptionError
from ortforge.core.options import option
from ortforge.core.session import provider_name

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FLOAT_TYPE, FLOAT16_TYPE = "tensor(float)", "tensor(float16)"
FLOAT16_MAX = 65504.0
# Half of float16's largest finite value: measured activations are a sample of what real data gives,
# and a product or sum of two in-range float16 values can still overflow.
DEFAULT_MAX_FINITE = 32768.0
CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
# Attributes that fix an output's type; only used to name the attribute in a reason.
TYPE_ATTRIBUTES = ("to", "dtype", "stash_type", "output_datatype", "output_dtype", "value")
# An initializer or Constant with at least this many elements is a weight: a float16 node holding one
# is worth its boundary Casts (halved weight traffic, tensor cores) even with float32 neighbours.
WEIGHT_ELEMENTS = 1024
ONNX_DOMAINS = ("ai.onnx", "ai.onnx.ml")

# Reason kinds of float32 nodes (machine-readable; `NodeDecision.reason` says it in words).
BLOCKED_OP = "blocked-op"
BLOCKED_NODE = "blocked-node"
KEPT = "kept"
NO_KERNEL = "no-kernel"
CONSTANT_RANGE = "constant-range"
ACTIVATION_RANGE = "activation-range"
FIXED_TYPE = "fixed-type"
NO_FLOAT16_TYPE = "no-float16-type"
NO_SCHEMA = "no-schema"
CONTROL_FLOW = "control-flow"
FUNCTION = "function"
UNKNOWN_TYPE = "unknown-type"
NOT_TENSOR = "not-tensor"
INFERENCE = "inference"
ISOLATED = "isolated"
RUNTIME = "runtime"
# Conversions retried after a float16 node failed to run (a kernel registered for float16 can still
# refuse an attribute, e.g. ScatterND's reductions on CPU); each retry keeps one more node float32.
MAX_RUNTIME_REPAIRS = 8


@dataclass(frozen=True)
class Fp16Options:
    """What to convert and for which EP; `activation_ranges` comes from `measure_activation_ranges`."""

    keep_io_types: bool = option(True, flag="--no-keep-io-types", help="make float32 inputs/outputs fp16 too (names are kept either way)")
    block_ops: tuple[str, ...] = option((), flag="--block-op", metavar="OPTYPE", help="op types to keep in fp32")
    block_nodes: tuple[str, ...] = option((), flag="--block-node", metavar="NAME", help="nodes to keep in fp32")
    keep_fp32_nodes: tuple[str, ...] = ()  # node names a mixed-precision search keeps float32
    # Whose float16 kernels count; None: no EP asked, the ONNX schemas alone decide.
    provider: str | None = "CPUExecutionProvider"
    max_finite: float = DEFAULT_MAX_FINITE  # |values| above this keep their node float32
    activation_ranges: Mapping[str, float] | None = None  # tensor name -> max |x| measured on data
    drop_islands: bool = True  # a lone float16 node between float32 ones (no weights) stays float32

    def __post_init__(self) -> None:
        for name in ("block_ops", "block_nodes", "keep_fp32_nodes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.provider is not None:
            object.__setattr__(self, "provider", provider_name(self.provider))
        if not 0 < self.max_finite <= FLOAT16_MAX:
            raise OptionError("max_finite", f"{self.max_finite:g}", f"choose a value in (0, {FLOAT16_MAX:g}] (float16's largest finite value)")


@dataclass(frozen=True)
class NodeDecision:
    """One float node: float16 or float32, and why float32 (`kind` for code, `reason` for people)."""

    name: str
    op_type: str
    graph: str  # 'main', or the path of the subgraph holding it, e.g. 'main/loop:body'
    fp16: bool
    kind: str = ""  # one of the reason kinds above; '' for float16 nodes
    reason: str = ""
    inputs: tuple[int, ...] = ()  # input slots that take float16 when the node is float16
    outputs: tuple[int, ...] = ()  # output slots that become float16
    note: str = ""  # e.g. outputs an attribute keeps float32 although the node is float16

    def to_dict(self) -> dict:
        return {"node": self.name, "op_type": self.op_type, "graph": self.graph, "fp16": self.fp16,
                "kind": self.kind, "reason": self.reason, "note": self.note}


def _as_fp32(decision: NodeDecision, kind: str, reason: str) -> NodeDecision:
    return replace(decision, fp16=False, kind=kind, reason=reason, note="")
