"""`ortforge quant-debug`: compare a quantized model with its float original tensor by tensor, worst first."""

from __future__ import annotations

from pathlib import Path

from ortforge.analysis.quant_errors import QuantDebugReport, debug_quantization
from ortforge.commands.common import feeds_for, open_model
from ortforge.core.errors import UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.model import Model, iter_nodes
from ortforge.core.outputs import guard_file, user_files
from ortforge.data import FeedSet, ShapeOptions
from ortforge.report.svg import bar_chart
from ortforge.transforms.quantize import QUANTIZED_OPS, QuantizeOptions, prepare

WEIGHT_ONLY_OPS = {"MatMulNBits", "GatherBlockQuantized"}


def quant_debug(
    float_reference: str | Path,
    quantized_reference: str | Path,
    *,
    data: str | None = None,
    samples: int = 4,
    shape_options: ShapeOptions | None = None,
    plot: str | Path | None = None,
) -> QuantDebugReport:
    """Per-layer SQNR / relative error of a quantized model against its float original, worst first; `plot` also
    writes an SVG bar chart of the worst layers there."""
    float_model = open_model(float_reference)
    quant_model = open_model(quantized_reference, check=False)
    if plot is not None:
        guard_file(plot, user_files(float_model, data) + user_files(quant_model), option="plot")
    feeds = feeds_for(float_model, float_reference, data, samples=samples, shape_options=shape_options)
    if not any(node.op_type in QUANTIZED_OPS | WEIGHT_ONLY_OPS for node in iter_nodes(quant_model.proto)):  # every SQNR would read "inf"
        raise UserError(f"{quant_model.name}: not a quantized model (no QuantizeLinear, DequantizeLinear, QLinear*, *Integer or MatMulNBits "
                        "node): nothing to compare", hint="give the model that quantize wrote as the second model")  # fmt: skip
    report = _compared(float_model, quant_model, feeds)
    if plot is not None:
        atomic_write_text(Path(plot), plot_svg(report))
    return report


def _compared(float_model: Model, quant_model: Model, feeds: FeedSet) -> QuantDebugReport:
    as_given = debug_quantization(float_model, quant_model, feeds)
    if not as_given.unmatched:
        return as_given
    # Quantizers work on a pre-processed graph (fused, renamed nodes); compare against that if it matches better.
    prepared = debug_quantization(prepare(float_model, QuantizeOptions(), []), quant_model, feeds)
    if prepared.unmatched < as_given.unmatched:
        prepared.notes.append("compared with the pre-processed float graph the quantizer saw (node names as in that graph)")
        return prepared
    return as_given


def plot_svg(report: QuantDebugReport, count: int = 20) -> str:
    """SVG bar chart of the worst layers' SQNR."""
    worst = report.worst_layers(count)
    return bar_chart([f"{e.node} ({e.op_type})" for e in worst], [e.sqnr_db for e in worst],
                     title=f"Activation SQNR, worst {len(worst)} layers (dB, higher is better)", unit=" dB")  # fmt: skip
