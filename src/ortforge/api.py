"""The public verbs, one per CLI command: they take paths and options and return result objects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .bench import BenchOptions, BenchReport, Progress, Variant
from .bench import bench as _bench
from .data import FeedSet, ShapeOptions, load_feeds
from .doctor import DoctorReport
from .doctor import doctor as _doctor
from .errors import UserError
from .model import Model, load_model
from .session import SessionConfig, run_checked

CONFIG_SUFFIX = ".json"


def open_model(reference: str | Path, *, check: bool = True) -> Model:
    """A model from a path or a zoo reference ('zoo:magika'), loaded and gated."""
    from . import zoo

    return load_model(zoo.resolve_model_argument(str(reference)), check=check)


def feeds_for(
    model: Model,
    reference: str | Path,
    data: str | None = None,
    *,
    samples: int | None = None,
    seed: int = 0,
    shape_options: ShapeOptions | None = None,
) -> FeedSet:
    """User data if given; a zoo model's realistic inputs; else generated feeds (flagged as such)."""
    from . import zoo

    if data is None and zoo.is_zoo_reference(str(reference)) and shape_options is None:
        return zoo.realistic_feeds(str(reference).split(":", 1)[1], count=samples or 8, seed=seed)
    return load_feeds(model, data, count=samples, seed=seed, shape_options=shape_options)


def calibration_and_evaluation(
    model: Model, reference: str | Path, data: str | None, *, calib_samples: int, samples: int, shape_options: ShapeOptions | None
) -> tuple[FeedSet, FeedSet]:
    """Separate samples for calibrating and for judging accuracy: judging on the calibration data flatters int8.

    Generated and zoo inputs come from two seeds; a user's data is split in two halves when it has at
    least four samples (otherwise both use all of it, and the evaluation set says so).
    """
    if data is None:
        calibration = feeds_for(model, reference, None, samples=calib_samples, shape_options=shape_options)
        return calibration, feeds_for(model, reference, None, samples=samples, shape_options=shape_options, seed=1)
    everything = load_feeds(model, data, count=calib_samples + samples, shape_options=shape_options)
    if len(everything) < 4:
        everything.notes.append("calibration and accuracy use the same samples (fewer than 4 given)")
        return everything, everything
    half = max(len(everything) - samples, len(everything) // 2)
    calibration = FeedSet(everything.samples[:half], f"{data} (samples 0-{half - 1})", False)
    evaluation = FeedSet(everything.samples[half:], f"{data} (samples {half}-{len(everything) - 1})", False)
    return calibration, evaluation


def doctor() -> DoctorReport:
    """The ORT build, its EPs and EP devices, this CPU and GPUs, and how to get missing EPs."""
    return _doctor()


def inspect(
    reference: str | Path,
    *,
    shape_options: ShapeOptions | None = None,
    placement: bool = True,
    check: bool = True,
):  # -> ModelReport (imported lazily to keep `import ortforge` light)
    """Inputs, ops, parameters, FLOPs, family, and the node->EP assignment for every local EP."""
    from .inspection import inspect_model
    from .measure.placement import placement_for
    from .runtime import local_providers

    from . import zoo

    model = open_model(reference, check=check)
    feeds = None
    if shape_options is None and zoo.is_zoo_reference(str(reference)):
        # A zoo model's real input shapes matter: PP-OCR rec only runs at height 48, silero at 576 samples.
        sample = feeds_for(model, reference, samples=1).samples[0]
        shape_options = ShapeOptions(shapes={name: array.shape for name, array in sample.items()})
        feeds = sample
    report = inspect_model(model, shape_options, feeds=feeds)
    if zoo.is_zoo_reference(str(reference)):
        report.name = str(reference)
    if placement:
        report.placements = [
            placement_for(model, provider) for provider in local_providers()
        ]
    return report


@dataclass
class BenchTarget:
    """One thing to measure: a model reference and, optionally, a session config file for it."""

    model: str
    config: str | None = None

    @property
    def label(self) -> str:
        name = Path(self.model).name if not self.model.startswith("zoo:") else self.model
        return f"{name} + {Path(self.config).name}" if self.config else name


def parse_bench_targets(arguments: Sequence[str]) -> list[BenchTarget]:
    """`A.onnx cfg1.json cfg2.json B.onnx` -> A, A+cfg1, A+cfg2, B (a config applies to the model before it)."""
    targets: list[BenchTarget] = []
    last_model: str | None = None
    for argument in arguments:
        if argument.endswith(CONFIG_SUFFIX):
            if last_model is None:
                raise UserError(f"{argument}: a session config must follow the model it applies to")
            targets.append(BenchTarget(last_model, argument))
        else:
            last_model = argument
            targets.append(BenchTarget(argument))
    if not targets:
        raise UserError("give at least one model to benchmark")
    return targets


def bench(
    targets: Sequence[str | BenchTarget],
    *,
    data: str | None = None,
    samples: int | None = None,
    seed: int = 0,
    shape_options: ShapeOptions | None = None,
    default_config: SessionConfig | None = None,
    options: BenchOptions | None = None,
    check: bool = True,
    progress: Progress | None = None,
    streams: int = 1,
) -> BenchReport:
    """Measure models (or model + config pairs) side by side, each in a fresh process, interleaved.

    `streams` > 1 keeps that many requests in flight on each session (throughput under concurrency)."""
    if streams < 1:
        raise UserError(f"--streams {streams}: give 1 or more requests in flight")
    parsed = [t for t in targets if isinstance(t, BenchTarget)]
    if len(parsed) != len(targets):
        parsed = parse_bench_targets([str(t) for t in targets])
    models: dict[str, Model] = {}
    feeds: dict[str, FeedSet] = {}
    variants = []
    for target in parsed:
        if target.model not in models:
            models[target.model] = open_model(target.model, check=check)
            feeds[target.model] = feeds_for(models[target.model], target.model, data, samples=samples, seed=seed, shape_options=shape_options)
        config = SessionConfig.load(target.config) if target.config else (default_config or SessionConfig())
        variants.append(Variant(_unique_label(target.label, variants), models[target.model], config, feeds[target.model], streams))
    report = _bench(variants, options, progress)
    if any(f.generated for f in feeds.values()):
        report.notes.append("inputs were generated (random): fine for speed, but say nothing about accuracy")
    return report


def optimize(
    reference: str | Path,
    output: str | Path,
    *,
    level: str = "all",
    providers: Sequence[str] = (),
    portable: bool = False,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    force: bool = False,
    measure: BenchOptions | None = None,
    transformer: dict | None = None,
    progress: Progress | None = None,
):  # -> optimize.OptimizeReport
    """Save the ORT-optimized model, stamped with what it is valid for, after checking its outputs.

    `transformer` (FusionOptions fields, e.g. {"model_type": "auto"}) fuses attention, LayerNorm, GELU,
    ... first, kept only when the fused model measures faster.
    """
    from .optimize import default_providers, optimize_model
    from .session import provider_name
    from .transforms.fusion import FusionOptions
    from .transforms.graph_opt import GraphOptOptions
    from .verify import DEFAULT_ATOL, DEFAULT_RTOL

    options = GraphOptOptions(level=level, providers=default_providers([provider_name(p) for p in providers]), portable=portable)
    model = open_model(reference)
    feeds = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    return optimize_model(
        model,
        feeds,
        output,
        options,
        rtol=DEFAULT_RTOL if rtol is None else rtol,
        atol=DEFAULT_ATOL if atol is None else atol,
        force=force,
        measure=measure,
        fusion=FusionOptions(**transformer) if transformer is not None else None,
        progress=progress,
    )


def quantize(
    reference: str | Path,
    output: str | Path,
    *,
    mode: str = "static",
    recipe: dict | None = None,
    weight_only: dict | None = None,
    calib: str | None = None,
    calib_samples: int | None = None,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    force: bool = False,
    auto_exclude: bool = True,
    measure: BenchOptions | None = None,
    progress: Progress | None = None,
):  # -> quantization.QuantizeReport
    """Quantize with one recipe or search recipes (`mode='auto'`).

    `recipe` holds QuantizeOptions fields (dynamic/static int8); `weight_only` WeightOnlyOptions fields
    (`mode='int4'` or `'weight-only'`).
    """
    from .accuracy import load_eval_hook, parse_tolerance
    from .inspection import inspect_model
    from .quantization import auto_recipes, quantize_model
    from .transforms.quantize import QuantizeOptions
    from .transforms.weight_only import WeightOnlyOptions

    model = open_model(reference)
    if calib is not None and data is not None:  # both given: the user split them already
        calibration = feeds_for(model, reference, calib, samples=calib_samples or 16, shape_options=shape_options)
        evaluation = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    else:
        calibration, evaluation = calibration_and_evaluation(model, reference, calib or data, calib_samples=calib_samples or 16,
                                                             samples=samples or 8, shape_options=shape_options)  # fmt: skip
    if mode == "auto":
        family = inspect_model(model, shape_options).family
        recipes = auto_recipes(family)
    elif mode in ("int4", "weight-only"):
        recipes = [WeightOnlyOptions(**({"bits": 4} if mode == "int4" else {}), **(weight_only or {}))]
    else:
        recipes = [QuantizeOptions(mode=mode, **(recipe or {}))]
    return quantize_model(
        model,
        output,
        recipes,
        calibration,
        evaluation,
        tolerances=[parse_tolerance(t) for t in tolerances] or None,
        hook=load_eval_hook(eval_hook) if eval_hook else None,
        force=force,
        auto_exclude=auto_exclude,
        measure=measure,
        progress=progress,
    )


def quantize_for_tensorrt(
    reference: str | Path,
    output: str | Path,
    *,
    method: str = "minmax",
    calib: str | None = None,
    calib_samples: int | None = None,
    shape_options: ShapeOptions | None = None,
):  # -> tensorrt_int8.TensorRTInt8
    """TensorRT int8: the model, ORT's TensorRT calibration table from ortforge's calibration, a session config."""
    from .tensorrt_int8 import write_tensorrt_int8

    model = open_model(reference)
    feeds = feeds_for(model, reference, calib, samples=calib_samples or 16, shape_options=shape_options)
    return write_tensorrt_int8(model, feeds, output, method)


def fp16(
    reference: str | Path,
    output: str | Path,
    *,
    keep_io_types: bool = True,
    block_ops: Sequence[str] = (),
    block_nodes: Sequence[str] = (),
    ep: str | None = None,
    auto: bool = False,
    rtol: float = 1e-2,
    atol: float = 1e-3,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    eval_hook: str | None = None,
    force: bool = False,
):  # -> mixed_precision.Fp16Report
    """fp16 (or, with `auto`, as many fp16 nodes as rtol/atol allow), judged on a local GPU EP, else by simulation on the CPU."""
    import time

    from .accuracy import load_eval_hook
    from .data import GENERATED_WARNING
    from .mixed_precision import Fp16Report, accuracy_of, convert_within, fp16_mac_share
    from .model import save_model
    from .runtime import GPU_PROVIDERS, available_providers
    from .session import provider_name
    from .transforms.fp16 import Fp16Options

    started = time.perf_counter()
    model = open_model(reference)
    feeds = feeds_for(model, reference, data, samples=samples or 4, shape_options=shape_options)
    gpu = [p for p in GPU_PROVIDERS if p in available_providers()]
    provider = provider_name(ep) if ep else (gpu[0] if gpu else "CPUExecutionProvider")
    options = Fp16Options(keep_io_types=keep_io_types, block_ops=tuple(block_ops), block_nodes=tuple(block_nodes), provider=provider)
    outcome = convert_within(model, feeds, options, rtol, atol, auto=auto, hook=load_eval_hook(eval_hook) if eval_hook else None, force=force,
                             subject=Path(output).name)  # fmt: skip
    share = fp16_mac_share(model, outcome.plan, feeds)
    saved = save_model(outcome.result.proto, output, source=model)
    notes = list(outcome.result.notes)
    if outcome.judged_by == "simulation":
        notes.append(f"judged by simulation: {provider} is not here to run fp16 for real (ORT's CPU EP has few fp16 kernels and computes "
                     "the rest in fp32 behind Casts, so CPU latency says nothing about fp16 speed)")  # fmt: skip
    if feeds.generated:
        notes.append(GENERATED_WARNING)
    if not outcome.within:
        notes.append("written despite fp16 outputs outside tolerance (--force)")
    return Fp16Report(
        output=str(saved),
        provider=provider,
        plan=outcome.result.details,
        accuracy=accuracy_of(outcome.reference, outcome.judged),
        judged_by=outcome.judged_by,
        within_tolerance=outcome.within,
        rtol=rtol,
        atol=atol,
        search=outcome.search,
        wall_s=time.perf_counter() - started,
        fp16_mac_share=share,
        notes=notes,
    )


def quant_debug(
    float_reference: str | Path,
    quantized_reference: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
):  # -> quant_debug.QuantDebugReport
    """Per-layer SQNR / relative error of a quantized model against its float original, worst first."""
    from .model import from_proto
    from .quant_debug import debug_quantization
    from .transforms.quantize import QuantizeOptions, prepare

    float_model = open_model(float_reference)
    quant_model = open_model(quantized_reference, check=False)
    feeds = feeds_for(float_model, float_reference, data, samples=samples or 4, shape_options=shape_options)
    as_given = debug_quantization(float_model, quant_model, feeds)
    if not as_given.unmatched:
        return as_given
    # Quantizers work on a pre-processed graph (fused, renamed nodes); compare against that if it matches better.
    prepared = debug_quantization(from_proto(prepare(float_model, QuantizeOptions(), [])), quant_model, feeds)
    if prepared.unmatched < as_given.unmatched:
        prepared.notes.append("compared with the pre-processed float graph the quantizer saw (node names as in that graph)")
        return prepared
    return as_given


def tune(
    reference: str | Path,
    output: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    calib_samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    tolerances: Sequence[str] = (),
    eval_hook: str | None = None,
    objective: str = "latency",
    time_budget_s: float = 300.0,
    providers: Sequence[str] = (),
    progress: Progress | None = None,
):  # -> tune.TuneReport
    """Search precision, fusion, EPs and session options under an accuracy budget; write the artifact folder."""
    from .accuracy import load_eval_hook, parse_tolerance
    from .errors import UserError
    from .inspection import inspect_model
    from .runtime import local_providers
    from .session import provider_name
    from .transforms.fusion import detect_transformer
    from .tune import tune_model
    from .tune.search import OBJECTIVES, TuneOptions

    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective}: choose one of {', '.join(OBJECTIVES)}")
    model = open_model(reference)
    calibration, evaluation = calibration_and_evaluation(model, reference, data, calib_samples=calib_samples or 16,
                                                         samples=samples or 8, shape_options=shape_options)  # fmt: skip
    local = local_providers()
    chosen = [provider_name(p) for p in providers] or local
    for name in chosen:
        if name not in local:
            raise UserError(f"--ep {name}: not available in this onnxruntime (available: {', '.join(local)})")
    family = inspect_model(model, shape_options).family
    transformer = detect_transformer(model).model_type != "unknown"
    options = TuneOptions(objective=objective, time_budget_s=time_budget_s, providers=tuple(chosen))
    return tune_model(
        model, str(reference), Path(output), calibration, evaluation, family=family, transformer=transformer, options=options,
        tolerances=[parse_tolerance(t) for t in tolerances] or None, hook=load_eval_hook(eval_hook) if eval_hook else None, progress=progress,
    )  # fmt: skip


def tune_session(
    reference: str | Path,
    output: str | Path,
    *,
    base: SessionConfig | None = None,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    options: BenchOptions | None = None,
    progress: Progress | None = None,
):  # -> (session_tuning.SessionTuning, Path of the written config)
    """Measure session options against ORT's defaults and write the consistent winner as a config JSON."""
    from .session_tuning import tune_session as _tune, write_config

    model = open_model(reference)
    feeds = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    tuning = _tune(model, feeds, base or SessionConfig(), options, progress)
    return tuning, write_config(tuning, output, model)


def run(
    reference: str | Path,
    *,
    data: str | None = None,
    samples: int | None = None,
    shape_options: ShapeOptions | None = None,
    original: str | None = None,
    reoptimize: bool = False,
):  # -> (loader.Loaded, FeedSet, outputs per sample)
    """Load a model the guarded way and run it on the feeds; returns what ran and its outputs."""
    from . import zoo
    from .loader import load_checked

    path = zoo.resolve_model_argument(str(reference))
    original_path = zoo.resolve_model_argument(original) if original else None
    loaded = load_checked(path, original=original_path, reoptimize=reoptimize)
    feeds = feeds_for(loaded.model, reference, data, samples=samples, shape_options=shape_options)
    names = [output.name for output in loaded.session.get_outputs()]
    outputs = [dict(zip(names, run_checked(loaded.session, feed, loaded.path.name, index))) for index, feed in enumerate(feeds.samples)]
    return loaded, feeds, outputs


def _unique_label(label: str, variants: list[Variant]) -> str:
    taken = {v.label for v in variants}
    if label not in taken:
        return label
    index = 2
    while f"{label} #{index}" in taken:
        index += 1
    return f"{label} #{index}"
