"""The stamp an offline-optimized model carries: what it is valid for, and the check against this machine.

ORT's saved optimizations are only valid for the EP, options, ORT version and CPU they were made
with: an NCHWc layout made for AVX-512 (block 16) is wrong on an AVX2 CPU (block 8) and vice versa,
and an EP-specific graph holds nodes only that EP runs. The stamp lives in `metadata_props`, which
plain ORT ignores, so stamped models still load anywhere ORT can run them.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import asdict, dataclass, field, replace

import onnx

from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.machine import machine_info
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.version import __version__

STAMP_KEY = "ortforge.stamp"
# ISA features that change which kernels and layouts ORT picks (MLAS NCHWc block size, int8 paths).
LAYOUT_FEATURES = {
    "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_int8", "amx_bf16", "neon", "dotprod", "i8mm", "fp16", "bf16", "sve", "sve2",
}  # fmt: skip


@dataclass
class Stamp:
    """What an offline-optimized model was made with, and so what it is valid for."""

    ortforge_version: str
    ort_version: str
    providers: list[dict]  # [{"name": ..., "options": {...}}]
    level: str
    portable: bool
    architecture: str
    isa_features: list[str]
    gpu_compute_capabilities: list[str] = field(default_factory=list)
    source_sha256: str = ""
    created: str = ""
    fusion: dict | None = None  # transformer fusion options applied before ORT's optimizations (replayed on re-optimization)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Stamp:
        return cls(**json.loads(text))

    @property
    def provider_names(self) -> list[str]:
        return [p["name"] for p in self.providers]


def make_stamp(providers: list[dict], level: str, portable: bool, source_sha256: str, fusion: dict | None = None) -> Stamp:
    """A stamp for a model optimized here, now."""
    machine = machine_info()
    uses_gpu = any(p["name"] in runtime.NVIDIA_PROVIDERS for p in providers)
    return Stamp(
        ortforge_version=__version__,
        ort_version=runtime.version(),
        providers=providers,
        level=level,
        portable=portable,
        architecture=machine.cpu.architecture,
        isa_features=sorted(set(machine.cpu.features) & LAYOUT_FEATURES),
        gpu_compute_capabilities=sorted({g.compute_capability or "?" for g in machine.gpus}) if uses_gpu else [],
        source_sha256=source_sha256,
        fusion=fusion,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def write_stamp(proto: onnx.ModelProto, stamp: Stamp) -> None:
    kept = [entry for entry in proto.metadata_props if entry.key != STAMP_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=STAMP_KEY, value=stamp.to_json())


def read_stamp(proto: onnx.ModelProto) -> Stamp | None:
    for entry in proto.metadata_props:
        if entry.key == STAMP_KEY:
            try:
                return Stamp.from_json(entry.value)
            except (TypeError, ValueError) as exc:
                raise UserError(f"the model's ortforge stamp is unreadable ({exc})") from None
    return None


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def mismatches(stamp: Stamp) -> list[str]:
    """Why a stamped model is not valid on this machine with this ORT (empty when it is)."""
    machine = machine_info()
    problems = []
    if _minor(stamp.ort_version) != _minor(runtime.version()):
        problems.append(f"made with onnxruntime {stamp.ort_version}, this is {runtime.version()}")
    available = runtime.available_providers()
    for name in stamp.provider_names:
        if name not in available:
            problems.append(f"made for {name}, which this onnxruntime lacks")
    if stamp.portable:
        return problems
    if stamp.architecture != machine.cpu.architecture:
        problems.append(f"made for a {stamp.architecture} CPU, this one is {machine.cpu.architecture}")
    here = set(machine.cpu.features) & LAYOUT_FEATURES
    made = set(stamp.isa_features)
    if made != here:
        problems.append(_isa_message(made, here))
    if stamp.gpu_compute_capabilities:
        gpus = {g.compute_capability for g in machine.gpus}
        if not set(stamp.gpu_compute_capabilities) <= gpus:
            found = ", ".join(sorted(c for c in gpus if c)) or "no NVIDIA GPU"
            problems.append(f"made for GPU compute capability {', '.join(stamp.gpu_compute_capabilities)}, found {found}")
    return problems


def _isa_message(made: set[str], here: set[str]) -> str:
    missing, extra = sorted(made - here), sorted(here - made)
    has = ", ".join(sorted(here)) or "none of them"
    if missing:
        return f"made for {', '.join(missing)}, this CPU has {has} only"
    return f"made for a CPU without {', '.join(extra)}; this CPU has it, and ORT picks other kernels and layouts for it"


def load_level(saved_level: str) -> str:
    """The optimization level a model saved at `saved_level` should be loaded with."""
    return "disable" if saved_level in ("layout", "all") else "all"


def config_for(stamp: Stamp | None, base: SessionConfig | None = None) -> SessionConfig:
    """The session config a model needs: `base` (or ORT defaults) with, for a stamped model, its EPs
    (unless `base` names them) and the level that follows from how it was saved."""
    config = base or SessionConfig()
    if stamp is None:
        return config
    if base is None:
        config = replace(config, providers=[ProviderSpec(p["name"], p.get("options", {})) for p in stamp.providers])
    return replace(config, graph_optimization_level=load_level(stamp.level))
