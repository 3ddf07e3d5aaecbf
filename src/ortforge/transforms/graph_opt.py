"""Offline graph optimization: let ORT optimize the graph once and save the result, stamped.

ORT writes the optimized graph itself (`SessionOptions.optimized_model_filepath`); this transform
runs that into a private temporary folder, reads the result back and stamps it with what it is
valid for. The level a saved model must be loaded with follows from the level it was saved at
(`load_level`): re-running optimizations on an ALL-level model only costs start-up time, while a
BASIC or EXTENDED model loaded with optimizations off misses the layout rewrites that CNNs need.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ortforge.core.errors import OptionError
from ortforge.core.model import EXTERNAL_DATA_THRESHOLD, Model, external_bytes, load_model, weight_bytes
from ortforge.core.options import option
from ortforge.core.scratch import scratch_folder
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.core.stamp import load_level, make_stamp, write_stamp
from ortforge.transforms import TransformResult, op_count_changes

LEVELS = ("basic", "extended", "layout", "all")
PORTABLE_LEVELS = ("basic", "extended")  # no layout (NCHWc) rewrites: valid on any CPU of the EP
EXTERNAL_FILE_KEY = "session.optimized_model_external_initializers_file_name"
EXTERNAL_MIN_KEY = "session.optimized_model_external_initializers_min_size_in_bytes"


@dataclass(frozen=True)
class GraphOptOptions:
    """Which of ORT's graph optimizations to save, for which EPs."""

    level: str = option("all", choices=LEVELS, help="ORT graph optimization level to save")
    providers: tuple[ProviderSpec, ...] = (ProviderSpec("CPUExecutionProvider"),)
    portable: bool = option(False, help="only rewrites valid on any CPU of the EP (basic/extended, no layout)")

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise OptionError("level", self.level, f"choose one of {', '.join(LEVELS)}")
        if self.portable and self.level not in PORTABLE_LEVELS:
            raise OptionError("level", self.level, f"portable saves only {' or '.join(PORTABLE_LEVELS)} optimizations; this level is hardware-specific")


def optimize_offline(model: Model, options: GraphOptOptions, *, source_sha256: str | None = None, fusion: dict | None = None) -> TransformResult:
    """ORT's graph optimizations at `options.level`, applied once and returned as a stamped model.

    `source_sha256` and `fusion` name the original file and the fusion applied before, when `model`
    is an intermediate (fused) model rather than the file the user gave.
    """
    config = SessionConfig(providers=list(options.providers), graph_optimization_level=options.level)
    large = weight_bytes(model.proto) + external_bytes(model.proto) > EXTERNAL_DATA_THRESHOLD
    small_external = not large and bool(model.external_data_files())
    # ORT writes the optimized model there; over 2 GB its weights stay there (the result's data_dir) until the process ends.
    folder = scratch_folder("optimize") if large else Path(tempfile.mkdtemp(prefix="ortforge-optimize-"))
    try:
        target = folder / "optimized.onnx"
        session_options = config.session_options(model.ort_source()[1])
        session_options.optimized_model_filepath = str(target)
        if large or small_external:
            session_options.add_session_config_entry(EXTERNAL_FILE_KEY, "optimized.onnx.data")
            session_options.add_session_config_entry(EXTERNAL_MIN_KEY, "1024")
        config.create_with_options(model, session_options)
        proto = load_model(target, check=False).proto
        if small_external:  # pull the weights in before the temporary folder goes
            import onnx

            onnx.load_external_data_for_model(proto, str(folder))
    finally:
        if not large:
            shutil.rmtree(folder, ignore_errors=True)
    providers = [{"name": p.name, "options": dict(p.options)} for p in options.providers]
    write_stamp(proto, make_stamp(providers, options.level, options.portable, source_sha256 or model.content_hash(), fusion))
    counts = op_count_changes(model.proto, proto)
    before, after = len(model.proto.graph.node), len(proto.graph.node)
    return TransformResult(
        proto=proto,
        changed=True,
        changes=[f"{before} -> {after} nodes at level {options.level}"] + [f"{op}: {delta:+d}" for op, delta in counts.items()],
        notes=["portable: no layout or ISA-specific rewrites"] if options.portable else [],
        details={"nodes_before": before, "nodes_after": after, "op_changes": counts, "load_level": load_level(options.level)},
        data_dir=folder if large else None,
    )
