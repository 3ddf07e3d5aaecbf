"""What `tune` tries for precision: fp32, transformer fusion, the int8 and weight-only recipes that suit the
model family on this CPU, and fp16 where a GPU EP is present. Session options come from `sessions.py`."""

from __future__ import annotations

from ortforge.core.runtime import GPU_PROVIDERS
from ortforge.searches.recipes import auto_recipes
from ortforge.searches.trial import Candidate

# The mixed-precision candidate searches within fp16's usual elementwise bound; tune's own tolerance judges the result.
MIXED_RTOL, MIXED_ATOL = 1e-2, 1e-3


def precision_candidates(family: str, providers: list[str], transformer: bool, features: tuple[str, ...] | None = None) -> list[Candidate]:
    """fp32 first, then what suits the family and the hardware."""
    found = [Candidate("fp32", "fp32")]
    if transformer:
        found.append(Candidate("fp32 + transformer fusion", "fusion", (("model_type", "auto"),)))
    found += [Candidate.of_recipe(recipe) for recipe in auto_recipes(family, features)]
    gpu = [p for p in providers if p in GPU_PROVIDERS]
    if gpu:  # fp16 pays only where an EP has fp16 kernels; ORT's CPU EP computes most fp16 ops in fp32
        name = gpu[0].replace("ExecutionProvider", "")
        found.append(Candidate(f"fp16 for {name}", "fp16", (("provider", gpu[0]),)))
        found.append(Candidate(f"mixed fp16 for {name} (searched within rtol {MIXED_RTOL:g}, atol {MIXED_ATOL:g})", "fp16",
                               (("auto", True), ("provider", gpu[0]))))  # fmt: skip
    return found
