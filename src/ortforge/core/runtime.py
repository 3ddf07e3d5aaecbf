"""What the installed ONNX Runtime is and can do: flavour, version, EPs, IR/opset limits, kernels.

Limits are *asked of ORT* (by loading tiny probe models) instead of kept in a table, so the gate stays
right for any ORT version or flavour (the OpenVINO flavour ships an older ORT than the CPU one).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortforge.core.errors import UserError

ORT_FLAVOURS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-qnn",
    "onnxruntime-training",
    "onnxruntime-silicon",
    "onnxruntime-rocm",
    "onnxruntime-migraphx",
    "onnxruntime-cann",
    "onnxruntime-vitisai",
)

DEFAULT_DOMAIN = "ai.onnx"
# EPs on NVIDIA GPUs (their saved graphs depend on the compute capability), and GPU EPs in general.
NVIDIA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "NvTensorRTRTXExecutionProvider")
GPU_PROVIDERS = NVIDIA_PROVIDERS + ("DmlExecutionProvider", "MIGraphXExecutionProvider")
# EPs that run nothing on this machine: timing or placing them says nothing about it.
REMOTE_PROVIDERS = ("AzureExecutionProvider",)


def ort() -> Any:
    """Import onnxruntime, or explain how to get one without naming a flavour for the user."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            "onnxruntime is not installed",
            hint="pip install 'ortforge[cpu]', or your flavour: onnxruntime-gpu, onnxruntime-openvino, ...",
        ) from exc
    return onnxruntime


VERBOSE_ENV = "ORTFORGE_VERBOSE"  # set (by --verbose) to let ORT's own log through; inherited by measurement processes


def quiet_session_options() -> Any:
    """SessionOptions that keep ORT's own log off the user's terminal: its failures reach the user as ortforge's one-line
    errors, and its warnings are not theirs to act on. `--verbose` (ORTFORGE_VERBOSE=1) lets warnings and errors through."""
    options = ort().SessionOptions()
    options.log_severity_level = 2 if os.environ.get(VERBOSE_ENV) else 4
    return options


@functools.lru_cache(maxsize=1)
def flavour() -> str:
    """The pip distribution that provides the `onnxruntime` module (several may claim it)."""
    installed = [
        name for name in ORT_FLAVOURS if _distribution_version(name) is not None
    ]
    if not installed:
        return "unknown (not installed by pip)"
    return ", ".join(installed)


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class OrtLimits:
    """The newest IR version and opsets this ORT loads, and the oldest ai.onnx opset it guarantees."""

    max_ir_version: int
    max_opset: dict[str, int] = field(default_factory=dict)


def _probe_model(ir_version: int, opsets: dict[str, int]) -> bytes:
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    result = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="probe")], "probe", [value], [result])
    imports = [helper.make_opsetid("" if d == DEFAULT_DOMAIN else d, v) for d, v in opsets.items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    return model.SerializeToString()


def _loads(ir_version: int, opsets: dict[str, int]) -> bool:
    try:
        ort().InferenceSession(
            _probe_model(ir_version, opsets), quiet_session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception:
        return False
    return True


def _highest(accepts: Any, low: int, high: int) -> int:
    """Largest value in [low, high] that `accepts` (monotone: True up to some point, then False)."""
    while low < high:
        middle = (low + high + 1) // 2
        if accepts(middle):
            low = middle
        else:
            high = middle - 1
    return low


@functools.lru_cache(maxsize=1)
def limits() -> OrtLimits:
    """The newest IR version and opsets the installed ORT loads: probed once per ORT build (about 20
    tiny sessions, 0.2 s) and cached on disk, since every command that loads a model needs them."""
    import json

    cached = _runtime_file("limits")
    if cached.is_file():
        data = json.loads(cached.read_text())
        return OrtLimits(data["max_ir_version"], data["max_opset"])
    max_ir = _highest(lambda ir: _loads(ir, {DEFAULT_DOMAIN: 13}), 7, 64)
    max_onnx = _highest(lambda v: _loads(max_ir, {DEFAULT_DOMAIN: v}), 13, 200)
    max_ml = _highest(lambda v: _loads(max_ir, {DEFAULT_DOMAIN: 13, "ai.onnx.ml": v}), 1, 200)
    found = OrtLimits(max_ir_version=max_ir, max_opset={DEFAULT_DOMAIN: max_onnx, "ai.onnx.ml": max_ml})
    _write_runtime_file(cached, {"max_ir_version": found.max_ir_version, "max_opset": found.max_opset})
    return found


@dataclass(frozen=True)
class KernelRange:
    """One kernel this ORT build registered: its EP, the opset versions it serves, the types it accepts."""

    provider: str
    first: int
    last: int
    # (type parameter, type strings the kernel accepts for it), e.g. ("T", {"tensor(float)", ...}); a
    # tuple of pairs so the range stays hashable.
    type_constraints: tuple[tuple[str, frozenset[str]], ...] = ()


def dump_kernels() -> None:
    """Print this build's kernel registry as JSON (run in a child process: see `kernel_registry`)."""
    import json

    from onnxruntime.capi import _pybind_state as capi

    rows = [[k.domain or DEFAULT_DOMAIN, k.op_name, k.provider, *k.version_range, k.type_constraints] for k in capi.get_all_opkernel_def()]
    print(json.dumps(rows))


def _runtime_file(kind: str) -> Path:
    """Where facts about this ORT build are cached: one file per kind, flavour and version."""
    from ortforge.core.cache import cache_root

    name = f"{kind}-{flavour().replace(', ', '+')}-{version()}.json".replace(" ", "_")
    return cache_root() / "runtime" / name


def _write_runtime_file(path: Path, data: object) -> None:
    import json

    from ortforge.core.files import atomic_write_text

    atomic_write_text(path, json.dumps(data))


@functools.lru_cache(maxsize=1)
def kernel_rows() -> list[list] | None:
    """[domain, op, provider, first, last, type_constraints] per kernel, or None where ORT cannot list them.

    Asked in a child process once per ORT build and cached on disk: `get_all_opkernel_def` crashes
    the process in some flavours (onnxruntime-openvino 1.24 segfaults, and so does onnxruntime-gpu 1.31.1 where
    TensorRT's libraries are missing: it fails to load its TensorRT provider, seen on an H200 machine).
    """
    import json
    import subprocess
    import sys

    cached = _runtime_file("kernels")
    if cached.is_file():
        data = json.loads(cached.read_text())
        return data.get("kernels")
    why = ""
    try:
        child = subprocess.run([sys.executable, "-c", "from ortforge.core.runtime import dump_kernels; dump_kernels()"],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        kernels = json.loads(child.stdout) if child.returncode == 0 else None
        why = "" if kernels is not None else (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        kernels, why = None, str(exc)
    _write_runtime_file(cached, {"kernels": kernels, **({"why": why} if why else {})})  # why: for whoever reads the cache
    return kernels


def loads_model(source: Any) -> bool:
    """Whether this ORT creates a CPU session for the model (a proto or a path), optimizations off: the answer to a
    checker's complaint where the build cannot list its kernels."""
    engine = ort()
    options = engine.SessionOptions()
    options.graph_optimization_level = engine.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        engine.InferenceSession(source if isinstance(source, str) else source.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any refusal means no
        return False
    return True


@functools.lru_cache(maxsize=1)
def kernel_registry() -> dict[tuple[str, str], tuple[KernelRange, ...]] | None:
    """(domain, op_type) -> every kernel this build registered for the op, in ORT's order (None: unknown).

    The one index of `kernel_rows`: `kernel_providers` and `provider_kernels` are views of it.
    """
    rows = kernel_rows()
    if rows is None:
        return None
    registry: dict[tuple[str, str], list[KernelRange]] = {}
    for domain, op_type, provider, first, last, constraints in rows:
        allowed = tuple((param, frozenset(types)) for param, types in constraints.items())
        registry.setdefault((domain or DEFAULT_DOMAIN, op_type), []).append(KernelRange(provider, first, last, allowed))
    return {key: tuple(ranges) for key, ranges in registry.items()}


@functools.lru_cache(maxsize=8)
def provider_kernels(provider: str) -> dict[tuple[str, str], tuple[KernelRange, ...]] | None:
    """(domain, op_type) -> the kernels one EP registered ({} when it registered none; None: ORT cannot say).

    Cached per EP: the fp16 planner asks it for every node it decides.
    """
    registry = kernel_registry()
    if registry is None:
        return None
    by_op = {key: tuple(k for k in kernels if k.provider == provider) for key, kernels in registry.items()}
    return {key: kernels for key, kernels in by_op.items() if kernels}


def kernel_providers(domain: str, op_type: str, since_version: int) -> set[str] | None:
    """EPs of this build with a kernel for the op at the given schema version (None when ORT cannot say)."""
    registry = kernel_registry()
    if registry is None:
        return None
    ranges = registry.get((domain or DEFAULT_DOMAIN, op_type), ())
    return {r.provider for r in ranges if r.first <= since_version <= r.last}


def has_kernel(domain: str, op_type: str) -> bool | None:
    """Whether any EP of this build has a kernel for the op at any version (None when ORT cannot say)."""
    registry = kernel_registry()
    return None if registry is None else (domain or DEFAULT_DOMAIN, op_type) in registry


def version() -> str:
    return ort().__version__


def available_providers() -> list[str]:
    return list(ort().get_available_providers())


def local_providers() -> list[str]:
    """Available EPs that run on this machine (not remote ones such as Azure)."""
    return [p for p in available_providers() if p not in REMOTE_PROVIDERS]
