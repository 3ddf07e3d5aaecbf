"""The parent side of a measurement subprocess: start it, call it, stop it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from ortforge.core.errors import UserError
from ortforge.measure import protocol


class MeasureProcess:
    """A fresh Python process holding one session; methods mirror `worker.Worker`."""

    def __init__(self, label: str) -> None:
        self.label = label
        env = dict(os.environ)
        src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")  # works uninstalled too
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ortforge.measure.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def call(self, command: str, **arguments: Any) -> Any:
        assert self._process.stdin and self._process.stdout
        try:
            protocol.send(self._process.stdin, (command, arguments))
            status, payload = protocol.receive(self._process.stdout)
        except (EOFError, BrokenPipeError):
            raise UserError(f"{self.label}: the measurement process died: {self._stderr_tail()}") from None
        if status == "user_error":
            raise UserError(payload)
        if status == "ort_error":  # ORT refused the model or its inputs: the user's to fix, in one line naming the variant
            raise UserError(f"{self.label}: {payload}")
        if status == "error":
            raise RuntimeError(f"{self.label}: {payload}")
        return payload

    def _stderr_tail(self) -> str:
        self._process.kill()
        _, err = self._process.communicate(timeout=10)
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self._process.returncode}"

    def close(self) -> None:
        if self._process.poll() is None:
            try:
                self.call("exit")
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> MeasureProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
