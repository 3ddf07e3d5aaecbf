"""The one candidate/outcome pair every search uses: what to build (`Candidate`) and what came of it (`Trial`).

`quantize --mode auto`, the exclusion search and `tune` all build candidates, judge them with the same
judge and, when timed, score them against fp32; a `Trial` carries all of that, whoever made it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ortforge.accuracy.judge import Verdict
from ortforge.core.model import Model
from ortforge.measure.compare import CandidateScore
from ortforge.transforms.quantize import QuantizeOptions
from ortforge.transforms.weight_only import WeightOnlyOptions

Recipe = QuantizeOptions | WeightOnlyOptions
KINDS = ("fp32", "rewrite", "fusion", "int8", "weight-only", "fp16")
# The simplicity order: between candidates that are within noise of each other, the simpler ships. A
# lower rank changes the model less, or in ways that travel to other machines and ORT versions better.
PRECISION_RANKS = {"fp32": 0, "rewrite": 1, "fusion": 1, "fp16": 2, "weight-only": 3, "int8 dynamic": 4, "int8 static": 5, "int8 with exclusions": 6}


@dataclass(frozen=True)
class Candidate:
    """One way to rewrite the model: fp32 as is, exact rewrites (affine folding, GELU fusion), transformer fusion, int8, weight-only int4/int8, fp16; with a `base`, a
    pipeline: this transform applied to what the base candidate built (e.g. fusion, then dynamic int8), stage by stage."""

    label: str
    kind: str  # one of KINDS
    options: tuple[tuple[str, object], ...] = ()  # the transform's options, frozen (hashable, cacheable)
    base: Candidate | None = None  # the stage before this one (None: applied to the original model)

    @classmethod
    def of_recipe(cls, recipe: Recipe, base: Candidate | None = None) -> Candidate:
        """The candidate an int8 or weight-only recipe builds (on what `base` built, when given)."""
        kind = "weight-only" if isinstance(recipe, WeightOnlyOptions) else "int8"
        return cls(recipe.describe() if base is None else f"{base.label} -> {recipe.describe()}", kind, frozen_options(recipe), base)

    @property
    def stages(self) -> list[Candidate]:
        """The pipeline's stages, first first (one stage for a plain candidate)."""
        return [*(self.base.stages if self.base else []), self]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "label": self.label, "options": dict(self.options), **({"base": self.base.to_dict()} if self.base else {})}

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        """A candidate read back from `to_dict`'s JSON (options sorted, lists made tuples); KeyError when a key is missing."""
        if data["kind"] not in KINDS:
            raise ValueError(f"transform kind '{data['kind']}' is not one of {', '.join(KINDS)}")
        options = tuple(sorted((str(k), tuple(v) if isinstance(v, list) else v) for k, v in data.get("options", {}).items()))
        return cls(str(data["label"]), data["kind"], options, cls.from_dict(data["base"]) if data.get("base") else None)

    @property
    def settings(self) -> dict:
        return dict(self.options)

    @property
    def recipe(self) -> Recipe | None:
        """The quantization options this candidate builds with (None for fp32, rewrites, fusion and fp16)."""
        if self.kind == "int8":
            return QuantizeOptions(**self.settings)
        if self.kind == "weight-only":
            return WeightOnlyOptions(**self.settings)
        return None

    @property
    def complexity(self) -> float:
        """Rank in the simplicity order (`PRECISION_RANKS`): fp32 < rewrites, fusion < fp16 < weight-only < dynamic int8 < static int8 < exclusions;
        a pipeline ranks just above its last stage alone (one more transform between the user and their model)."""
        extra = 0.5 if self.base is not None else 0.0
        if self.kind != "int8":
            return PRECISION_RANKS[self.kind] + extra
        settings = self.settings
        if settings.get("exclude"):
            return PRECISION_RANKS["int8 with exclusions"] + extra
        return PRECISION_RANKS["int8 static" if settings.get("mode") == "static" else "int8 dynamic"] + extra

    def key(self, model_hash: str, data_hash: str, judge_key: str = "") -> str:
        """Cache key: the same model, transform, options, calibration data and judge build the same trial (a pipeline's
        includes its base's, so each stage is cached once and shared by every pipeline starting with it)."""
        # calibration (int8, GPTQ's fit), or the mixed-precision search
        uses_data = self.kind == "int8" or self.settings.get("algorithm") == "gptq" or self.settings.get("auto")
        base = self.base.key(model_hash, data_hash, judge_key) if self.base else None
        parts = [model_hash, self.kind, self.options, data_hash if uses_data else "", judge_key] + ([base] if base else [])
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def frozen_options(options: object) -> tuple[tuple[str, object], ...]:
    """A dataclass of options as sorted (name, value) pairs, lists made tuples."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in asdict(options).items()))


@dataclass
class Trial:
    """A built candidate, the judge's verdict on it and, once timed, its score against fp32."""

    candidate: Candidate
    model: Model | None = field(default=None, repr=False)
    verdict: Verdict | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""  # why it could not be built or judged
    cached: bool = False
    size_bytes: int = 0
    speed: CandidateScore | None = None

    @property
    def label(self) -> str:
        return self.candidate.label

    @property
    def passed(self) -> bool:
        return not self.error and self.verdict is not None and self.verdict.passed

    @property
    def why_not(self) -> str:
        """Why it was rejected ('' when it passed)."""
        return self.error or (self.verdict.reason if self.verdict else "not judged")

    @property
    def metrics(self) -> dict[str, float]:
        return self.verdict.measured if self.verdict else {}

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "kind": self.candidate.kind,
            "size_bytes": self.size_bytes,
            "verdict": self.verdict.to_dict() if self.verdict else None,
            "passed": self.passed,
            "rejected": "" if self.passed else self.why_not,
            "error": self.error,
            "cached": self.cached,
            "speed": self.speed.to_dict() if self.speed else None,
            "notes": self.notes,
        }
