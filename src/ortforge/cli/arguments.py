"""Flags derived from what the API already says: options dataclasses (`core.options.option` fields) and the
verbs' own keyword defaults. The CLI states no default of its own, so the two cannot drift apart."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ortforge.core.errors import OptionError
from ortforge.data import ShapeOptions, parse_dim_option, parse_shape_option

Group = argparse.ArgumentParser | argparse._ArgumentGroup


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _described(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _value_type(annotation: Any, default: Any) -> tuple[type, bool]:
    """The scalar type argparse converts to, and whether the option takes several values (a tuple)."""
    hints = annotation if not isinstance(annotation, str) else None
    if isinstance(default, tuple) or (hints is not None and typing.get_origin(hints) is tuple):
        return str, True
    for kind in (bool, int, float):
        if isinstance(default, kind):
            return kind, False
    if isinstance(annotation, str):
        for name, kind in (("int", int), ("float", float), ("bool", bool)):
            if annotation.split("|")[0].strip() == name:
                return kind, False
    if isinstance(annotation, types.UnionType):
        args = [a for a in annotation.__args__ if a is not type(None)]
        return (args[0] if args and args[0] in (int, float, bool) else str), False
    return str, False


def add_argument(group: Group, flag: str, dest: str, default: Any, annotation: Any, help: str, *,  # noqa: A002
                 choices: Sequence[Any] | None = None, metavar: str | None = None) -> None:  # fmt: skip
    """One flag for one option: store_true/store_false for booleans (by whether the flag says --no-), nargs for tuples."""
    kind, several = _value_type(annotation, default)
    if kind is bool and not several:
        negative = flag.startswith("--no-")
        group.add_argument(flag, dest=dest, action="store_false" if negative else "store_true", default=default, help=help)
        return
    shown = f" (default {_described(default)})" if default not in (None, (), "") else ""
    group.add_argument(flag, dest=dest, type=kind, default=default, nargs="+" if several else None, choices=choices, metavar=metavar,
                       help=help + shown)  # fmt: skip


def flag_help(cls: type, name: str) -> str:
    """A field's help text, for a flag the caller adds by hand."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"]


def add_options(group: Group, cls: type, *, skip: Collection[str] = (), only: Collection[str] | None = None) -> None:
    """A flag for every field of `cls` that carries command-line help (see `core.options.option`)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if "help" not in field.metadata or field.name in skip or (only is not None and field.name not in only):
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        add_argument(group, flag_of(field), field.name, default, hints.get(field.name), field.metadata["help"],
                     choices=field.metadata.get("choices"), metavar=field.metadata.get("metavar"))  # fmt: skip


def options_from(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """An instance of `cls` from the parsed flags its fields were added under (and `fixed` values)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    values = {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
    return cls(**{**values, **fixed})


def option_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags of `cls`'s fields as keyword arguments (for verbs that take the fields one by one)."""
    return {f.name: (tuple(v) if isinstance(v := getattr(args, f.name), list) else v) for f in dataclasses.fields(cls) if hasattr(args, f.name)}


def add_parameter(group: Group, verb: Callable, name: str, help: str, *, flag: str | None = None,  # noqa: A002
                  metavar: str | None = None, choices: Sequence[Any] | None = None) -> None:  # fmt: skip
    """A flag for one keyword of a public verb, with the verb's own default."""
    parameter = inspect.signature(verb).parameters[name]
    add_argument(group, flag or "--" + name.replace("_", "-"), name, parameter.default, parameter.annotation, help,
                 choices=choices, metavar=metavar)  # fmt: skip


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def add_data(parser: argparse.ArgumentParser, verb: Callable, unset_samples: str = "all of --data, else one") -> None:
    group = parser.add_argument_group("input data")
    add_parameter(group, verb, "data", "an .npz, a folder of .npz/.npy or test_data_set_*/input_*.pb, or a hook module:function "
                  "yielding feed dicts (default: a zoo model's realistic inputs, else generated ones)", metavar="SOURCE")  # fmt: skip
    unset = inspect.signature(verb).parameters["samples"].default is None
    add_parameter(group, verb, "samples", "how many samples to read or generate" + (f" (default: {unset_samples})" if unset else ""))
    if "seed" in inspect.signature(verb).parameters:
        add_parameter(group, verb, "seed", "seed for generated inputs")


def add_shapes(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("input shapes")
    defaults = ShapeOptions()
    group.add_argument("--shape", dest="shapes", action="append", default=[], metavar="NAME=DxD..", help="fix an input's shape, e.g. x=1x3x224x224")
    group.add_argument("--dim", dest="dims", action="append", default=[], metavar="DIM=N", help="set a symbolic dimension by name, e.g. batch=8")
    group.add_argument("--batch", type=int, default=None, help=f"value for batch-like dims (default {defaults.batch})")
    group.add_argument("--sequence", type=int, default=None, help=f"value for sequence-like dims (default {defaults.sequence})")


def shape_options(args: argparse.Namespace) -> ShapeOptions | None:
    if not (args.shapes or args.dims or args.batch or args.sequence):
        return None
    options = ShapeOptions(shapes=dict(map(parse_shape_option, args.shapes)), dims=dict(map(parse_dim_option, args.dims)))
    if args.batch:
        options.batch = args.batch
    if args.sequence:
        options.sequence = args.sequence
    return options


DEFAULT_GATE = ("cosine=0.99 on every output, plus by the output's form: top1=1 for class scores, sequence=1 (every decoded "
                "sequence unchanged) for per-step class scores, agreement=0.99 for probability maps")


def add_tolerance(parser: argparse.ArgumentParser, default: str, *, hook: bool = True) -> None:
    group = parser.add_argument_group("accuracy gate")
    group.add_argument("--tolerance", dest="tolerances", action="append", default=[], metavar="METRIC=VALUE",
                       help="bound on the outputs vs the original's: cosine=0.99, pooled_cosine=0.99, top1=1, sequence=1, agreement=0.99, max_abs=1e-2, "
                            "rel=1e-2, mean_abs=..., eval=..., "
                            f"or rtol=R and atol=A for an allclose bound (default: {default})")  # fmt: skip
    group.add_argument("--rtol", type=float, default=None, help="same as --tolerance rtol=R")
    group.add_argument("--atol", type=float, default=None, help="same as --tolerance atol=A")
    if hook:
        group.add_argument("--eval", dest="eval_hook", metavar="MODULE:FUNCTION",
                           help="your check: function(outputs, reference) returning True/False, or a score bounded by --tolerance eval=V")  # fmt: skip
    group.add_argument("--force", action="store_true", help="write the result even when outputs are outside tolerance (the report says so)")


def tolerances(args: argparse.Namespace) -> list[str]:
    """--tolerance entries, with --rtol/--atol as their other spelling."""
    spelled = [f"{name}={getattr(args, name)!r}" for name in ("rtol", "atol") if getattr(args, name, None) is not None]
    return list(args.tolerances) + spelled


def add_eps(group: Group, help: str, unset: str = "the CPU") -> None:  # noqa: A002
    """--ep, repeatable; `unset`: what no --ep means for this command, in words (its printed settings say it)."""
    action = group.add_argument("--ep", dest="providers", action="append", default=[], metavar="EP", help=help + " (e.g. cpu, cuda, openvino)")
    action.unset_means = unset  # type: ignore[attr-defined]


def add_time_budget(group: Group, default_s: float, what: str) -> None:
    """`--time-budget DURATION`: the deadline of a search (parsed by `parse_duration`)."""
    group.add_argument("--time-budget", dest="time_budget_s", default=f"{default_s:g}s", metavar="DURATION",
                       help=f"wall time for {what}, from start to answer: e.g. 90s, 5m, 1h (default {default_s:g}s)")  # fmt: skip


def parse_duration(text: str, option: str = "time_budget_s") -> float:
    """'90s', '5m', '1h', '300' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise OptionError(option, text, "expected e.g. 90s, 5m or 1h") from None
    if not value > 0 or value == float("inf"):
        raise OptionError(option, text, "must be a positive, finite duration")
    return value


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Option name (argparse dest) -> the flag that sets it, to name flags in errors raised below the CLI."""
    return {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}


QUIET_DESTS = {"help", "json", "verbose", "quiet", "log_file", "config"}  # how the run shows itself, not what it does
# Options whose default is decided later (None / empty here), said in words.
UNSET_MEANS = {"tolerances": "the default gate (by output form)",
               "data": "a zoo model's realistic inputs, else generated ones"}  # fmt: skip


def effective_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Every option of the command with the value in effect, defaults included (the flag's name -> value):
    printed at the start and put in --json, so a run says what it did without the user knowing the defaults."""
    settings: dict[str, Any] = {}
    for action in parser._actions:
        if action.dest in QUIET_DESTS or action.dest == argparse.SUPPRESS:
            continue
        name = action.option_strings[-1].lstrip("-") if action.option_strings else action.dest
        value = getattr(args, action.dest, None)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if value != action.default:  # a switch is named only when it is thrown
                settings[name] = True
            continue
        if value in (None, [], ()):
            value = getattr(action, "unset_means", UNSET_MEANS.get(action.dest))
        if value in (None, [], ()):
            continue
        settings[name] = list(value) if isinstance(value, tuple) else value
    return settings
