"""The hardware ortforge runs on: CPU model, ISA features that ORT kernels depend on, cores, GPUs."""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Flags as Linux spells them in /proc/cpuinfo, mapped to the names ortforge reports.
X86_FEATURES = {
    "sse4_2": "sse4.2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
}
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16", "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2"}
MACOS_ARM_FEATURES = {
    "hw.optional.arm.FEAT_DotProd": "dotprod",
    "hw.optional.arm.FEAT_FP16": "fp16",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "bf16",
}


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_mib: int | None = None
    driver: str | None = None
    compute_capability: str | None = None


@dataclass(frozen=True)
class CpuInfo:
    model: str
    architecture: str
    features: tuple[str, ...]
    physical_cores: int | None
    logical_cores: int | None


@dataclass(frozen=True)
class MachineInfo:
    system: str
    cpu: CpuInfo
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    gpu_probe: str = ""  # how GPUs were looked for, or why not

    def to_dict(self) -> dict:
        return asdict(self)


def _cpuinfo_fields() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    fields: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def _sysctl(name: str) -> str | None:
    if shutil.which("sysctl") is None:
        return None
    try:
        result = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def cpu_features(flags: set[str], architecture: str) -> tuple[str, ...]:
    """ortforge's names for the ISA features present in a set of OS-reported flags."""
    table = ARM_FEATURES if architecture.lower() in ("aarch64", "arm64") else X86_FEATURES
    return tuple(name for flag, name in table.items() if flag in flags)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    import psutil

    architecture = platform.machine()
    fields = _cpuinfo_fields()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    features = cpu_features(flags, architecture)
    model = fields.get("model name") or fields.get("Model") or ""
    if platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string") or model
        features = tuple(name for key, name in MACOS_ARM_FEATURES.items() if _sysctl(key) == "1") or features
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        architecture=architecture,
        features=features,
        physical_cores=psutil.cpu_count(logical=False),
        logical_cores=psutil.cpu_count(logical=True),
    )


def nvidia_gpus() -> tuple[tuple[Gpu, ...], str]:
    """GPUs nvidia-smi reports, and a word on how they were found (or why none were)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return (), "nvidia-smi not found"
    query = "name,memory.total,driver_version,compute_cap"
    try:
        result = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return (), f"nvidia-smi failed: {exc}"
    if result.returncode != 0:
        return (), f"nvidia-smi failed: {result.stderr.strip() or result.stdout.strip()}"
    gpus = []
    for line in result.stdout.strip().splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) >= 4:
            memory = int(parts[1]) if parts[1].isdigit() else None
            gpus.append(Gpu(parts[0], memory, parts[2], parts[3]))
    return tuple(gpus), "nvidia-smi"


@functools.lru_cache(maxsize=1)
def machine_info() -> MachineInfo:
    gpus, probe = nvidia_gpus()
    return MachineInfo(system=f"{platform.system()} {platform.release()}", cpu=cpu_info(), gpus=gpus, gpu_probe=probe)
