"""What a tune artifact records: the choice, the figures with their spreads, the plot and table inputs for the report."""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import PurePath
from typing import Any

from ortforge.accuracy.metrics import RATES, rate_evidence
from ortforge.accuracy.tolerance import Tolerance
from ortforge.core.model import Model, model_size
from ortforge.core.session import CPU
from ortforge.data import GENERATED_WARNING, FeedSet
from ortforge.measure.bench import BenchReport
from ortforge.measure.compare import beats
from ortforge.tuning.search import Finalist, TuneResult, pareto_front


def _error_metric(tolerances: list[Tolerance]) -> tuple[str, Any, float | None]:
    """The axis for the latency-vs-accuracy plot (1 - cosine unless the user's tolerance names another metric), and the
    bound the gate puts on it (None when the gate does not bound it)."""
    named = next((t for t in tolerances if t.metric != "cosine"), None)
    if named is None or named.metric in ("top1",):
        cosine = next((t for t in tolerances if t.metric == "cosine"), None)
        return "1 - cosine", lambda m: max(0.0, 1.0 - m.get("cosine", 1.0)), (1.0 - cosine.value if cosine else None)
    if named.higher_is_better:
        return f"1 - {named.metric}", lambda m: max(0.0, 1.0 - m.get(named.metric, 1.0)), 1.0 - named.value
    return named.metric, lambda m: m.get(named.metric, 0.0), named.value


def artifact_record(model: Model, reference_name: str, result: TuneResult, tolerances: list[Tolerance], feeds: FeedSet, command: str,
            objective: str = "latency") -> dict[str, Any]:  # fmt: skip
    chosen, baseline = result.chosen, result.baseline
    runs = {v.label: v for v in result.final.variants}
    if result.confirmation is not None:
        runs.update({v.label: v for v in result.confirmation.variants})  # head-to-head figures win
    chosen_run, baseline_run = runs[chosen.label], runs[baseline.label]
    decisive = result.confirmation or result.final  # the run the choice was made in: its figures are shown together
    compared = result.ablation or result.finalists
    error_label, error_of, error_bound = _error_metric(tolerances)
    points = [(f.label, *_interval(f), error_of(f.trial.metrics)) for f in compared]
    front = pareto_front(points)
    ratio = chosen.score or baseline.score
    startup = (chosen_run.startup.p50 if chosen_run.startup else chosen_run.create_s * 1e3, baseline_run.startup.p50 if baseline_run.startup else baseline_run.create_s * 1e3)
    streams = chosen.session.streams
    serving = [] if streams == 1 else [f"serve with {streams} requests in flight (threads calling run on this one session): "
                                       "the figures were measured that way and are time per request, not one request's latency"]  # fmt: skip
    line = roofline_record(model, feeds, result)
    return {
        "model_name": portable(reference_name),
        "objective": objective,
        "requests_in_flight": streams,
        "chosen": {"label": chosen.label, "precision": chosen.trial.candidate.label, "session": chosen.session.label},
        "why": result.why,
        "tolerances": [t.describe() for t in tolerances],
        "figures": {
            "latency_ms": {"chosen": _stats(chosen_run.latency), "baseline": _stats(baseline_run.latency)},
            "latency_ratio": ({"median": ratio.ratio, "low": ratio.low, "high": ratio.high, "confidence": 0.95, "spread": [ratio.estimate.spread_low,
                              ratio.estimate.spread_high], "rounds": ratio.estimate.rounds, "rounds_won": ratio.wins} if ratio else None),
            "noise": {"floor": decisive.noise_floor, "aa_pair": asdict(decisive.noise) if decisive.noise else None,
                      "run": "head to head" if result.confirmation else "final"},
            "machine_load": asdict(decisive.load) if decisive.load else None,
            "accuracy": chosen.trial.metrics,
            "size_bytes": {"chosen": chosen.trial.size_bytes, "original": model_size(model)},
            "startup_ms": {"chosen": startup[0], "baseline": startup[1]},
            # Each process's own peak (Python and ORT included, so similar for small models), and what its session added.
            "peak_rss_bytes": {"chosen": chosen_run.peak_rss, "baseline": baseline_run.peak_rss},
            "session_rss_bytes": {"chosen": chosen_run.session_rss, "baseline": baseline_run.session_rss},
            "throughput_per_s": {"chosen": chosen_run.throughput, "baseline": baseline_run.throughput, "batch": chosen_run.batch},
            # Timed generating (the decode objective): latency is per generated token, throughput tokens/s.
            **({"generation": chosen_run.generation, "prefill_ms": {"chosen": _stats(chosen_run.prefill), "baseline": _stats(baseline_run.prefill)}}
               if chosen_run.generation and chosen_run.prefill and baseline_run.prefill else {}),
        },
        "summary": {
            "speedup": f"{ratio.ratio:.2f}x [{ratio.low:.2f}-{ratio.high:.2f}]" if ratio else "1.00x",
            "noise": f"±{decisive.noise_floor:.1%}" + (" (busy machine)" if decisive.load and decisive.load.busy else ""),
            "accuracy": ", ".join(f"{k} {v:.4g}" for k, v in chosen.trial.metrics.items() if k in ("cosine", "top1", "max_abs")),
            "evidence": accuracy_evidence(chosen.trial.metrics, len(feeds)),
            "machine": decisive.load.describe() if decisive.load else "machine load not sampled",
            "size": f"{chosen.trial.size_bytes / 2**20:.1f} MiB (was {model_size(model) / 2**20:.1f})",
            "startup": f"{startup[0]:.1f} ms (was {startup[1]:.1f})",
            "throughput": f"{chosen_run.throughput:.1f}/s (was {baseline_run.throughput:.1f})",
            **({"roofline": f"{line['chosen']['text']}; fp32 with ORT defaults: {line['baseline']['achieved_gflops']:.1f} GFLOP/s"} if line else {}),
        },
        "roofline": line,
        # (label, ratio, interval low, high, error, role), numbered in the report as the rows of the table they come from
        "points": [(label, x, low, high, y, "chosen" if label == chosen.label else "baseline" if label == baseline.label else "other")
                   for label, x, low, high, y in points],  # fmt: skip
        "points_from": "ablation" if result.ablation else "finalists",
        "error_bound": error_bound,
        "points_run": "head-to-head confirmation" if result.confirmation else "final interleaved run",
        "front": front,
        "error_label": error_label,
        "finalist_rows": [[f.label, _p50(f), f.score.text() if f.score else "-", f"{f.score.wins:.0%}" if f.score else "-", f"{error_of(f.trial.metrics):.3g}"]
                          for f in result.finalists],  # fmt: skip
        "ablation_rows": [[f.label, _p50(f), f.score.text() if f.score else "-", _verdict(f, baseline, decisive.noise_floor),
                           f"{error_of(f.trial.metrics):.3g}", "yes" if f.label in front else "", "chosen" if f.label == chosen.label else ""]
                          for f in result.ablation],  # fmt: skip
        "ops": _op_rows(baseline_run, chosen_run),
        "placement_rows": [[v.label, ", ".join(f"{p.replace('ExecutionProvider', '')} {n}" for p, n in v.placement.counts.items()) if v.placement else "-",
                            str(len(v.placement.cpu_fallback)) if v.placement else "-"] for v in result.final.variants],  # fmt: skip
        "rejected": [[label, why] for label, why in result.rejected],
        "candidates": [{"label": t.candidate.label, "metrics": t.metrics, "error": t.error, "cached": t.cached, "size_bytes": t.size_bytes} for t in result.trials],
        "stages_s": result.stages,
        "elapsed_s": result.elapsed_s,
        "built": result.built,
        "inputs": {**feeds.to_dict(), "origin": portable(feeds.origin)},
        "notes": ([GENERATED_WARNING] if feeds.generated else []) + serving + _load_notes(decisive) + result.notes,
        "commands": [portable(command)],
    }


ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\][^\s,;()'\"]+")


def roofline_record(model: Model, feeds: FeedSet, result: TuneResult) -> dict[str, Any] | None:
    """The shipped model's and fp32's achieved GFLOP/s against this machine's CPU GEMM peaks (MACs counted on the original
    for the evaluation shapes, the latencies of the run the choice was made in); None when the MACs cannot be counted or
    either ran on another EP."""
    from ortforge.analysis.macs import count_macs
    from ortforge.core.errors import UserError
    from ortforge.measure.roofline import machine_peaks, roofline

    runs = {v.label: v for v in result.final.variants}
    if result.confirmation is not None:
        runs.update({v.label: v for v in result.confirmation.variants})
    if any(v.generation for v in runs.values()):
        return None  # timed per generated token: the MACs counted are the prompt's, not one step's
    if any(f.session.config.provider_names[0] != CPU for f in (result.chosen, result.baseline)):
        return None  # the peaks are the CPU's GEMM rates: a GPU's run measured against them says nothing
    sample = feeds.samples[0] if feeds.samples else None
    if sample is None or any(not hasattr(value, "shape") for value in sample.values()):
        return None
    try:
        macs = count_macs(model, {name: tuple(value.shape) for name, value in sample.items()}, feeds=sample).total_macs
    except UserError:
        return None
    peaks = machine_peaks()
    found = {role: roofline(macs, runs[finalist.label].latency.p50, peaks) for role, finalist in (("chosen", result.chosen), ("baseline", result.baseline))}
    if found["chosen"] is None or found["baseline"] is None:
        return None
    return {role: line.to_dict() for role, line in found.items() if line is not None}


def portable(text: str) -> str:
    """`text` with each absolute local path cut to its last part: a record travels to other machines and people."""
    return ABSOLUTE_PATH.sub(lambda match: PurePath(match.group()).name or match.group(), text)


def accuracy_evidence(metrics: dict[str, float], samples: int) -> str:
    """What "still right" rests on: the sample count, each rate with its count and bound, the worst sample's cosine."""
    parts = [rate_evidence(metric, int(metrics[f"{metric}_changed"]), int(metrics[f"{metric}_total"])) for metric in RATES
             if f"{metric}_total" in metrics]  # fmt: skip
    parts += [f"{name} {metrics[name]:.6g} (worst sample)" for name in ("cosine", "pooled_cosine") if name in metrics]
    return f"judged on {samples} evaluation sample(s): " + "; ".join(parts) if parts else f"judged on {samples} evaluation sample(s)"


def _load_notes(run: BenchReport) -> list[str]:
    """A figure taken on a busy machine says so beside it, with the width of that run's noise."""
    if run.load is None or not run.load.busy:
        return []
    return [f"{run.load.describe()}; the choice was made against a noise floor of ±{run.noise_floor:.1%}: on a quiet machine the figures "
            "are tighter and may differ"]  # fmt: skip


def _p50(finalist: Finalist) -> str:
    """The absolute figure beside the ratio: the median time per run in that run."""
    return f"{finalist.score.p50_ms:.3g} ms" if finalist.score else "-"


def _interval(finalist: Finalist) -> tuple[float, float, float]:
    score = finalist.score
    return (score.ratio, score.low, score.high) if score else (1.0, 1.0, 1.0)


def _verdict(finalist: Finalist, baseline: Finalist, noise: float) -> str:
    if finalist.score is None or finalist.label == baseline.label:
        return "baseline"
    return "faster beyond noise" if beats(finalist.score, noise) else "within noise" if finalist.score.low <= 1 + noise else "slower"


def _stats(latency) -> dict:  # noqa: ANN001 - LatencyStats
    return {"p50": latency.p50, "p90": latency.p90, "p99": latency.p99, "min": latency.min, "max": latency.max, "round_p50_spread": list(latency.spread)}


def _op_rows(before, after) -> dict:  # noqa: ANN001 - VariantResult
    if not (before.profile and after.profile):
        return {"labels": [], "before": [], "after": []}
    old = {item.op_type: item.total_us / 1e3 for item in before.profile.by_op_type}
    new = {item.op_type: item.total_us / 1e3 for item in after.profile.by_op_type}
    labels = sorted(set(old) | set(new), key=lambda op: -max(old.get(op, 0), new.get(op, 0)))[:12]
    return {"labels": labels, "before": [old.get(op, 0.0) for op in labels], "after": [new.get(op, 0.0) for op in labels]}
