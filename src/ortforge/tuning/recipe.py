"""The recipe an artifact records: what was done to the model and how it runs, so that `ortforge apply` can redo it
on another model of the same architecture (retrained weights) without a new search.

It lives in the artifact's ortforge.json under "recipe": the precision transform with its options (node names
kept float included), whether the model was saved optimized for this CPU, the session config, the accuracy
gate, the data it was judged on (counts and source kind, no paths) and the model's shape (inputs, outputs, op
counts), which a model must share for the recipe to apply.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortforge.accuracy.tolerance import Tolerance, parse_tolerances
from ortforge.core.errors import UserError
from ortforge.core.model import Model
from ortforge.core.session import SessionConfig
from ortforge.searches.trial import KINDS, Candidate
from ortforge.transforms import op_counts
from ortforge.tuning.sessions import SESSION_RANKS

FORMAT = "ortforge-recipe/1"
RECORD_FILE = "ortforge.json"  # the artifact's record, which holds the recipe


@dataclass(frozen=True)
class Recipe:
    """A tune result as something to redo: the transform, how the model was saved and runs, and the gate it passed."""

    candidate: Candidate
    session: SessionConfig
    session_label: str = "ORT defaults"
    session_kind: str = "defaults"  # "offline": saved after ORT's level-all optimizations, for the CPU it ran on
    streams: int = 1  # requests in flight it was measured with
    tolerances: tuple[str, ...] = ()  # METRIC=VALUE texts, as --tolerance takes them
    hook: str = ""  # module:function of the --eval hook it was judged with ("" for none)
    objective: str = "latency"
    data: dict[str, Any] = field(default_factory=dict)  # samples, calib_samples, source kind (never a path)
    model: dict[str, Any] = field(default_factory=dict)  # inputs, outputs and op counts of the model it was made for

    @property
    def offline(self) -> bool:
        return self.session_kind == "offline"

    @property
    def label(self) -> str:
        return f"{self.candidate.label} | {self.session_label}"

    def gate(self) -> list[Tolerance]:
        return parse_tolerances(self.tolerances)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "transform": self.candidate.to_dict(),
            "session": self.session.to_dict(),
            "session_label": self.session_label,
            "session_kind": self.session_kind,
            "requests_in_flight": self.streams,
            "tolerances": list(self.tolerances),
            "hook": self.hook,
            "objective": self.objective,
            "data": self.data,
            "model": self.model,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Recipe:
        """A recipe read back; anything malformed is one line naming `where` and the key."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{where}: recipe format '{found}' is not {FORMAT}")
        try:
            transform = data["transform"]
            if transform["kind"] not in KINDS:
                raise UserError(f"{where}: recipe transform kind '{transform['kind']}' is not one of {', '.join(KINDS)}")
            if data.get("session_kind", "defaults") not in SESSION_RANKS:
                raise UserError(f"{where}: recipe session kind '{data['session_kind']}' is not one of {', '.join(SESSION_RANKS)}")
            candidate = Candidate.from_dict(transform)
            recipe = cls(
                candidate=candidate,
                session=SessionConfig.from_dict(data["session"], where=f"{where}: recipe session"),
                session_label=str(data.get("session_label", "ORT defaults")),
                session_kind=str(data.get("session_kind", "defaults")),
                streams=int(data.get("requests_in_flight", 1)),
                tolerances=tuple(str(t) for t in data.get("tolerances", [])),
                hook=str(data.get("hook", "")),
                objective=str(data.get("objective", "latency")),
                data=dict(data.get("data", {})),
                model=dict(data.get("model", {})),
            )
        except KeyError as exc:
            raise UserError(f"{where}: the recipe has no '{exc.args[0]}'") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{where}: malformed recipe ({exc})") from None
        recipe.gate()  # a bad tolerance is named now, not after the build
        return recipe


def model_shape(model: Model) -> dict[str, Any]:
    """What a model must share with the one a recipe was made for: inputs and outputs (name, element type) and op counts."""
    graph = model.proto.graph
    initializers = {t.name for t in graph.initializer}
    return {
        "inputs": [[v.name, v.type.tensor_type.elem_type] for v in graph.input if v.name not in initializers],
        "outputs": [[v.name, v.type.tensor_type.elem_type] for v in graph.output],
        "ops": dict(sorted(op_counts(model.proto).items())),
    }


def check_fits(recipe: Recipe, model: Model) -> None:
    """Refuse, in one line naming the first difference, a model of another architecture than the recipe's."""
    if not recipe.model:
        return
    found = model_shape(model)
    for part in ("inputs", "outputs"):
        expected = [tuple(item) for item in recipe.model.get(part, [])]
        given = [tuple(item) for item in found[part]]
        if expected != given:
            missing = [name for name, _ in expected if name not in {n for n, _ in given}]
            what = f"no {part[:-1]} '{missing[0]}'" if missing else f"its {part} differ ({_names(given)} here, {_names(expected)} in the recipe)"
            raise UserError(f"{model.name}: not the architecture the recipe was made for: {what}",
                            hint="apply a recipe to a retrained model of the same architecture; tune a new one")  # fmt: skip
    expected_ops, given_ops = recipe.model.get("ops", {}), found["ops"]
    for op in sorted(set(expected_ops) | set(given_ops)):
        if expected_ops.get(op, 0) != given_ops.get(op, 0):
            raise UserError(f"{model.name}: not the architecture the recipe was made for: {given_ops.get(op, 0)} {op} node(s) here, "
                            f"{expected_ops.get(op, 0)} in the recipe", hint="apply a recipe to a retrained model of the same architecture; tune a new one")  # fmt: skip


def _names(items: list[tuple]) -> str:
    return ", ".join(str(name) for name, *_ in items) or "none"


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """The recipe of an artifact folder, of its ortforge.json, or of a JSON file holding a recipe alone."""
    source = Path(path)
    file = source / RECORD_FILE if source.is_dir() else source
    if not file.is_file():
        what = "is a folder without ortforge.json (not a tune artifact)" if source.is_dir() else "not found"
        raise UserError(f"{source}: {what}")
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{file}: not a readable recipe ({type(exc).__name__}: {exc})") from None
    if isinstance(record, dict) and "recipe" in record:
        return Recipe.from_dict(record["recipe"], str(file))
    if isinstance(record, dict) and str(record.get("format", "")).startswith("ortforge-artifact"):
        raise UserError(f"{file}: this artifact holds no recipe (written by an ortforge before recipes); tune it again")
    if not isinstance(record, dict) or "format" not in record:
        raise UserError(f"{file}: holds no ortforge recipe (give a tune artifact, its ortforge.json, or a recipe file)")
    return Recipe.from_dict(record, str(file))
