"""The search: build precision candidates and judge accuracy first, screen the accurate ones against
fp32, tune session options for the survivors only, then measure finalists interleaved in one run.

Each stage prunes before the next spends time; builds and accuracy checks are cached on disk, so an
interrupted run resumes without rebuilding. Timings are always re-measured: figures from another
moment on a shared machine are not comparable.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ortforge.core.deadline import Deadline, timed
from ortforge.core.errors import OptionError, UserError
from ortforge.core.files import atomic_write_text
from ortforge.core.options import option
from ortforge.core.progress import Progress, section
from ortforge.core.session import CPU, SessionConfig
from ortforge.measure.bench import BenchOptions, BenchReport
from ortforge.measure.compare import CandidateScore, score, startup_score, verdict_text, winner
from ortforge.measure.cost import MeasureCost
from ortforge.measure.generate import Generation
from ortforge.measure.memory import release_freed_memory
from ortforge.measure.placement import placement_for
from ortforge.searches.trial import Candidate, Trial
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.tuning.runner import Hold, MeasureTarget, TrialRunner, no_hold
from ortforge.tuning.schedule import Schedule, Stage
from ortforge.tuning.sessions import SessionCandidate, session_space

OBJECTIVES = ("latency", "throughput", "startup", "size", "decode", "prefill")
JOURNAL = "journal.json"
OBJECTIVE_TIMES = {"startup": "start-up time", "prefill": "prefill latency"}  # what a ratio is a ratio of, where not latency
SESSION_FINALISTS = 2  # session options carried into the final run after their own screen
RESCUE_SLACK = 0.05  # missed recipes this close in cosine to the most accurate compete for rescue on their speed
RESCUE_SCREEN_S = 1.0  # seconds of timed runs per recipe in that race
PERCENTILE_TRIES = 3  # the fastest missed recipes built again with percentile ranges before nodes go float
PERCENTILES = (99.999, 99.99)  # the clips tried, mildest first
# Beyond one percentile build of the fastest recipe, more clips and recipes are tried only while a build costs at most
# this share of the budget: magika builds in seconds, PP-OCR det in ~50 s, which its exclusion search needs more.
CHEAP_BUILD_SHARE = 0.05
EXCLUSION_BUDGET_SHARE = 0.6  # the exclusion search starts only while this share of the budget is left
BUILD_BUDGET_SHARE = 0.6  # builds start only while this share of the budget has not been spent
# The timed stages; max_seconds and the deadline are set when the schedule grants a stage its time.
SCREEN = BenchOptions(profile=False, block_seconds=0.1, min_rounds=4, warmup_seconds=0.25)
FINAL = BenchOptions(profile=True, profile_seconds=0.5, startup_rounds=3)
CONFIRM = BenchOptions(profile=True, profile_seconds=0.5, startup_rounds=5, min_rounds=20)


@dataclass(frozen=True)
class TuneOptions:
    """What tune optimizes for, how long it may take, and where it may run the model."""

    objective: str = option("latency", choices=OBJECTIVES, help="latency: one request's time; throughput: requests per second with "
                            "several in flight; startup: session creation; size: the smallest model not slower than fp32; decoders: "
                            "decode: time per generated token (see --generate), prefill: the prompt's run")  # fmt: skip
    generate: str = option("64,32", metavar="P,N", help="for --objective decode: each timed generation is a prefill of P prompt tokens, "
                           "then N tokens greedy with the KV cache carried")  # fmt: skip
    time_budget_s: float = option(300.0, flag="--time-budget", metavar="DURATION", help="e.g. 90s, 5m, 1h")
    providers: tuple[str, ...] = (CPU,)  # the first is the target: the baseline and every candidate run on it
    cpu_fallback_budget: float = 0.1  # an EP may leave at most this share of nodes to the CPU
    finalists: int = 3

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise OptionError("objective", self.objective, f"choose one of {', '.join(OBJECTIVES)}")
        if not (math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise OptionError("time_budget_s", self.time_budget_s, "must be a positive, finite number of seconds")
        Generation.parse(self.generate)  # a bad P,N is named before any work

    @property
    def base_session(self) -> SessionConfig:
        """ORT's defaults on the target EP (the first of `providers`, the CPU taking what it leaves): the baseline's
        session and the one every precision candidate is screened with."""
        return SessionConfig.on(self.providers[0])

    @property
    def generation(self) -> Generation | None:
        """What each timed run is for the decode objective (None for the others: single runs)."""
        return Generation.parse(self.generate) if self.objective == "decode" else None


@dataclass
class Finalist:
    label: str
    trial: Trial
    session: SessionCandidate
    score: CandidateScore | None = None

    @property
    def target(self) -> MeasureTarget:
        return MeasureTarget(self.label, self.trial, self.session.config, self.session.streams)

    @property
    def complexity(self) -> tuple[int, int]:
        """Its place in the simplicity order: the precision's rank first, then the session setting's."""
        return self.trial.candidate.complexity, self.session.complexity


@dataclass
class TuneResult:
    chosen: Finalist
    baseline: Finalist
    finalists: list[Finalist]
    trials: list[Trial]
    rejected: list[tuple[str, str]]  # (candidate, why)
    final: BenchReport
    screening: BenchReport | None
    why: str
    elapsed_s: float
    built: int
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    confirmation: BenchReport | None = None  # the winner, its runner-up and its ablations against the baseline; the artifact's figures
    ablation: list[Finalist] = field(default_factory=list)  # the variants of that run, each with its score


def _build_all(runner: TrialRunner, candidates: Sequence[Candidate], deadline: Deadline, keep_s: float,
               progress: Progress) -> tuple[list[Trial], list[Trial], list[tuple[str, str]]]:  # fmt: skip
    """Build and judge each candidate while the slowest build so far still fits before the share kept for measuring."""
    trials, accurate, rejected = [], [], []
    keep_s = max(keep_s, deadline.budget_s * (1 - BUILD_BUDGET_SHARE))
    prefetch = getattr(runner, "prefetch", None)
    if prefetch is not None:  # a cluster runner starts every build at once, on every free node; the loop below collects them
        prefetch([c for c in candidates if c.kind != "fp32"])
    for index, candidate in enumerate(candidates):
        if candidate.kind != "fp32" and not deadline.fits("build", keep_s):
            rejected.append((candidate.label, "skipped: time budget"))
            continue
        progress(f"building {candidate.label} ({index + 1}/{len(candidates)})", 0.05 + 0.35 * index / len(candidates))
        with timed(deadline if candidate.kind != "fp32" else None, "build"):
            trial = runner.build(candidate)
        trials.append(trial)
        (accurate.append(trial) if trial.passed else rejected.append((candidate.label, trial.why_not)))
    return trials, accurate, rejected


SMOOTH_ALPHA = 0.7  # SmoothQuant's migration for the dynamic recovery (MiniLM: 0.5 left pooled cosine at 0.974, 0.85 at 0.952-0.982)


def _recovered(recipe: QuantizeOptions) -> QuantizeOptions:
    """The recipe with accuracy recovery: equalization and bias correction for static int8, SmoothQuant for dynamic."""
    if recipe.mode == "static":
        return replace(recipe, equalize=True, bias_correction=True)
    return replace(recipe, smooth=SMOOTH_ALPHA)


def _recover(runner: TrialRunner, trials: list[Trial], accurate: list[Trial], rejected: list[tuple[str, str]], deadline: Deadline,
             keep_s: float, progress: Progress, notes: list[str]) -> None:  # fmt: skip
    """When no static int8 recipe met the tolerance, the most accurate static one is built again with accuracy recovery
    (`_recovered`), and so is every dynamic one when no dynamic recipe did (a passing dynamic recipe does not stand in
    for static int8, often twice as fast on CNNs); before any node is kept float. A note says what each changed."""
    missed = [t for t in trials if t.candidate.kind == "int8" and t.model is not None and not t.error and t not in accurate]
    if any(t.candidate.settings.get("equalize") or t.candidate.settings.get("smooth") for t in trials):
        return  # recovered once already
    passed = {t.candidate.settings.get("mode") for t in accurate if t.candidate.kind == "int8"}
    statics = [t for t in missed if t.candidate.settings.get("mode") == "static" and "static" not in passed]
    chosen = [t for t in missed if t.candidate.settings.get("mode") == "dynamic" and "dynamic" not in passed]
    chosen += [max(statics, key=lambda t: t.metrics.get("cosine", 0.0))] if statics else []
    for trial in chosen:
        recipe = trial.candidate.recipe
        assert isinstance(recipe, QuantizeOptions)
        candidate = Candidate.of_recipe(_recovered(recipe), trial.candidate.base)
        if not deadline.fits("build", keep_s):
            rejected.append((candidate.label, "skipped: time budget"))
            continue
        progress(f"accuracy recovery: {candidate.label}", 0.35)
        with timed(deadline, "build"):
            built = runner.build(candidate)
        trials.append(built)
        (accurate.append(built) if built.passed else rejected.append((candidate.label, built.why_not)))
        how = "activation equalization + bias correction" if recipe.mode == "static" else f"SmoothQuant, alpha {SMOOTH_ALPHA:g}"
        changed = ", ".join(f"{name} {trial.metrics[name]:.4g} -> {built.metrics[name]:.4g}" for name in ("cosine", "pooled_cosine", "top1", "agreement")
                            if name in trial.metrics and name in built.metrics)  # fmt: skip
        notes.append(f"accuracy recovery of {trial.label} ({how}): {changed or built.why_not}"
                     + ("; within tolerance" if built.passed else "; still outside tolerance"))


def _cosine(trial: Trial) -> float:
    return trial.metrics.get("cosine", 0.0)


def near_most_accurate(missed: list[Trial]) -> list[Trial]:
    """The missed recipes within RESCUE_SLACK cosine of the most accurate: the ones worth rescuing by keeping nodes float."""
    best = max(_cosine(t) for t in missed)
    return [t for t in missed if _cosine(t) >= best - RESCUE_SLACK]


def fastest_first(runner: TrialRunner, trials: list[Trial], progress: Progress, base: SessionConfig | None = None) -> list[Trial]:
    """A few missed recipes, fastest first, timed briefly with ORT's defaults: the one to rescue keeps the most speed once
    a few nodes go float. On PP-OCRv4 det the most accurate (Conv only, 0.987) ran at ~0.85x of fp32, every op of the
    folded graph (0.968) at 0.67x. Which one is faster cannot be read off the graph (ORT's fusions decide it)."""
    if len(trials) == 1:
        return list(trials)
    targets = [MeasureTarget(t.label, t, base or SessionConfig()) for t in trials]
    report = runner.measure(targets, replace(SCREEN, max_seconds=RESCUE_SCREEN_S), section(progress, "timing the recipes to rescue", 0.35, 0.36))
    return [trial for trial, _ in sorted(zip(trials, report.variants), key=lambda pair: pair[1].latency.p50)]


def _better_calibrated(runner: TrialRunner, trial: Trial, trials: list[Trial], rejected: list[tuple[str, str]], deadline: Deadline,
                       keep_s: float, progress: Progress, clips: Sequence[float] = PERCENTILES) -> Trial:  # fmt: skip
    """A minmax static recipe about to be rescued is built once more with percentile ranges (outliers clipped), at each
    of `clips` until one passes, and the most accurate build is searched: fewer nodes need to stay float (det: a
    leading part through heavy layer 16 of 64 instead of 26). Which clip suits a model shows only in its outputs: on
    magika's rewritten graph (Conv int8) 99.999 left the worst of tune's 32 judged samples at cosine 0.9896, 99.99 at
    0.9983; on PP-OCR det (every op, folded) 99.999 gave 0.9747, 99.99 0.9353 (bench/int8_recovery.py)."""
    recipe = trial.candidate.recipe
    if not isinstance(recipe, QuantizeOptions) or recipe.mode != "static" or recipe.calibration_method != "minmax":
        return trial
    best = trial
    for percentile in clips:
        if not deadline.fits("build", keep_s):
            break
        candidate = Candidate.of_recipe(replace(recipe, calibration_method="percentile", percentile=percentile), trial.candidate.base)
        progress(f"calibration choice: {candidate.label}", 0.35)
        with timed(deadline, "build"):
            built = runner.build(candidate)
        trials.append(built)
        if built.passed:
            return built
        rejected.append((candidate.label, built.why_not))
        best = built if built.model is not None and _cosine(built) > _cosine(best) else best
    return best


def _exclude(runner: TrialRunner, trials: list[Trial], accurate: list[Trial], rejected: list[tuple[str, str]], deadline: Deadline,
             keep_s: float, progress: Progress, base: SessionConfig | None = None) -> None:  # fmt: skip
    """When no int8 recipe of a mode met the tolerance, one missed recipe of that mode, static first (the fastest of the
    nearly most accurate: `near_most_accurate`, `fastest_first`), gets a small set of nodes kept in float (once, time
    allowing), after percentile ranges were tried on it and on the next fastest. An accurate dynamic recipe does not
    stand in for static int8: on magika static ran at 0.48x of fp32, dynamic at 0.96x."""
    missed = [t for t in trials if t.candidate.kind == "int8" and t.model is not None and not t.error and t not in accurate]
    passed = {t.candidate.settings.get("mode") for t in accurate if t.candidate.kind == "int8"}
    missed = [t for t in missed if t.candidate.settings.get("mode") not in passed]
    if not missed:
        return
    statics = [t for t in missed if t.candidate.settings.get("mode") == "static"]
    near = near_most_accurate(statics or missed)
    # The ranking and a first attempt, each about one build; later attempts stop at the deadline themselves.
    search_s = 3 * deadline.typical("build")
    if deadline.left < deadline.budget_s * EXCLUSION_BUDGET_SHARE or deadline.left - search_s < keep_s:
        rejected.append((f"{max(near, key=_cosine).candidate.label}, nodes kept float", "skipped: time budget"))
        return
    ranked = fastest_first(runner, near, progress, base)
    trial = ranked[0]
    # Percentile ranges, fastest recipe first, then the next fastest: recipes of about the same speed differ in what
    # clipping does for them (magika before its lookup rewrite, at 99.999: Conv+MatMul+Gemm 0.9971, Conv only 0.9896).
    cheap = deadline.typical("build") <= deadline.budget_s * CHEAP_BUILD_SHARE
    for attempt in ranked[: PERCENTILE_TRIES if cheap else 1]:
        better = _better_calibrated(runner, attempt, trials, rejected, deadline, keep_s, progress, PERCENTILES if cheap else PERCENTILES[:1])
        if better.passed:  # percentile ranges alone were enough
            accurate.append(better)
            return
        if attempt is ranked[0]:  # the fastest recipe's most accurate build is the one searched if no clip passes
            trial = better
    candidate = runner.exclusion(trial, section(progress, f"keeping nodes of {trial.label} in float", 0.35, 0.4), deadline=deadline, keep_s=keep_s)
    if candidate is None:
        rejected.append((f"{trial.candidate.label}, nodes kept float", "no set of nodes kept in float met the tolerance"))
        return
    built = runner.build(candidate)
    trials.append(built)
    (accurate.append(built) if built.passed else rejected.append((candidate.label, built.why_not)))


def _screen(runner: TrialRunner, accurate: list[Trial], options: TuneOptions, schedule: Schedule, progress: Progress) -> tuple[list[Trial], BenchReport | None, list[tuple[str, str]]]:
    """Time every accurate candidate against fp32 briefly; keep fp32 and the ones that beat it."""
    fp32, others = accurate[0], accurate[1:]
    if options.objective == "size":
        smallest = sorted(others, key=lambda t: t.size_bytes)[: options.finalists]
        return [fp32] + smallest, None, []
    if not others:
        return [fp32], None, []
    granted = schedule.grant("screening", len(accurate))
    if granted is None:  # no time to screen: the simplest candidates go to the final run unscreened
        kept = others[: options.finalists]
        return [fp32] + kept, None, [(t.candidate.label, "not screened: time budget") for t in others if t not in kept]
    targets = [MeasureTarget(t.candidate.label, t, options.base_session) for t in accurate]
    report = _measure(runner, schedule, targets, granted, section(progress, "screening precision candidates", 0.4, 0.6))
    scores = [score(result, report.variants[0]) for result in report.variants[1:]]
    ranked = sorted(zip(others, scores), key=lambda pair: pair[1].ratio)
    survivors = [trial for trial, s in ranked if s.ratio < 1.0][: options.finalists]
    dropped = [
        (trial.candidate.label, f"screening: {s.text()} of fp32, " + ("not faster" if s.ratio >= 1.0 else f"not among the {options.finalists} fastest"))
        for trial, s in ranked
        if trial not in survivors
    ]
    return [fp32] + survivors, report, dropped


def _allowed_sessions(trial: Trial, options: TuneOptions, notes: list[str]) -> list[SessionCandidate]:
    """Session candidates, dropping other EPs that would leave more than the budget of nodes to the CPU (the target's
    own EP is the baseline's: what it leaves to the CPU, the baseline leaves too)."""
    allowed, refused = [], {}
    for candidate in session_space(options.base_session, providers=options.providers, objective=options.objective):
        provider = candidate.config.provider_names[0]
        if provider not in (CPU, options.providers[0]) and trial.model is not None:
            if provider not in refused:
                placement = placement_for(trial.model, provider)
                share = len(placement.cpu_fallback) / max(placement.total, 1)
                too_much = placement.error or share > options.cpu_fallback_budget
                refused[provider] = (placement.error or f"leaves {share:.0%} of nodes to the CPU (budget {options.cpu_fallback_budget:.0%})") if too_much else ""
                if too_much:
                    notes.append(f"{trial.candidate.label} on {provider}: rejected, {refused[provider]}")
            if refused[provider]:
                continue
        allowed.append(candidate)
    return allowed


def _finalists(runner: TrialRunner, survivors: list[Trial], options: TuneOptions, schedule: Schedule, progress: Progress,
               notes: list[str], rejected: list[tuple[str, str]], hold: Hold = no_hold) -> list[Finalist]:  # fmt: skip
    """fp32 + ORT defaults first (the baseline); the fastest survivor (fp32 when nothing beat it in screening)
    with ORT defaults and the session options that beat its defaults in a short screen; the other survivors
    with ORT defaults only. Session options rarely reorder precisions, and every finalist is one more
    process (and copy of the model) in the final run."""
    fp32, others = survivors[0], survivors[1:]
    tuned = others[0] if others else fp32
    defaults = SessionCandidate("ORT defaults", options.base_session)
    baseline = Finalist(f"{fp32.candidate.label} | ORT defaults", fp32, defaults)
    with hold("EP placement checks"):
        allowed = _allowed_sessions(tuned, options, notes)
    sessions = _screen_sessions(runner, tuned, allowed[1:], options, schedule, progress, rejected)
    found = [baseline] + ([] if tuned is fp32 else [Finalist(f"{tuned.candidate.label} | ORT defaults", tuned, defaults)])
    found += [Finalist(f"{tuned.candidate.label} | {session.label}", tuned, session) for session in sessions]
    return found + [Finalist(f"{trial.candidate.label} | ORT defaults", trial, defaults) for trial in others[1:]]


def _screen_sessions(runner: TrialRunner, trial: Trial, sessions: list[SessionCandidate], options: TuneOptions, schedule: Schedule,
                     progress: Progress, rejected: list[tuple[str, str]]) -> list[SessionCandidate]:  # fmt: skip
    """The session candidates that beat ORT's defaults for this trial in a short interleaved screen, best first."""
    if len(sessions) <= SESSION_FINALISTS:
        return sessions
    targets = [MeasureTarget(f"{trial.candidate.label} | ORT defaults", trial, options.base_session)]
    targets += [MeasureTarget(f"{trial.candidate.label} | {s.label}", trial, s.config, s.streams) for s in sessions]
    granted = schedule.grant("session screening", len(targets))
    if granted is None:  # no time to screen them: the objective's own lever and thread counts (the usual win) go unscreened
        picked = sorted(sessions, key=lambda s: s.kind != ("streams" if options.objective == "throughput" else "threads"))[:SESSION_FINALISTS]
        rejected += [(f"{trial.candidate.label} | {s.label}", "not screened: time budget") for s in sessions if s not in picked]
        return picked
    report = _measure(runner, schedule, targets, granted, section(progress, "screening session options", 0.6, 0.65))
    ratios = [objective_score(result, report.variants[0], options.objective).ratio for result in report.variants[1:]]
    scored = sorted(zip(sessions, ratios), key=lambda pair: pair[1])
    kept = [session for session, ratio in scored if ratio < 1.0][:SESSION_FINALISTS]
    rejected += [(f"{trial.candidate.label} | {session.label}", f"session screening: {ratio:.2f}x its ORT defaults"
                  + ("" if ratio >= 1.0 else f", not among the {SESSION_FINALISTS} best")) for session, ratio in scored if session not in kept]  # fmt: skip
    return kept


def offline_variants(trial: Trial, notes: list[str], base: SessionConfig | None = None) -> list[Finalist]:
    """The fastest survivor saved after ORT's ALL-level optimizations for the EPs of `base` (the CPU by default):
    start-up without the optimization cost. Tied to this machine's ISA (or GPU) by its stamp, so it wins only where it
    measures better."""
    from ortforge.core.errors import UserError
    from ortforge.core.stamp import config_for, read_stamp
    from ortforge.transforms.graph_opt import GraphOptOptions, optimize_offline

    if trial.model is None:
        return []
    try:
        result = optimize_offline(trial.model, GraphOptOptions(level="all", providers=tuple((base or SessionConfig()).providers)))
    except UserError as exc:
        notes.append(f"offline optimization of {trial.candidate.label} failed: {exc}")
        return []
    offline = replace(trial, model=result.as_model(trial.model))
    target = (base or SessionConfig()).provider_names[0]
    where = "this CPU" if target == CPU else f"{target.replace('ExecutionProvider', '')} on this machine"
    session = SessionCandidate(f"offline, optimized at level all ({where})", config_for(read_stamp(result.proto)), kind="offline")
    return [Finalist(f"{trial.candidate.label} | {session.label}", offline, session)]


def objective_score(result, baseline, objective: str) -> CandidateScore:  # noqa: ANN001 - VariantResult
    """Start-up against start-up for the startup objective, time per run otherwise."""
    if objective == "startup":
        found = startup_score(result, baseline)
        if found is not None:
            return found
    return score(result, baseline)


def tune_search(runner: TrialRunner, candidates: Sequence[Candidate], options: TuneOptions, progress: Progress | None = None,
                journal: Path | None = None, deadline: Deadline | None = None, cost: MeasureCost | None = None,
                hold: Hold = no_hold) -> TuneResult:  # fmt: skip
    """Run the stages by the deadline (the time budget from `deadline.started`, now by default) and pick the
    consistent winner against fp32 + ORT defaults; `cost` is the first guess of what a measurement costs here; `hold`
    wraps the search's own computing (on a cluster it keeps that off timings on this host)."""
    shown = progress or (lambda what, fraction: None)
    best = ["fp32 with ORT defaults"]

    def report(what: str, fraction: float) -> None:
        shown(f"{what} | best so far: {best[0]}", fraction)

    deadline = deadline or Deadline(options.time_budget_s)
    cost = cost or MeasureCost()
    stages, notes = {}, []
    least = Schedule(deadline, cost, [Stage("final", 2, FINAL, 1.0, 0)])
    if least.minimum() > deadline.left:
        raise OptionError("time_budget_s", f"{options.time_budget_s:g}s", f"too short for even one timed comparison of this model here "
                          f"(fp32 against one candidate with its A/A pair needs about {least.minimum() + deadline.elapsed:.0f} s)",
                          hint=f"give at least {math.ceil(1.5 * (least.minimum() + deadline.elapsed))}s")  # fmt: skip
    keep_s = least.minimum()
    trials, accurate, rejected = _build_all(runner, candidates, deadline, keep_s, report)
    _recover(runner, trials, accurate, rejected, deadline, keep_s, report, notes)
    _exclude(runner, trials, accurate, rejected, deadline, keep_s, report, options.base_session)
    stages["build + accuracy"] = deadline.elapsed
    if not trials or trials[0].candidate.kind != "fp32":
        raise RuntimeError("the fp32 candidate must come first")
    if not trials[0].passed:  # every candidate is judged against the original, so the original must pass its own judge
        raise UserError(f"the original model fails its own accuracy gate, so no candidate can be judged: {trials[0].why_not}")
    release_freed_memory()  # the builds' freed memory would otherwise stay with this process through the timed runs
    schedule = _schedule(deadline, cost, len(accurate), options)
    schedule.fit()
    survivors, screening, dropped = _screen(runner, accurate, options, schedule, report)
    rejected += dropped
    if screening is not None and len(survivors) > 1:
        lead = next(v for v in screening.variants if v.label == survivors[1].candidate.label)
        best[0] = f"{survivors[1].candidate.label} ({score(lead, screening.variants[0]).ratio:.2f}x in screening)"
    stages["screening"] = deadline.elapsed - sum(stages.values())
    finalists = _finalists(runner, survivors, options, schedule, report, notes, rejected, hold)
    with hold("offline optimization"):
        finalists += offline_variants(survivors[1] if len(survivors) > 1 else survivors[0], notes, options.base_session)
    stages["session screening"] = deadline.elapsed - sum(stages.values())
    granted = schedule.grant("final", len(finalists))
    assert granted is not None  # the final run is never dropped
    final = _measure(runner, schedule, [f.target for f in finalists], granted, section(report, "final interleaved run", 0.6, 0.98))
    stages["final"] = deadline.elapsed - sum(stages.values())
    for finalist, result in zip(finalists, final.variants):
        finalist.score = objective_score(result, final.variants[0], options.objective)
    chosen, why = _choose(finalists, options, final.noise_floor)
    best[0] = f"{chosen.label} ({chosen.score.ratio:.2f}x)" if chosen.score else chosen.label
    confirmation, ablation = None, []
    if chosen is not finalists[0] and options.objective != "size":
        confirmed = _confirm(runner, chosen, finalists, options, schedule, section(report, "head-to-head confirmation", 0.98, 1.0))
        if confirmed is not None:
            chosen, why, confirmation, ablation = confirmed
        stages["confirmation"] = deadline.elapsed - sum(stages.values())
    notes += [f"{name}: skipped, the time budget left no room for it beside the final run"
              + ("; the figures are the final run's" if name == "confirmation" else "") for name in schedule.dropped
              if name != "confirmation" or chosen is not finalists[0]]  # fp32 chosen: nothing to confirm
    if journal is not None:
        atomic_write_text(journal, json.dumps({"chosen": chosen.label, "finalists": [f.label for f in finalists], "time": time.time()}))
    if deadline.elapsed > deadline.budget_s * 1.1:
        notes.append(f"took {deadline.elapsed:.0f} s of a {deadline.budget_s:.0f} s budget: a stage ran over its plan (a busy machine, "
                     "or a build slower than the ones before it)")  # fmt: skip
    result = TuneResult(chosen, finalists[0], finalists, trials, rejected, final, screening, why, deadline.elapsed, getattr(runner, "built", 0), notes, stages)
    result.confirmation, result.ablation = confirmation, ablation
    return result


def _schedule(deadline: Deadline, cost: MeasureCost, accurate: int, options: TuneOptions) -> Schedule:
    """The timed stages with their largest likely sizes, in the order they run."""
    startup = options.objective == "startup"
    sessions = len(session_space(options.base_session, providers=options.providers, objective=options.objective))  # ORT defaults among them
    others = min(options.finalists, accurate - 1)
    stages = []
    if accurate > 1 and options.objective != "size":
        stages.append(Stage("screening", accurate, SCREEN, 0.25, 3, high_s=4.0))
    if sessions - 1 > SESSION_FINALISTS:
        stages.append(Stage("session screening", sessions, replace(SCREEN, startup_rounds=3 if startup else 0), 0.1, 1, high_s=2.0))
    stages.append(Stage("final", 1 + others + SESSION_FINALISTS + 1, replace(FINAL, startup_rounds=8 if startup else 3), 0.8, 0))
    if options.objective != "size":
        stages.append(Stage("confirmation", 1 + 4, CONFIRM, 0.5, 2, high_s=8.0))
    return Schedule(deadline, cost, stages)


def _measure(runner: TrialRunner, schedule: Schedule, targets: list[MeasureTarget], options: BenchOptions, progress: Progress) -> BenchReport:
    """One granted measurement; what its phases cost refines the plan of the stages after it."""
    report = runner.measure(targets, options, progress)
    schedule.cost.learn(report, options)
    return report


def _confirm(runner: TrialRunner, chosen: Finalist, finalists: list[Finalist], options: TuneOptions, schedule: Schedule,
             progress: Progress) -> tuple[Finalist, str, BenchReport, list[Finalist]] | None:  # fmt: skip
    """Measure the winner, the runner-up and the winner without each of its components against the baseline,
    as they will run in deployment, in one interleaved run with its own noise floor.

    With a dozen processes interleaved, caches and memory bandwidth are shared in a way deployment does
    not share them, and a winner picked among many is the one noise favoured most. Every component must
    pay for itself: the winner's precision with ORT's defaults, and fp32 with the winner's session
    settings, run beside it, and the simplest variant within noise of the fastest ships. The figures
    written come from this run; if nothing beats the baseline beyond noise, the baseline ships.
    """
    others = [f for f in finalists[1:] if f is not chosen and f.score is not None and f.score.ratio < 1.0]
    picked = [chosen] + ([min(others, key=lambda f: f.score.ratio)] if others else [])  # type: ignore[union-attr]
    picked += [f for f in _ablations(chosen, finalists[0]) if f.label not in {c.label for c in picked}]
    # Copies: the finalists keep the figures of the final run, these get the figures of this one.
    baseline, contenders = replace(finalists[0], score=None), [replace(f, score=None) for f in picked]
    chosen = contenders[0]
    granted = schedule.grant("confirmation", 1 + len(contenders))
    if granted is None:
        return None
    report = _measure(runner, schedule, [baseline.target] + [c.target for c in contenders], granted, progress)
    noise = report.noise_floor
    for contender, result in zip(contenders, report.variants[1:]):
        contender.score = objective_score(result, report.variants[0], options.objective)
    baseline.score = objective_score(report.variants[0], report.variants[0], options.objective)
    found = winner([baseline.score, *[c.score for c in contenders]], noise, complexity=lambda s: _by_label(contenders, s.label).complexity)
    if found is None:
        return baseline, (f"{chosen.label} led the finalists but did not beat fp32 with ORT defaults beyond noise head to head: "
                          f"{verdict_text(chosen.score, noise, 'fp32 with ORT defaults')}; shipping fp32"), report, [baseline, *contenders]  # fmt: skip
    picked = _by_label(contenders, found.label)
    dropped = "" if picked is chosen else f"; the final run's leader {chosen.label} measured {chosen.score.text()} here"
    return picked, (f"{picked.label}: {_ratio_phrase(found.ratio, options.objective)} of fp32 with ORT defaults head to head "
                    f"[{found.low:.2f}-{found.high:.2f}], beyond the noise of ±{noise:.1%}, within tolerance{dropped}"), report, [baseline, *contenders]  # fmt: skip


def _ablations(chosen: Finalist, baseline: Finalist) -> list[Finalist]:
    """The chosen finalist without each of its components: its precision with ORT's defaults, fp32 with its session."""
    defaults = baseline.session
    found = []
    if chosen.session.kind != "defaults" and chosen.trial.candidate.kind != "fp32":
        found.append(Finalist(f"{chosen.trial.label} | {defaults.label}", chosen.trial, defaults))
    if chosen.trial.candidate.kind != "fp32" and chosen.session.kind not in ("defaults", "offline"):
        found.append(Finalist(f"{baseline.trial.label} | {chosen.session.label}", baseline.trial, chosen.session))
    return found


def _by_label(finalists: list[Finalist], label: str) -> Finalist:
    return next(f for f in finalists if f.label == label)


def _ratio_phrase(ratio: float, objective: str) -> str:
    """Scores are time ratios (lower is better) for every objective; say so in the objective's terms."""
    if objective == "throughput":
        return f"{ratio:.2f}x the time per request ({1 / ratio:.2f}x the throughput)"
    if objective == "decode":
        return f"{ratio:.2f}x the time per generated token ({1 / ratio:.2f}x the tokens/s)"
    return f"{ratio:.2f}x the {OBJECTIVE_TIMES.get(objective, 'latency')}"


def _choose(finalists: list[Finalist], options: TuneOptions, noise: float) -> tuple[Finalist, str]:
    """The simplest finalist within noise of the fastest that beats fp32 + ORT defaults beyond noise (for size, the smallest not slower)."""
    baseline = finalists[0]
    if options.objective == "size":
        not_slower = [f for f in finalists if f.score and f.score.low <= 1.0 + noise]
        smallest = min(not_slower or [baseline], key=lambda f: f.trial.size_bytes)
        return smallest, f"smallest within tolerance and not slower than fp32 beyond noise ({smallest.trial.size_bytes / 2**20:.1f} MiB)"
    found = winner([f.score for f in finalists], noise, complexity=lambda s: _by_label(finalists, s.label).complexity)  # type: ignore[misc]
    if found is None:
        return baseline, f"nothing beat fp32 with ORT defaults beyond the noise of ±{noise:.1%} on {options.objective}: shipping fp32"
    chosen = _by_label(finalists, found.label)
    return chosen, (f"{chosen.label}: {_ratio_phrase(found.ratio, options.objective)} of fp32 with ORT defaults "
                    f"[{found.low:.2f}-{found.high:.2f}], beyond the noise of ±{noise:.1%}, within tolerance")  # fmt: skip


def pareto_front(points: Sequence[tuple[str, float, float, float, float]]) -> list[str]:
    """Labels on the latency-vs-error front of (label, ratio, interval low, interval high, error) points: a point is off
    the front only when another is faster beyond both intervals (its high below this one's low) and no less accurate,
    or as fast within the intervals and more accurate. Within noise, speed does not rank points."""
    front = []
    for label, _, low, high, error in points:
        dominated = any((h2 < low and e2 <= error) or (l2 <= high and low <= h2 and e2 < error) for other, _, l2, h2, e2 in points if other != label)
        if not dominated:
            front.append(label)
    return front
