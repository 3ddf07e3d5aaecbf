"""The user's own accuracy check (`--eval module:function`), loaded once and named in every error."""

from __future__ import annotations

from collections.abc import Callable

from ortforge.core.errors import OptionError
from ortforge.data.sources import import_hook_module


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
        digest = hashlib.sha256(open(source, "rb").read()).hexdigest()[:16] if source else ""
    except (OSError, TypeError):
        digest = ""
    return f"{name}@{digest}"
