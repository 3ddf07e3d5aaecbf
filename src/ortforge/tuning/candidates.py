"""What `tune` tries: precision candidates (built, then judged for accuracy) and session candidates (timed)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from ortforge.core.machine import cpu_info
from ortforge.core.runtime import GPU_PROVIDERS, REMOTE_PROVIDERS
from ortforge.core.session import CPU, SPINNING, SessionConfig
from ortforge.searches.recipes import auto_recipes
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.transforms.weight_only import WeightOnlyOptions

# The mixed-precision candidate searches within fp16's usual elementwise bound; tune's own tolerance judges the result.
MIXED_RTOL, MIXED_ATOL = 1e-2, 1e-3



@dataclass(frozen=True)
class PrecisionCandidate:
    """One way to rewrite the model: fp32 as is, transformer fusion, int8, weight-only int4/int8, fp16."""

    label: str
    kind: str  # fp32 | fusion | int8 | weight-only | fp16
    options: tuple[tuple[str, object], ...] = ()

    @property
    def settings(self) -> dict:
        return dict(self.options)

    def key(self, model_hash: str, data_hash: str) -> str:
        """Cache key: the same model, transform, options and calibration data build the same candidate."""
        uses_data = self.kind == "int8" or self.settings.get("auto")  # calibration, or the mixed-precision search
        text = json.dumps([model_hash, self.kind, self.options, data_hash if uses_data else ""], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def frozen_options(options: object) -> tuple[tuple[str, object], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in asdict(options).items()))


def precision_candidates(family: str, providers: list[str], transformer: bool, features: tuple[str, ...] | None = None) -> list[PrecisionCandidate]:
    """fp32 first, then what suits the family and the hardware."""
    found = [PrecisionCandidate("fp32", "fp32")]
    if transformer:
        found.append(PrecisionCandidate("fp32 + transformer fusion", "fusion", (("model_type", "auto"),)))
    for recipe in auto_recipes(family, features):
        kind = "weight-only" if isinstance(recipe, WeightOnlyOptions) else "int8"
        found.append(PrecisionCandidate(recipe.describe(), kind, frozen_options(recipe)))
    gpu = [p for p in providers if p in GPU_PROVIDERS]
    if gpu:  # fp16 pays only where an EP has fp16 kernels; ORT's CPU EP computes most fp16 ops in fp32
        name = gpu[0].replace("ExecutionProvider", "")
        found.append(PrecisionCandidate(f"fp16 for {name}", "fp16", (("provider", gpu[0]),)))
        found.append(PrecisionCandidate(f"mixed fp16 for {name} (searched within rtol {MIXED_RTOL:g}, atol {MIXED_ATOL:g})", "fp16",
                                        (("auto", True), ("provider", gpu[0]))))  # fmt: skip
    return found


def recipe_of(candidate: PrecisionCandidate) -> QuantizeOptions | WeightOnlyOptions | None:
    settings = candidate.settings
    if candidate.kind == "int8":
        return QuantizeOptions(**settings)
    if candidate.kind == "weight-only":
        return WeightOnlyOptions(**settings)
    return None


@dataclass(frozen=True)
class SessionCandidate:
    label: str
    config: SessionConfig = field(default_factory=SessionConfig)
    streams: int = 1  # requests in flight at once: a serving choice, measured for the throughput objective


def session_candidates(providers: list[str], cores: int | None = None, objective: str = "latency") -> list[SessionCandidate]:
    """ORT defaults, each thread count, spinning off, parallel mode, a lower graph level, and every other local EP
    with the CPU as fallback; for throughput, also several requests in flight sharing the cores."""
    cores = cores or cpu_info().physical_cores or 1
    base = SessionConfig()
    found = [SessionCandidate("ORT defaults", base)]
    for threads in range(1, cores + 1):
        found.append(SessionCandidate(f"{threads} intra-op thread(s)", replace(base, intra_op_num_threads=threads)))
    if cores > 1:
        found.append(SessionCandidate("no spinning", replace(base, config_entries={SPINNING: "0"})))
        found.append(SessionCandidate("parallel execution", replace(base, execution_mode="parallel", inter_op_num_threads=2)))
    # Graph levels below ALL: layout (NCHWc) rewrites occasionally slow a model down, and lower levels start faster.
    for level in ("basic", "extended") if objective == "startup" else ("extended",):
        found.append(SessionCandidate(f"graph level {level}", replace(base, graph_optimization_level=level)))
    if objective == "throughput":
        for streams in sorted({2, cores} - {1}):
            if streams <= cores:
                threads = cores // streams
                found.append(SessionCandidate(f"{streams} requests in flight x {threads} intra-op thread(s)",
                                              replace(base, intra_op_num_threads=threads), streams))  # fmt: skip
    for provider in providers:
        if provider not in REMOTE_PROVIDERS and provider != CPU:
            found.append(SessionCandidate(provider.replace("ExecutionProvider", ""), SessionConfig.on(provider)))
    return found
