"""The user's own accuracy check (`--eval module:function`), loaded once and named in every error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ortforge.core.errors import OptionError, UserError
from ortforge.data.sources import import_hook_module


class HookError(UserError):
    """The user's hook failed (raised, or returned something that is not a score): a bug in their code that stops
    the command, never a verdict on a candidate (judging the next candidate would fail the same way)."""


def load_eval_hook(spec: str) -> Callable:
    """'module:function' or 'file.py:function' -> function(outputs, reference) returning a score or True/False."""
    module_name, sep, function_name = spec.rpartition(":")
    if not sep or not module_name or not function_name.isidentifier():
        raise OptionError("eval_hook", spec, "expected module:function or file.py:function")
    function = getattr(import_hook_module(module_name, option="eval_hook", spec=spec), function_name, None)
    if not callable(function):
        raise OptionError("eval_hook", spec, f"'{module_name}' has no function '{function_name}'")
    return function


def hook_identity(hook: Callable) -> str:
    """module:function and a hash of the file defining it: a changed hook must not reuse cached verdicts."""
    import hashlib
    import inspect

    name = f"{getattr(hook, '__module__', '?')}:{getattr(hook, '__qualname__', repr(hook))}"
    try:
        source = inspect.getsourcefile(hook)
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
    except (OSError, TypeError):
        digest = ""
    return f"{name}@{digest}"


def run_hook(hook: Callable, candidate: list[dict[str, object]], reference: list[dict[str, object]]) -> tuple[float, bool]:
    """The user's eval hook on the candidate's outputs: a score (higher is better), or True/False, a check
    that must pass (returned as 1.0/0.0 and True)."""
    try:
        answer = hook(candidate, reference)
    except Exception as exc:  # the user's code: any failure is theirs to read in one line
        raise HookError(f"the eval hook raised {type(exc).__name__}: {exc}") from None
    if isinstance(answer, (bool, np.bool_)):
        return float(answer), True
    try:
        return float(answer), False
    except (TypeError, ValueError):
        raise HookError(f"the eval hook returned {type(answer).__name__}, expected a number or a bool") from None
