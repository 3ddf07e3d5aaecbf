"""`ortforge fp16`: fp16 that never silently breaks a model, judged on a local GPU EP, else by simulation on the CPU."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ortforge.accuracy.hooks import load_eval_hook
from ortforge.accuracy.judge import Verdict
from ortforge.accuracy.reopen import save_verified
from ortforge.accuracy.tolerance import close, parse_tolerances
from ortforge.commands.common import feeds_for, open_model
from ortforge.core.deadline import Deadline
from ortforge.core.errors import OptionError
from ortforge.core.model import require_in_model
from ortforge.core.options import default_of
from ortforge.core.outputs import guard_file, user_files
from ortforge.core.runtime import GPU_PROVIDERS, available_providers
from ortforge.core.session import SessionConfig, known_provider
from ortforge.data import GENERATED_WARNING, ShapeOptions
from ortforge.searches.mixed_precision import SearchReport, convert_within, fp16_mac_share
from ortforge.transforms.fp16 import Fp16Options

DEFAULT_TOLERANCES = (close(1e-2, 1e-3),)  # fp16's usual elementwise bound
TIME_BUDGET_S = 300.0  # for --auto's search


@dataclass
class Fp16Report:
    """What `ortforge fp16` wrote and how its simulated outputs compare with fp32."""

    output: str
    provider: str  # whose fp16 kernels were asked
    plan: dict  # counts, fp32 nodes and why, casts inserted
    accuracy: dict  # cosine, max_abs, rel against fp32
    judged_by: str  # "simulation" (fp16 rounding inside an fp32 graph, on the CPU) or the EP that ran it for real
    verdict: Verdict
    search: SearchReport | None
    wall_s: float
    fp16_mac_share: float | None = None  # of the counted MACs (MatMul, Conv, ...), the fraction fp16 nodes compute
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in vars(self).items() if k not in ("search", "verdict")}, "verdict": self.verdict.to_dict(),
                "within_tolerance": self.within_tolerance, "search": self.search.to_dict() if self.search else None}  # fmt: skip

    @property
    def within_tolerance(self) -> bool:
        return self.verdict.passed


def fp16(
    reference: str | Path,
    output: str | Path,
    *,
    keep_io_types: bool = default_of(Fp16Options, "keep_io_types"),
    block_ops: Sequence[str] = default_of(Fp16Options, "block_ops"),
    block_nodes: Sequence[str] = default_of(Fp16Options, "block_nodes"),
    ep: str | None = None,
    auto: bool = False,
    tolerances: Sequence[str] = (),
    data: str | None = None,
    samples: int = 32,
    shape_options: ShapeOptions | None = None,
    eval_hook: str | None = None,
    force: bool = False,
    time_budget_s: float = TIME_BUDGET_S,
) -> Fp16Report:
    """fp16 (or, with `auto`, as many fp16 nodes as the tolerance allows), judged on a local GPU EP, else by simulation on the CPU.

    `tolerances` as for every command ('rtol=1e-2', 'atol=1e-3', 'cosine=0.999', ...; default rtol 1e-2, atol 1e-3).
    `time_budget_s` bounds `auto`'s search, counted from the call."""
    started = time.perf_counter()
    deadline = Deadline(time_budget_s)
    target = known_provider(ep) if ep else None
    bounds = parse_tolerances(tolerances, DEFAULT_TOLERANCES)
    model = open_model(reference)
    require_in_model("block_nodes", block_nodes, model.proto, op_types=False)
    require_in_model("block_ops", block_ops, model.proto, nodes=False)
    guard_file(output, user_files(model, data, eval_hook))
    feeds = feeds_for(model, reference, data, samples=samples, shape_options=shape_options)
    gpu = [p for p in GPU_PROVIDERS if p in available_providers()]
    if target is None and not gpu:  # planned for the CPU EP, next to nothing would be converted: say so rather than write it
        raise OptionError("ep", None, "no EP of this onnxruntime has fp16 kernels worth converting for (the CPU EP computes most "
                          "fp16 ops in fp32 behind Casts)", hint="name the EP to plan for, e.g. --ep cuda: it is then judged by simulating fp16 "
                          "rounding here; --ep cpu plans for the CPU EP anyway")  # fmt: skip
    provider = target or gpu[0]
    options = Fp16Options(keep_io_types=keep_io_types, block_ops=tuple(block_ops), block_nodes=tuple(block_nodes), provider=provider)
    outcome = convert_within(model, feeds, options, bounds, auto=auto, hook=load_eval_hook(eval_hook) if eval_hook else None, force=force,
                             subject=Path(output).name, deadline=deadline)  # fmt: skip
    share = fp16_mac_share(model, outcome.plan, feeds)
    # Judged again from disk only where it was judged for real: on the CPU, fp16 runs mostly in fp32 behind Casts.
    real = outcome.judged_by != "simulation"
    saved, written = save_verified(outcome.result.proto, output, model, feeds, outcome.judge if real and outcome.verdict.passed else None,
                                   SessionConfig.on(outcome.judged_by) if real else None, data_dir=outcome.result.data_dir)  # fmt: skip
    notes = list(outcome.result.notes) + outcome.verdict.notes + written
    if outcome.judged_by == "simulation":
        why = ("ORT's CPU EP has few fp16 kernels and computes the rest in fp32 behind Casts, so its outputs and latency say little about "
               "a GPU's" if provider == "CPUExecutionProvider" else f"{provider} is not available here")  # fmt: skip
        notes.append(f"judged by simulation, not by running the fp16 model: {why}")
    if feeds.generated:
        notes.append(GENERATED_WARNING)
    if not outcome.verdict.passed:
        notes.append("written despite fp16 outputs outside tolerance (--force)")
    return Fp16Report(
        output=str(saved),
        provider=provider,
        plan=outcome.result.details,
        accuracy={name: outcome.verdict.measured[name] for name in ("cosine", "max_abs", "rel") if name in outcome.verdict.measured},
        judged_by=outcome.judged_by,
        verdict=outcome.verdict,
        search=outcome.search,
        wall_s=time.perf_counter() - started,
        fp16_mac_share=share,
        notes=notes,
    )
