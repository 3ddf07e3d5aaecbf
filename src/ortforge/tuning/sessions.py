"""The one session-option space: every knob `tune` and `tune-session` may try, each one change from a base config.

Both commands draw from `session_space`; they differ only in which kinds of change they take
(`TUNE_KINDS`, `TUNE_SESSION_KINDS`) and the objective, which adds or drops kinds (requests in flight
only for throughput, the basic graph level only for start-up).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

from ortforge.core.machine import cpu_info
from ortforge.core.runtime import REMOTE_PROVIDERS
from ortforge.core.session import CPU, SPINNING, SessionConfig

AFFINITY = "session.intra_op_thread_affinities"
# Flush-to-zero and denormals-are-zero on ORT's pool threads: x86 cores take microcode assists on denormal floats, which
# masked softmax and small activations produce. MiniLM's dynamic int8 model ran 0.59x of its own time with it.
DENORMALS = "session.set_denormal_as_zero"
# Documented provider options worth a try, per EP (only EPs the base config already uses are tried).
EP_OPTION_CANDIDATES: dict[str, list[dict[str, str]]] = {
    # EXHAUSTIVE is ORT's default; NHWC convolutions suit tensor cores (ORT's CUDA EP transposes around them).
    "CUDAExecutionProvider": [{"cudnn_conv_algo_search": "HEURISTIC"}, {"prefer_nhwc": "1"}],
    "TensorrtExecutionProvider": [{"trt_fp16_enable": "False"}, {"trt_builder_optimization_level": "5"}],
    "OpenVINOExecutionProvider": [{"num_of_threads": "1"}, {"precision": "ACCURACY"}],
    "DnnlExecutionProvider": [{"use_arena": "0"}],
}
KINDS = ("defaults", "threads", "spinning", "affinity", "execution", "level", "memory", "denormals", "ep-option", "ep", "streams", "offline")
# The simplicity order of session settings: ORT's defaults < session options < graph level / offline < another EP.
SESSION_RANKS = {"defaults": 0, "threads": 1, "spinning": 1, "affinity": 1, "execution": 1, "memory": 1, "denormals": 1, "ep-option": 1,
                 "streams": 1, "level": 2, "offline": 2, "ep": 3}  # fmt: skip
# tune screens few session options per precision (each is a process in its final run); tune-session tries more kinds.
# Denormals flushed to zero change outputs (values below 1.2e-38 become 0): the artifact's reopen check judges them.
TUNE_KINDS = frozenset({"defaults", "threads", "spinning", "execution", "level", "denormals", "ep-option", "ep", "streams"})
# Kinds that tune how the CPU EP computes: on a GPU EP's session the CPU runs only what the GPU EP leaves.
CPU_KINDS = frozenset({"threads", "spinning", "affinity", "execution", "denormals", "memory"})
TUNE_SESSION_KINDS = frozenset({"defaults", "threads", "spinning", "affinity", "execution", "memory", "denormals", "ep-option"})


@dataclass(frozen=True)
class SessionCandidate:
    """One session setting to measure: a config, how many requests it serves at once, and what kind of change it is."""

    label: str
    config: SessionConfig = field(default_factory=SessionConfig)
    streams: int = 1  # requests in flight at once: a serving choice, measured for the throughput objective
    kind: str = "defaults"

    @property
    def complexity(self) -> int:
        """Rank in the simplicity order of session settings (`SESSION_RANKS`)."""
        return SESSION_RANKS[self.kind]


def _with_entries(config: SessionConfig, **entries: str) -> SessionConfig:
    return replace(config, config_entries={**config.config_entries, **entries})


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... and the core count: each count once (a 16-core machine gets 5 counts, not 16, and with a spinning
    and a pinned variant each, a ladder keeps the session screen short)."""
    return sorted({2**k for k in range(cores.bit_length())} | {cores})


def _thread_candidates(base: SessionConfig, cores: int) -> list[SessionCandidate]:
    found = []
    for threads in thread_counts(cores):
        threaded = replace(base, intra_op_num_threads=threads)
        found.append(SessionCandidate(f"{threads} intra-op thread(s)", threaded, kind="threads"))
        if threads > 1:
            found.append(SessionCandidate(f"{threads} intra-op thread(s), no spinning", _with_entries(threaded, **{SPINNING: "0"}), kind="spinning"))
            # Once the count is explicit ORT sets no affinity; pin thread i to logical processor i+1 as its default does.
            pinned = ";".join(str(processor) for processor in range(2, threads + 1))
            found.append(SessionCandidate(f"{threads} intra-op thread(s), pinned", _with_entries(threaded, **{AFFINITY: pinned}), kind="affinity"))
    return found


def _ep_candidates(base: SessionConfig, providers: Sequence[str]) -> list[SessionCandidate]:
    """Documented options of the EPs the base uses, and every other local EP with the CPU as fallback."""
    found = []
    for index, provider in enumerate(base.providers):
        for options in EP_OPTION_CANDIDATES.get(provider.name, []):
            chosen = list(base.providers)
            chosen[index] = replace(provider, options={**provider.options, **options})
            label = ", ".join(f"{k}={v}" for k, v in options.items())
            found.append(SessionCandidate(f"{provider.name.replace('ExecutionProvider', '')} {label}", replace(base, providers=chosen), kind="ep-option"))
    for provider in providers:
        if provider not in REMOTE_PROVIDERS and provider != CPU and provider not in base.provider_names:
            found.append(SessionCandidate(provider.replace("ExecutionProvider", ""), SessionConfig.on(provider), kind="ep"))
    return found


def session_space(
    base: SessionConfig | None = None,
    providers: Sequence[str] = (),
    *,
    objective: str = "latency",
    kinds: Collection[str] = TUNE_KINDS,
    cores: int | None = None,
) -> list[SessionCandidate]:
    """ORT's defaults (the base) first, then one change at a time from it, of the given kinds (on a base whose first EP
    is not the CPU's, none of the kinds that tune the CPU EP: `CPU_KINDS`)."""
    base = base or SessionConfig()
    cores = cores or cpu_info().physical_cores or os.cpu_count() or 1
    found = [SessionCandidate("ORT defaults", base)]
    found += _thread_candidates(base, cores)
    found.append(SessionCandidate("no spinning", _with_entries(base, **{SPINNING: "0"}), kind="spinning"))
    if cores > 1:
        found.append(SessionCandidate("parallel execution, 2 inter-op threads", replace(base, execution_mode="parallel", inter_op_num_threads=2),
                                      kind="execution"))  # fmt: skip
    # Graph levels below ALL: layout (NCHWc) rewrites occasionally slow a model down, and lower levels start faster.
    for level in ("basic", "extended") if objective == "startup" else ("extended",):
        found.append(SessionCandidate(f"graph level {level}", replace(base, graph_optimization_level=level), kind="level"))
    found.append(SessionCandidate("denormals as zero", _with_entries(base, **{DENORMALS: "1"}), kind="denormals"))
    found.append(SessionCandidate("no memory pattern", replace(base, enable_mem_pattern=False), kind="memory"))
    found.append(SessionCandidate("no CPU memory arena", replace(base, enable_cpu_mem_arena=False), kind="memory"))
    if objective == "throughput":
        for streams in sorted({2, cores} - {1}):
            if streams <= cores:
                threads = cores // streams
                found.append(SessionCandidate(f"{streams} requests in flight x {threads} intra-op thread(s)",
                                              replace(base, intra_op_num_threads=threads), streams, kind="streams"))  # fmt: skip
    found += _ep_candidates(base, providers)
    if base.provider_names[0] != CPU:
        kinds = set(kinds) - CPU_KINDS
    return [candidate for candidate in found if candidate.kind in kinds]
