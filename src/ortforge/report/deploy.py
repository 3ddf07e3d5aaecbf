"""The code that opens a tuned model with plain ONNX Runtime, from the session config a record holds: Python and C++.

Every setting is spelled with ORT's own enums and calls, so a user copies it without ortforge installed; settings
left at ORT's defaults are left out. The Python snippet is executed by the tests, so it cannot drift from the API.
"""

from __future__ import annotations

from typing import Any

from ortforge.core.session import CPU, EXECUTION_MODES, OPTIMIZATION_LEVELS, SessionConfig


def python_snippet(config: SessionConfig, model_file: str = "model.onnx", streams: int = 1) -> str:
    """Python that creates the session `config` describes."""
    lines = ["import onnxruntime as ort", "", "options = ort.SessionOptions()"]
    lines.append(f"options.graph_optimization_level = ort.GraphOptimizationLevel.{OPTIMIZATION_LEVELS[config.graph_optimization_level]}")
    for name in ("intra_op_num_threads", "inter_op_num_threads"):
        if getattr(config, name):
            lines.append(f"options.{name} = {getattr(config, name)}")
    if config.execution_mode != "sequential":
        lines.append(f"options.execution_mode = ort.ExecutionMode.{EXECUTION_MODES[config.execution_mode]}")
    for name in ("enable_mem_pattern", "enable_cpu_mem_arena"):
        if not getattr(config, name):
            lines.append(f"options.{name} = False")
    lines += [f"options.add_session_config_entry({key!r}, {value!r})" for key, value in config.config_entries.items()]
    providers = ", ".join(f"({p.name!r}, {dict(p.options)!r})" if p.options else repr(p.name) for p in config.providers)
    lines.append(f"session = ort.InferenceSession({model_file!r}, options, providers=[{providers}])")
    if streams > 1:
        lines.append(f"# measured with {streams} requests in flight: call session.run from {streams} threads at once")
    return "\n".join(lines)


def cpp_snippet(config: SessionConfig, model_file: str = "model.onnx") -> str:
    """C++ (onnxruntime_cxx_api.h) that creates the same session."""
    lines = ["#include <onnxruntime_cxx_api.h>", "", 'Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "app");', "Ort::SessionOptions options;"]
    lines.append(f"options.SetGraphOptimizationLevel(GraphOptimizationLevel::{OPTIMIZATION_LEVELS[config.graph_optimization_level]});")
    if config.intra_op_num_threads:
        lines.append(f"options.SetIntraOpNumThreads({config.intra_op_num_threads});")
    if config.inter_op_num_threads:
        lines.append(f"options.SetInterOpNumThreads({config.inter_op_num_threads});")
    if config.execution_mode != "sequential":
        lines.append(f"options.SetExecutionMode(ExecutionMode::{EXECUTION_MODES[config.execution_mode]});")
    if not config.enable_mem_pattern:
        lines.append("options.DisableMemPattern();")
    if not config.enable_cpu_mem_arena:
        lines.append("options.DisableCpuMemArena();")
    lines += [f'options.AddConfigEntry("{key}", "{value}");' for key, value in config.config_entries.items()]
    for provider in config.providers:
        if provider.name == CPU:
            continue
        pairs = ", ".join(f'{{"{k}", "{v}"}}' for k, v in provider.options.items())
        lines.append(f'options.AppendExecutionProvider("{provider.name.removesuffix("ExecutionProvider")}", {{{pairs}}});'
                     "  // CUDA and TensorRT: AppendExecutionProvider_CUDA_V2 / _TensorRT_V2 with these options")  # fmt: skip
    lines.append(f'Ort::Session session(env, ORT_TSTR("{model_file}"), options);')
    return "\n".join(lines)


def snippets(session: dict[str, Any], model_file: str = "model.onnx", streams: int = 1) -> dict[str, str]:
    """Both snippets from a record's session dict."""
    config = SessionConfig.from_dict(session)
    return {"python": python_snippet(config, model_file, streams), "cpp": cpp_snippet(config, model_file)}
