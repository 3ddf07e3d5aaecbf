"""The public API: `import ortforge` gives the CLI's verbs, and they stay verbs."""

from __future__ import annotations

import subprocess
import sys


def test_verbs_stay_callable_after_their_same_named_modules_load():
    # A fresh interpreter: importing ortforge.tune.search (what a tune run does) used to turn `ortforge.tune`
    # into the package, so a second `ortforge.tune(...)` call failed with "module is not callable".
    script = (
        "import ortforge\n"
        "import ortforge.tune.search, ortforge.quant_debug, ortforge.bench, ortforge.optimize, ortforge.doctor\n"
        "verbs = ('tune', 'quant_debug', 'bench', 'optimize', 'doctor', 'fp16', 'quantize', 'inspect', 'tune_session')\n"
        "print([v for v in verbs if not callable(getattr(ortforge, v))])\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
