"""What the target EP can run in float16, from ORT's kernel registry (indexed in `core.runtime`)."""

from __future__ import annotations

import onnx

from ortforge.core import runtime
from ortforge.transforms.fp16.options import Fp16Options
from ortforge.transforms.fp16.types import _Signature


def _kernel_source(options: Fp16Options, notes: list[str]) -> str:
    """'registry' when this ORT registered kernels for the provider, else 'schema' (with a note why)."""
    if options.provider is None:
        notes.append("no execution provider given: float16 support judged from the ONNX schemas alone")
        return "schema"
    kernels = runtime.provider_kernels(options.provider)
    if kernels is None:
        notes.append(f"this onnxruntime ({runtime.flavour()}) cannot list its kernels: float16 support judged from the ONNX schemas alone")
        return "schema"
    if not kernels:
        notes.append(
            f"this onnxruntime ({runtime.flavour()}) has no {options.provider} kernels to ask: float16 support judged from "
            f"the ONNX schemas alone; plan on a machine with that EP to check its kernels"
        )
        return "schema"
    return "registry"


def _kernel_problem(node: onnx.NodeProto, signature: _Signature, binding: dict[str, str], provider: str) -> str:
    """Why the provider cannot run the node with this type binding ('' if a registered kernel can)."""
    domain = node.domain or "ai.onnx"
    kernels = [k for k in (runtime.provider_kernels(provider) or {}).get((domain, node.op_type), ()) if k.first <= signature.since_version <= k.last]
    label = f"{node.op_type}-{signature.since_version}"
    if not kernels:
        return f"{provider} has no {label} kernel at all"
    for kernel in kernels:
        if all(binding[param] in allowed for param, allowed in kernel.type_constraints if param in binding):
            return ""
    shown = ", ".join(f"{param}={text}" for param, text in sorted(binding.items()))
    return f"{provider} has no {label} kernel for {shown}"
