"""`SessionConfig`: every session knob in one serialisable dataclass that builds an InferenceSession."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ortforge.core import runtime
from ortforge.core.errors import OptionError, UserError, first_line
from ortforge.core.model import Model
from ortforge.core.values import describe_value, from_ort, ort_feed, output_dtypes
from ortforge.data import FeedSet

Outputs = list[dict[str, Any]]  # one dict of output name -> value per sample

OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}
EXECUTION_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
CPU = "CPUExecutionProvider"
SPINNING = "session.intra_op.allow_spinning"  # config entry: "0" parks idle intra-op threads at once
MEASUREMENTS_KEY = "measurements"  # figures a tool stored beside the config; informational, ignored on load


def provider_name(text: str) -> str:
    """'cuda' or 'CUDAExecutionProvider' -> 'CUDAExecutionProvider'."""
    return PROVIDER_ALIASES.get(text.lower(), text)


def known_provider(text: str, option: str = "ep") -> str:
    """The EP's full name, if onnxruntime knows it at all (this build or another): a target may be named on a machine
    without it, a typo may not."""
    name = provider_name(text)
    known = runtime.ort().get_all_providers()
    if name not in known:
        raise OptionError(option, text, f"not an onnxruntime execution provider (it knows {', '.join(p.replace('ExecutionProvider', '') for p in known)})")
    return name


@dataclass
class ProviderSpec:
    name: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class SessionConfig:
    """What ORT needs besides the model; `build()` turns it into a session, JSON keeps it."""

    providers: list[ProviderSpec] = field(default_factory=lambda: [ProviderSpec(CPU)])
    graph_optimization_level: str = "all"
    intra_op_num_threads: int = 0  # 0: ORT's default (one per physical core)
    inter_op_num_threads: int = 0
    execution_mode: str = "sequential"
    enable_mem_pattern: bool = True
    enable_cpu_mem_arena: bool = True
    config_entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.providers = [p if isinstance(p, ProviderSpec) else ProviderSpec(**p) for p in self.providers]
        self.providers = [ProviderSpec(provider_name(p.name), {k: str(v) for k, v in p.options.items()}) for p in self.providers]
        self.config_entries = {str(k): str(v) for k, v in self.config_entries.items()}
        if self.graph_optimization_level not in OPTIMIZATION_LEVELS:
            raise UserError(
                f"graph_optimization_level '{self.graph_optimization_level}' is not one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        if self.execution_mode not in EXECUTION_MODES:
            raise UserError(f"execution_mode '{self.execution_mode}' is not one of {', '.join(EXECUTION_MODES)}")
        for name in ("intra_op_num_threads", "inter_op_num_threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise UserError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not self.providers:
            raise UserError("a session config needs at least one execution provider")

    @property
    def provider_names(self) -> list[str]:
        return [p.name for p in self.providers]

    @classmethod
    def on(cls, provider: str) -> SessionConfig:
        """ORT's defaults on `provider`, with the CPU EP taking the nodes it leaves."""
        return cls(providers=[ProviderSpec(provider)] + ([ProviderSpec(CPU)] if provider != CPU else []))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "session config") -> SessionConfig:
        data = {key: value for key, value in data.items() if key != MEASUREMENTS_KEY}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except (TypeError, AttributeError) as exc:  # a field of the wrong kind (a list where an object belongs)
            raise UserError(f"{where}: {exc}") from None
        except UserError as exc:  # a value its own check refused: name the file it came from
            raise UserError(f"{where}: {exc}", exc.hint) from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "session config") -> SessionConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a JSON object")
        return cls.from_dict(data, where)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SessionConfig:
        file = Path(path)
        if not file.is_file():
            raise UserError(f"{file}: session config file not found")
        return cls.from_json(file.read_text(), where=str(file))

    def session_options(self, extra_entries: dict[str, str] | None = None) -> Any:
        ort = runtime.ort()
        options = runtime.quiet_session_options()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[self.graph_optimization_level])
        options.intra_op_num_threads = self.intra_op_num_threads
        options.inter_op_num_threads = self.inter_op_num_threads
        options.execution_mode = getattr(ort.ExecutionMode, EXECUTION_MODES[self.execution_mode])
        options.enable_mem_pattern = self.enable_mem_pattern
        options.enable_cpu_mem_arena = self.enable_cpu_mem_arena
        for key, value in {**self.config_entries, **(extra_entries or {})}.items():
            options.add_session_config_entry(key, value)
        return options

    def check_providers(self) -> None:
        available = runtime.available_providers()
        for provider in self.providers:
            if provider.name not in available:
                raise UserError(
                    f"execution provider '{provider.name}' is not available in this onnxruntime "
                    f"(available: {', '.join(available)})",
                    hint="`ortforge doctor` tells which package or build brings it",
                )

    def build(self, model: Model, *, extra_entries: dict[str, str] | None = None, profile_dir: str | None = None) -> Any:
        """An InferenceSession for the model; EP and load failures become one-line UserErrors."""
        source, entries = model.ort_source()
        return self.create(source, {**entries, **(extra_entries or {})}, name=model.name, profile_dir=profile_dir)

    def create_with_options(self, model: Model, options: Any) -> Any:
        """A session from ready-made SessionOptions (for callers that set ORT fields this config lacks)."""
        return self._create(model.ort_source()[0], options, model.name)

    def create(self, source: bytes | str, entries: dict[str, str], *, name: str, profile_dir: str | None = None) -> Any:
        """An InferenceSession from what `Model.ort_source()` returned (used where no Model travels, e.g. subprocesses)."""
        options = self.session_options(entries)
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "profile")
        return self._create(source, options, name)

    def _create(self, source: bytes | str, options: Any, name: str) -> Any:
        self.check_providers()
        try:
            return runtime.ort().InferenceSession(
                source,
                options,
                providers=[p.name for p in self.providers],
                provider_options=[p.options for p in self.providers],
            )
        except Exception as exc:  # ORT raises its own exception types per failure kind
            raise UserError(f"{name}: onnxruntime could not create a session: {first_line(exc, 500)}") from None


def run_checked(session: Any, feed: dict, name: str, index: int = 0) -> list:
    """`session.run` whose failures (bad shapes for this model, kernel errors) become one-line UserErrors."""
    try:
        return session.run(None, ort_feed(feed))
    except Exception as exc:  # ORT raises its own exception types per failure kind
        shapes = ", ".join(f"{k} {describe_value(v)}" for k, v in feed.items())
        raise UserError(
            f"{name}: onnxruntime failed on sample {index} ({shapes}): {first_line(exc, 300)}",
            hint="check the input shapes; set symbolic dims with dims / shapes (--dim NAME=N, --shape INPUT=DxD)",
        ) from None


def run_on_feeds(session: Any, feeds: FeedSet, name: str) -> Outputs:
    """A session's outputs on every sample (output name -> value, per sample); failures become one-line UserErrors."""
    names = [output.name for output in session.get_outputs()]
    dtypes = output_dtypes(session)
    return [{output: from_ort(value, dtypes.get(output)) for output, value in zip(names, run_checked(session, feed, name, index))}
            for index, feed in enumerate(feeds.samples)]  # fmt: skip


def run_outputs(model: Model, feeds: FeedSet, config: SessionConfig | None = None) -> Outputs:
    """The model's outputs on every sample, with ORT's defaults unless `config` says otherwise."""
    return run_on_feeds((config or SessionConfig()).build(model), feeds, model.name)
