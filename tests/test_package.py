"""The public API: `import ortforge` gives the CLI's verbs, and they stay verbs."""

from __future__ import annotations

import subprocess
import sys

VERBS = ("tune", "apply", "quant_debug", "bench", "optimize", "doctor", "fp16", "quantize", "inspect", "tune_session", "load")


def test_verbs_stay_callable_after_every_module_loads():
    # A fresh interpreter that imports every module of the package: a module named like a verb directly
    # under `ortforge` would rebind `ortforge.<verb>` to itself ("module is not callable" on the next call).
    script = (
        "import importlib, pkgutil, ortforge\n"
        "for info in pkgutil.walk_packages(ortforge.__path__, 'ortforge.'):\n"
        "    if not info.name.endswith('__main__'):\n"
        "        importlib.import_module(info.name)\n"
        f"print([v for v in {VERBS!r} if not callable(getattr(ortforge, v))])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
