"""`ortforge doctor`: the ORT build and its EPs, this machine, and how to get the EPs that are missing."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field

from ortforge.core import runtime
from ortforge.core.machine import MachineInfo, machine_info

BUILD_COMMON = "--build_wheel --parallel --skip_tests --config Release"
SHARED_LIB_NOTE = "add --build_shared_lib for the C/C++ library"


@dataclass(frozen=True)
class EpSource:
    """Where an execution provider comes from: a pip flavour and/or ORT build.sh flags."""

    pip: str | None
    build_flags: str
    needs: str
    systems: frozenset[str] = frozenset({"linux", "win", "darwin"})  # sys.platform prefixes it exists for
    machines: frozenset[str] = frozenset()  # CPU architectures it exists for (platform.machine(), lower case); empty: any

    def exists_here(self) -> bool:
        """Whether this EP exists for this OS and CPU architecture at all."""
        machine = platform.machine().lower().replace("amd64", "x86_64").replace("arm64", "aarch64")
        return any(sys.platform.startswith(system) for system in self.systems) and (not self.machines or machine in self.machines)


EP_SOURCES: dict[str, EpSource] = {
    "CUDAExecutionProvider": EpSource("onnxruntime-gpu", "--use_cuda --cuda_home <CUDA dir> --cudnn_home <cuDNN dir>", "an NVIDIA GPU, CUDA 12 and cuDNN 9",
                                    frozenset({"linux", "win"})),
    "TensorrtExecutionProvider": EpSource(
        "onnxruntime-gpu (+ the tensorrt pip package or TensorRT libraries)",
        "--use_tensorrt --tensorrt_home <TensorRT dir> --use_cuda --cuda_home <CUDA dir> --cudnn_home <cuDNN dir>",
        "an NVIDIA GPU and TensorRT 10",
        frozenset({"linux", "win"}),
    ),
    "NvTensorRTRTXExecutionProvider": EpSource(None, "--use_nv_tensorrt_rtx --tensorrt_rtx_home <dir> --cuda_home <CUDA dir>", "an NVIDIA RTX GPU", frozenset({"linux", "win"})),
    "OpenVINOExecutionProvider": EpSource("onnxruntime-openvino", "--use_openvino CPU", "an Intel CPU, GPU or NPU (x86 CPUs in general)",
                                          frozenset({"linux", "win"}), frozenset({"x86_64"})),
    "DnnlExecutionProvider": EpSource(None, "--use_dnnl", "an x86 or ARM CPU (oneDNN)"),
    "DmlExecutionProvider": EpSource("onnxruntime-directml", "--use_dml", "Windows with a DirectX 12 GPU", frozenset({"win"})),
    "CoreMLExecutionProvider": EpSource("onnxruntime (macOS wheels include it)", "--use_coreml", "macOS or iOS", frozenset({"darwin"})),
    "MIGraphXExecutionProvider": EpSource("onnxruntime-migraphx", "--use_migraphx --migraphx_home <ROCm dir>", "an AMD GPU with ROCm", frozenset({"linux"}),
                                          frozenset({"x86_64"})),
    "QNNExecutionProvider": EpSource("onnxruntime-qnn", "--use_qnn --qnn_home <QNN SDK dir>", "a Qualcomm Snapdragon NPU", frozenset({"linux", "win"}),
                                     frozenset({"aarch64"})),
    "XnnpackExecutionProvider": EpSource(None, "--use_xnnpack", "an ARM or x86 CPU (mobile-oriented kernels)"),
    "WebGpuExecutionProvider": EpSource(None, "--use_webgpu", "a GPU with WebGPU (Dawn)"),
    "VitisAIExecutionProvider": EpSource("onnxruntime-vitisai", "--use_vitisai", "an AMD Ryzen AI NPU", frozenset({"linux", "win"}),
                                          frozenset({"x86_64"})),
    "CANNExecutionProvider": EpSource("onnxruntime-cann", "--use_cann", "a Huawei Ascend NPU", frozenset({"linux"})),
    "AzureExecutionProvider": EpSource("onnxruntime", "--use_azure", "network access to an Azure endpoint"),
}


@dataclass
class MissingEp:
    name: str
    pip: str | None
    build: str
    needs: str


@dataclass
class EpDevice:
    ep: str
    vendor: str
    device_type: str
    device_vendor: str
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class DoctorReport:
    ort_version: str
    flavour: str
    build_info: str
    device: str
    python: str
    available_providers: list[str]
    ep_devices: list[EpDevice]
    max_ir_version: int
    max_opsets: dict[str, int]
    machine: MachineInfo
    missing: list[MissingEp]
    notes: list[str]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["machine"] = self.machine.to_dict()
        return data


def _ep_devices() -> list[EpDevice]:
    ort = runtime.ort()
    if not hasattr(ort, "get_ep_devices"):
        return []
    devices = []
    for device in ort.get_ep_devices():
        hardware = device.device
        devices.append(
            EpDevice(
                ep=device.ep_name,
                vendor=device.ep_vendor,
                device_type=str(hardware.type).rsplit(".", 1)[-1],
                device_vendor=hardware.vendor,
                metadata={**dict(device.ep_metadata), **dict(hardware.metadata)},
            )
        )
    return devices


def missing_providers(available: list[str], everywhere: bool = False) -> list[MissingEp]:
    """The EPs this build lacks that exist for this OS and CPU (`everywhere`: every EP ortforge knows), each with the
    pip flavour or build flags that bring it."""
    missing = []
    for name, source in EP_SOURCES.items():
        if name in available or not (everywhere or source.exists_here()):
            continue
        build = f"./build.sh {source.build_flags} {BUILD_COMMON} ({SHARED_LIB_NOTE})"
        missing.append(MissingEp(name, source.pip, build, source.needs))
    return missing


def doctor(all_eps: bool = False) -> DoctorReport:
    """Everything about this ORT and this machine that decides what ortforge can try; missing EPs are those that
    exist for this OS and CPU (`all_eps`: every one, CoreML and DirectML included on Linux)."""
    ort = runtime.ort()
    available = runtime.available_providers()
    limits = runtime.limits()
    machine = machine_info()
    notes = []
    flavours = runtime.flavour()
    if "," in flavours:
        notes.append(f"several onnxruntime flavours are installed ({flavours}); they share one module and overwrite each other: keep one")
    if machine.gpus and "CUDAExecutionProvider" not in available:
        notes.append("an NVIDIA GPU is present but this onnxruntime has no CUDA EP: pip uninstall onnxruntime, then pip install onnxruntime-gpu")
    if "CUDAExecutionProvider" in available and not machine.gpus:
        notes.append("the CUDA EP is built in, but no NVIDIA GPU was found: sessions asking for it fall back to the CPU")
    notes.append("flavours share the `onnxruntime` module: uninstall the current one before installing another")
    elsewhere = [name for name, source in EP_SOURCES.items() if name not in available and not source.exists_here()]
    if elsewhere and not all_eps:
        notes.append(f"{len(elsewhere)} more EP(s) exist only for other systems or CPUs ({', '.join(n.removesuffix('ExecutionProvider') for n in elsewhere)}): --all lists them")
    return DoctorReport(
        ort_version=ort.__version__,
        flavour=flavours,
        build_info=ort.get_build_info() if hasattr(ort, "get_build_info") else "",
        device=ort.get_device(),
        python=sys.version.split()[0],
        available_providers=available,
        ep_devices=_ep_devices(),
        max_ir_version=limits.max_ir_version,
        max_opsets=dict(limits.max_opset),
        machine=machine,
        missing=missing_providers(available, all_eps),
        notes=notes,
    )
