"""The one tolerance vocabulary: a bound on one metric of a candidate's outputs against the reference.

Agreements (cosine, top1, the user's `eval` score) must stay at or above their bound; errors (max_abs,
mean_abs, rel) at or below it. `close` is numpy's allclose as a metric: every element within
atol + rtol * |reference|, measured as the worst |error| / (atol + rtol * |reference|), which must stay
at or below 1. On the command line `--tolerance rtol=1e-2 --tolerance atol=1e-3` (or `--rtol/--atol`)
spell one `close` bound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ortforge.core.errors import OptionError

HIGHER_IS_BETTER = {"cosine", "pooled_cosine", "top1", "token_top1", "sequence", "agreement", "eval"}
LOWER_IS_BETTER = {"max_abs", "mean_abs", "rel", "close"}
METRICS = HIGHER_IS_BETTER | LOWER_IS_BETTER
CLOSE_PARTS = ("rtol", "atol")  # spelled as metrics on the command line; together they make one `close` bound
BOUNDED = {"cosine": (-1.0, 1.0), "pooled_cosine": (-1.0, 1.0), "top1": (0.0, 1.0), "token_top1": (0.0, 1.0), "sequence": (0.0, 1.0),
           "agreement": (0.0, 1.0)}  # fmt: skip
# A language model's next token under teacher forcing: the share of positions whose top-1 may change (the bar).
TOKEN_TOP1_DEFAULT = 0.95


@dataclass(frozen=True)
class Tolerance:
    """One bound on one metric, e.g. cosine >= 0.99, max_abs <= 1e-3, or close at rtol 1e-2, atol 1e-3."""

    metric: str
    value: float = 1.0  # for `close`: the bound on |error| / (atol + rtol * |reference|), 1 = allclose
    rtol: float = 0.0  # `close` only
    atol: float = 0.0  # `close` only

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise OptionError("tolerances", self.metric, f"the metric must be one of {', '.join(sorted(METRICS | set(CLOSE_PARTS)))}")
        for name, number in (("value", self.value), ("rtol", self.rtol), ("atol", self.atol)):
            if not math.isfinite(number):
                raise OptionError("tolerances", f"{self.metric}={number}", f"{name} must be a finite number")
        low, high = BOUNDED.get(self.metric, (0.0, math.inf))
        if not low <= self.value <= high:
            raise OptionError("tolerances", f"{self.metric}={self.value:g}", f"must lie in [{low:g}, {high:g}]")
        if self.rtol < 0 or self.atol < 0:
            raise OptionError("tolerances", f"rtol={self.rtol:g} atol={self.atol:g}", "rtol and atol must not be negative")

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    def met_by(self, measured: float) -> bool:
        if math.isnan(measured):
            return False
        return measured >= self.value if self.higher_is_better else measured <= self.value

    def describe(self) -> str:
        if self.metric == "close":
            return f"rtol={self.rtol:g} atol={self.atol:g}"
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.value:g}"

    def arguments(self) -> list[str]:
        """The METRIC=VALUE texts `parse_tolerances` reads back into this bound (a recipe stores them)."""
        if self.metric == "close":
            return [f"rtol={self.rtol!r}", f"atol={self.atol!r}"]
        return [f"{self.metric}={self.value!r}"]

    def tightened(self, share: float) -> Tolerance:
        """The bound leaving only `share` of the error it allows (cosine >= 0.99 at 0.75: cosine >= 0.9925)."""
        if self.metric == "close":
            return replace(self, value=self.value * share)
        if self.metric in BOUNDED:  # higher is better, up to the bound's top
            return replace(self, value=BOUNDED[self.metric][1] - (BOUNDED[self.metric][1] - self.value) * share)
        return replace(self, value=self.value * share) if not self.higher_is_better else self  # an eval score: no scale to tighten on

    def miss(self, measured: float) -> str:
        """One line saying how a measured value misses this bound."""
        if self.metric == "close":
            return f"outputs {measured:.3g}x outside rtol={self.rtol:g} atol={self.atol:g}"
        return f"{self.metric} {measured:.4g} misses {self.describe()}"


def close(rtol: float, atol: float) -> Tolerance:
    """numpy's allclose as a tolerance."""
    return Tolerance("close", 1.0, rtol=rtol, atol=atol)


def parse_tolerances(texts: Iterable[str], defaults: Sequence[Tolerance] = ()) -> list[Tolerance]:
    """'cosine=0.99', 'rtol=1e-2', 'atol=1e-3' ... -> tolerances; nothing given -> `defaults`.

    rtol and atol update the defaults' `close` bound (or start one at 0/0), so `--rtol 1e-3` alone keeps
    the command's default atol.
    """
    given: dict[str, Tolerance] = {}
    closeness: dict[str, float] = {}
    for text in texts:
        metric, sep, number = text.partition("=")
        metric = metric.strip()
        if not sep or metric not in METRICS | set(CLOSE_PARTS):
            raise OptionError("tolerances", text, f"expected METRIC=VALUE with METRIC one of {', '.join(sorted(METRICS | set(CLOSE_PARTS)))}")
        try:
            value = float(number)
        except ValueError:
            raise OptionError("tolerances", text, f"'{number}' is not a number") from None
        if metric in CLOSE_PARTS:
            closeness[metric] = value
        elif metric == "close":
            raise OptionError("tolerances", text, "spell a close bound as rtol=R and atol=A")
        else:
            given[metric] = Tolerance(metric, value)
    if not given and not closeness:
        return list(defaults)
    if closeness:
        base = next((t for t in defaults if t.metric == "close"), close(0.0, 0.0))
        given["close"] = replace(base, **closeness)
    return list(given.values())


def classifier_output(array: object) -> bool:
    """[batch, classes] scores, or [batch, steps, classes] probabilities: where top-1 agreement means something.

    A 3-D output counts only when its rows are probabilities (a recurrent state or hidden states are not).
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or array.shape[-1:] < (2,) or array.size == 0:
        return False
    if array.ndim == 2:
        return True
    if array.ndim == 3:
        sums = np.asarray(array, np.float64).sum(axis=-1)
        return bool(array.min() >= 0 and np.allclose(sums, 1.0, atol=1e-3))
    return False


def sequence_output(array: object) -> bool:
    """Per-step class scores [batch, steps, classes] over several steps (CTC, token probabilities): the decoded
    sequence is what a user reads, so every step's argmax must hold."""
    return classifier_output(array) and np.ndim(array) == 3 and np.shape(array)[1] > 1


def token_logits(name: str, array: object) -> bool:
    """Raw per-token scores [batch, tokens, vocabulary] named like logits (a language model's next-token scores, a token
    classifier's labels): what a user reads is each position's top-1, where most may be kept but not all need be."""
    return ("logits" in name.lower() and isinstance(array, np.ndarray) and array.ndim == 3 and array.dtype.kind == "f"
            and array.shape[-1] >= 2 and array.size > 0 and not classifier_output(array))  # fmt: skip


def probability_map(array: object) -> bool:
    """Values in [0, 1] that are not class scores (a segmentation map, a speech probability): what matters is
    which side of 0.5 each one falls."""
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or array.size == 0 or classifier_output(array):
        return False
    finite = array[np.isfinite(array)]
    return bool(finite.size and finite.min() >= 0 and finite.max() <= 1)


def default_tolerances(reference: list[dict[str, object]]) -> list[Tolerance]:
    """What quantize and tune hold a candidate to by default, by the form of the outputs: cosine >= 0.99 on
    every output; top-1 unchanged for class scores; every decoded sequence unchanged for per-step class
    scores; 99% of a probability map on the same side of 0.5; 95% of token logits' top-1 unchanged."""
    first = list(reference[0].values()) if reference else []
    tolerances = [Tolerance("cosine", 0.99)]
    if any(token_logits(name, value) for name, value in (reference[0].items() if reference else ())):
        tolerances.append(Tolerance("token_top1", TOKEN_TOP1_DEFAULT))
    if any(classifier_output(value) for value in first):
        tolerances.append(Tolerance("top1", 1.0))
    if any(sequence_output(value) for value in first):
        tolerances.append(Tolerance("sequence", 1.0))
    if any(probability_map(value) for value in first):
        tolerances.append(Tolerance("agreement", 0.99))
    return tolerances
