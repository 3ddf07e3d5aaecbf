"""`ortforge bench`: models (or model + session config pairs) side by side, each in a fresh process, interleaved.

A tune artifact folder, or a model ortforge stamped, runs with the session settings it was made for (as
`ortforge.load` opens it) unless a config file follows it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ortforge.commands.common import feeds_for, open_model
from ortforge.core.errors import OptionError, UserError
from ortforge.core.model import Model
from ortforge.core.progress import Progress
from ortforge.core.saved import open_saved
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet, ShapeOptions, input_specs
from ortforge.data.decoder_io import decoder_io
from ortforge.data.sources import validate_feed
from ortforge.measure.bench import BenchOptions, BenchReport, Variant
from ortforge.measure.bench import bench as measure_interleaved
from ortforge.measure.generate import Generation

CONFIG_SUFFIX = ".json"


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
    generate: str | None = None,
) -> BenchReport:
    """Measure models (or model + config pairs) side by side, each in a fresh process, interleaved.

    `streams` > 1 keeps that many requests in flight on each session (throughput under concurrency); `generate` 'P,N'
    times decoders generating: a prefill of P prompt tokens, then N tokens greedy with the KV cache carried."""
    if streams < 1:
        raise OptionError("streams", streams, "give 1 or more requests in flight")
    generation = Generation.parse(generate) if generate else None
    if generation is not None and streams > 1:
        raise OptionError("streams", streams, "generation is timed one request at a time (batch 1); drop --streams or --generate")
    parsed = [t for t in targets if isinstance(t, BenchTarget)]
    if len(parsed) != len(targets):
        parsed = parse_bench_targets([str(t) for t in targets])
    models: dict[str, tuple[Model, SessionConfig | None, FeedSet]] = {}
    feeds: FeedSet | None = None
    variants: list[Variant] = []
    notes: list[str] = []
    for target in parsed:
        if target.model not in models:
            model, own = _open_target(target.model, check)
            if generation is not None and decoder_io(model.proto.graph) is None:
                raise UserError(f"{target.model}: not a decoder with a KV cache (no past/present key-value inputs and outputs), so it "
                                "cannot be timed generating tokens", hint="drop --generate to time single runs")  # fmt: skip
            if feeds is None:  # one input set for every variant: ratios between different inputs mean nothing
                feeds = feeds_for(model, target.model, data, samples=samples, seed=seed, shape_options=shape_options)
                models[target.model] = (model, own, feeds)
            elif generation is not None and _input_problem(model, feeds) is not None:
                own_feeds = feeds_for(model, target.model, data, samples=samples, seed=seed, shape_options=shape_options)
                models[target.model] = (model, own, _same_prompt(own_feeds, model, feeds, models[parsed[0].model][0]))
                notes.append(f"{target.model} takes other inputs than {parsed[0].model}: it generated from the same prompt tokens, "
                             "its other inputs (cache, mask, positions) fed as its own")  # fmt: skip
            else:
                _require_same_inputs(model, feeds, parsed[0].model)
                models[target.model] = (model, own, feeds)
        model, own, model_feeds = models[target.model]
        config = _config_file(target.config) if target.config else (own or default_config or SessionConfig())
        variants.append(Variant(_unique_label(target.label, variants), model, config, model_feeds, streams, generation))
    assert feeds is not None
    report = measure_interleaved(variants, options, progress)
    report.notes.extend(notes)
    if feeds.generated:
        report.notes.append("inputs were generated (random): fine for speed, but say nothing about accuracy")
    return report


def _config_file(path: str) -> SessionConfig:
    """A session config file (or a tune artifact's ortforge.json: its session config), checked before any measuring:
    a missing EP is named with the file that asks for it."""
    from ortforge.tuning.artifact import CONFIG_FILE, is_artifact, read_artifact

    file = Path(path)
    config = read_artifact(file.parent)[1] if file.name == CONFIG_FILE and is_artifact(file.parent) else SessionConfig.load(path)
    try:
        config.check_providers()
    except UserError as exc:
        raise UserError(f"{path}: {exc}", exc.hint) from None
    return config


def _open_target(reference: str, check: bool) -> tuple[Model, SessionConfig | None]:
    """The model, and the session config it is meant to run with when it is an artifact folder or stamped (else None)."""
    from ortforge.tuning.artifact import is_artifact, read_artifact

    if reference.startswith("zoo:"):
        return open_model(reference, check=check), None
    path, base = Path(reference), None
    if is_artifact(path):
        path, base, _ = read_artifact(path)
    if not check:
        return open_model(path, check=False), base
    opened = open_saved(path, base)
    opened.require_fit()
    return opened.model, (opened.config if opened.stamp is not None or base is not None else None)


def _input_problem(model: Model, feeds: FeedSet) -> UserError | None:
    """Why the model cannot take the feeds as they are (names, types and shapes), or None."""
    specs = input_specs(model)
    for index, sample in enumerate(feeds.samples):
        try:
            validate_feed(sample, specs, "inputs", f"{feeds.origin} (sample {index})")
        except UserError as exc:
            return exc
    return None


def _same_prompt(own: FeedSet, model: Model, feeds: FeedSet, first: Model) -> FeedSet:
    """A decoder whose inputs differ from the first's (a builder export has no position_ids, a TorchScript export has)
    generates from the same prompt: its own feeds, with the first's token ids. Generation feeds the rest itself."""
    tokens, first_tokens = decoder_io(model.proto.graph).tokens, decoder_io(first.proto.graph).tokens
    return replace(own, samples=[{**sample, tokens: given[first_tokens]} for sample, given in zip(own.samples, feeds.samples)])


def _require_same_inputs(model: Model, feeds: FeedSet, first: str) -> None:
    """Refuse, in one line, a model that cannot take the inputs the first model is measured on."""
    problem = _input_problem(model, feeds)
    if problem is not None:
        raise UserError(f"{model.name}: cannot be measured on the inputs of {first}, every variant of one bench runs on the same inputs: "
                        f"{problem}", hint="bench models that take the same inputs together, or give shapes/data that fit both")


def _unique_label(label: str, variants: list[Variant]) -> str:
    taken = {v.label for v in variants}
    if label not in taken:
        return label
    index = 2
    while f"{label} #{index}" in taken:
        index += 1
    return f"{label} #{index}"
