"""`--config FILE`: a command's options from a TOML file, as if typed before the flags on the command line (which win).

Keys are the command's flags without the dashes (`time-budget`) or their Python names (`time_budget_s`, what a tune
artifact's tune.toml uses); a list repeats a flag (`tolerance = ["cosine=0.99", "top1=1"]`), `true` sets a switch,
and `model` gives the model when none is typed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ortforge.core.errors import UserError

CONFIG_FLAG = "--config"


def add_config(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(CONFIG_FLAG, metavar="FILE.toml", help=f"read {what} from a TOML file (keys: the flags without dashes; flags typed here win); "
                        "a tune artifact's tune.toml reproduces its run")  # fmt: skip


def config_path(tokens: Sequence[str]) -> str | None:
    """The --config FILE among a command's tokens, if any."""
    for index, token in enumerate(tokens):
        if token == CONFIG_FLAG and index + 1 < len(tokens):
            return tokens[index + 1]
        if token.startswith(CONFIG_FLAG + "="):
            return token.split("=", 1)[1]
    return None


def read_config(path: str) -> dict[str, Any]:
    """The TOML file as a table; one line naming the file and what is wrong with it otherwise."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    file = Path(path)
    try:
        return tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the config file ({type(exc).__name__}: {exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None


def config_tokens(parser: argparse.ArgumentParser, path: str) -> tuple[list[str], str | None]:
    """The command-line tokens a config file stands for, and the model it names (None if it names none)."""
    table = read_config(path)
    actions = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            actions[action.dest] = action
            actions.update((flag.lstrip("-"), action) for flag in action.option_strings if flag.startswith("--"))
    model = table.pop("model", None)
    if model is not None and not isinstance(model, str):
        raise UserError(f"{path}: 'model' must be a string (a path or zoo:NAME), not {type(model).__name__}")
    tokens: list[str] = []
    for key, value in table.items():
        action = actions.get(key) or actions.get(key.replace("_", "-"))
        if action is None or action.dest == "config":
            known = sorted({a.option_strings[-1].lstrip("-") for a in actions.values() if a.dest != "config"})
            raise UserError(f"{path}: unknown key '{key}' (known: model, {', '.join(known)})")
        tokens += _tokens(action, value, path, key)
    return tokens, model


def _tokens(action: argparse.Action, value: Any, path: str, key: str) -> list[str]:
    flag = action.option_strings[-1]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise UserError(f"{path}: '{key}' is a switch: give true or false, not {value!r}")
        wanted = value if isinstance(action, argparse._StoreTrueAction) else not value
        return [flag] if wanted else []
    if isinstance(value, (dict, bool)) or (isinstance(value, list) and any(isinstance(item, (list, dict)) for item in value)):
        raise UserError(f"{path}: '{key}' takes {'values' if action.nargs == '+' else 'a value'}, not {value!r}")
    items = [str(item) for item in value] if isinstance(value, list) else [str(value)]
    if isinstance(action, argparse._AppendAction):
        return [token for item in items for token in (flag, item)]
    if action.nargs == "+":
        return [flag, *items]
    if len(items) != 1:
        raise UserError(f"{path}: '{key}' takes one value, not {len(items)}")
    return [flag, items[0]]
