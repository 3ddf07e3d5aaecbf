"""Float16 conversion that keeps the answers right, and its simulation on a CPU.

`plan_fp16` decides per node whether it computes in float16 and records why every other float node stays
float32: blocked by the user, no float16 kernel in the target EP (ORT's kernel registry, not a hand list),
a constant or a measured activation beyond float16's range (kept, never clamped), an output type an
attribute fixes, no schema, control flow. `convert_fp16` applies a plan: float16 weights, Casts at every
float16/float32 boundary, graph and subgraph signatures unchanged. `simulate_fp16` applies the same plan
inside a float32 graph by rounding every would-be-float16 tensor through float16, so accuracy can be judged
on a CPU whose EP has no float16 kernels.

A plan is made once (type inference, registry and range look-ups) and applied many times: node decisions
are independent of each other (boundaries get Casts), so `Fp16Plan.with_fp32(names)` is cheap and a
mixed-precision search can simulate many keep-sets from one plan.

The graph is edited as protos, not through onnx-ir: every edit is a rename, a Cast inserted after a
producer or a tensor swapped, names are unique model-wide (ONNX's SSA rule spans subgraphs, so one
name -> consumers index covers outer-scope uses), and `simulate_fp16` is called repeatedly by a search,
where a ModelProto -> IR -> ModelProto round trip per call would cost as much as the edit itself.

The modules, each reading only the ones listed before it:
- `options`: element types, thresholds, reason kinds, `Fp16Options`, `NodeDecision`
- `graph`: walking subgraphs, unique node names
- `types`: value types (onnx inference, ORT's schemas for contrib ops)
- `constants`: initializers and Constant tensors, their peaks and float16 copies
- `kernels`: what the EP's float16 kernels allow (ORT's registry, indexed in `core.runtime`)
- `decide`: one node's decision
- `plan`: `plan_fp16`, `Fp16Plan` and the island rule
- `surgery`: applying a plan to a copy of the model
- `convert`: `convert_fp16`, `simulate_fp16`, `measure_activation_ranges`, and the checks a result passes
"""

from ortforge.transforms.fp16.convert import convert_fp16, measure_activation_ranges, simulate_fp16
from ortforge.transforms.fp16.options import (
    ACTIVATION_RANGE,
    CONSTANT_RANGE,
    CONTROL_FLOW,
    FIXED_TYPE,
    ISOLATED,
    KEPT,
    NO_KERNEL,
    RUNTIME,
    Fp16Options,
    NodeDecision,
)
from ortforge.transforms.fp16.plan import Fp16Plan, plan_fp16

__all__ = [
    "ACTIVATION_RANGE",
    "CONSTANT_RANGE",
    "CONTROL_FLOW",
    "FIXED_TYPE",
    "ISOLATED",
    "KEPT",
    "NO_KERNEL",
    "RUNTIME",
    "Fp16Options",
    "Fp16Plan",
    "NodeDecision",
    "convert_fp16",
    "measure_activation_ranges",
    "plan_fp16",
    "simulate_fp16",
]
