"""What the CLI shows while work runs and how it prints results: progress on stderr (a bar in a terminal, plain
lines elsewhere, and into --log-file), the effective settings at the start, tables on stdout, JSON on stdout."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

from ortforge.core.progress import Progress

HEARTBEAT_S = 10.0  # away from a terminal, a progress line at least this often
LOG_WIDTH = 1000  # away from a terminal tables are as wide as their content: a log never splits a number


@dataclass
class Display:
    """How this run shows itself (set once by `main` from --quiet, --log-file and the effective settings)."""

    quiet: bool = False
    log_file: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    announced: bool = False  # the settings line is shown once work starts (a refused option stays one line)


DISPLAY = Display()


def configure(**settings: Any) -> None:
    """Start this run's display afresh (the CLI may run several times in one process: tests, notebooks)."""
    fresh = Display(**settings)
    for name in (f.name for f in fields(Display)):
        setattr(DISPLAY, name, getattr(fresh, name))


def stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def result_console() -> Any:
    """stdout: rich at the terminal's width; in a pipe or a log, wide enough that no table cell wraps."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH)


def announce(console: Any = None, *, log_only: bool = False) -> None:
    """One line naming every setting in effect, defaults included (stderr and the log file), once: when work starts,
    after the checks that refuse bad options, so that a refusal stays one line."""
    if DISPLAY.announced or not DISPLAY.settings:
        return
    DISPLAY.announced = True
    settings = DISPLAY.settings.items()
    line = f"{DISPLAY.command}: " + ", ".join(name if value is True else f"{name} {_shown(value)}" for name, value in settings)
    if not (DISPLAY.quiet or log_only):
        (console or stderr_console()).print(line, highlight=False, markup=False, soft_wrap=True)
    log_line(line)


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def log_line(line: str) -> None:
    """A timestamped line for --log-file (progress, the settings, the outcome); nothing without one."""
    if DISPLAY.log_file is not None:
        with open(DISPLAY.log_file, "a", encoding="utf-8") as log:
            log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def time_left(elapsed: float, fraction: float, budget_s: float | None) -> float | None:
    """Seconds left: against the budget when there is one, else extrapolated from the fraction done (once 5% is)."""
    if budget_s is not None:
        return max(0.0, budget_s - elapsed)
    if fraction >= 0.05:
        return elapsed * (1 - fraction) / fraction
    return None


class _Lines:
    """Plain progress lines for a log or a pipe: at each new stage, and the current step at least every HEARTBEAT_S."""

    def __init__(self, stream: TextIO | None, budget_s: float | None) -> None:
        self.stream, self.budget_s = stream, budget_s
        self.start = self.last_line = time.monotonic()
        self.what, self.fraction, self.shown = "starting", 0.0, ""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, daemon=True)
        self.beat.start()

    def update(self, what: str, fraction: float) -> None:
        """A new stage (the text before its first ':') is shown at once; steps within one wait for the heartbeat."""
        with self.lock:
            self.what, self.fraction = what, fraction
            if what.split(":")[0] != self.shown.split(":")[0]:
                self._emit()

    def _heartbeat(self) -> None:
        while not self.stop.wait(min(1.0, HEARTBEAT_S / 4)):
            with self.lock:
                if time.monotonic() - self.last_line >= HEARTBEAT_S:
                    self._emit()

    def _emit(self) -> None:
        elapsed = time.monotonic() - self.start
        left = time_left(elapsed, self.fraction, self.budget_s)
        line = f"[{_clock(elapsed)}] {self.fraction:4.0%} {self.what}" + (f" (~{_clock(left)} left)" if left is not None else "")
        if self.stream is not None:
            print(line, file=self.stream, flush=True)
        log_line(line)
        self.last_line, self.shown = time.monotonic(), self.what

    def close(self) -> None:
        self.stop.set()
        self.beat.join(timeout=2.0)


@contextmanager
def progress_bar(enabled: bool = True, *, budget_s: float | None = None) -> Iterator[Progress]:
    """Progress on stderr while long work runs: in a terminal a bar with the elapsed time and the time left first (so
    they stay visible at 80 columns), elsewhere plain lines; both go to --log-file. `budget_s` makes "left" the budget's."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar
    from rich.table import Column

    enabled = enabled and not DISPLAY.quiet
    terminal = enabled and stderr_console().is_terminal
    lines = _Lines(None if terminal or not enabled else sys.stderr, budget_s) if enabled or DISPLAY.log_file else None
    columns = (TimeElapsedColumn(), TextColumn("{task.fields[left]}"), BarColumn(bar_width=16),
               TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")))  # fmt: skip
    start = time.monotonic()
    with Bar(*columns, transient=True, disable=not terminal, expand=True, console=stderr_console()) as bar:
        task = bar.add_task("starting", total=1.0, left="")

        def update(what: str, fraction: float) -> None:
            announce(bar.console if terminal else None)  # in a terminal, printed above the live bar
            left = time_left(time.monotonic() - start, fraction, budget_s)
            bar.update(task, description=what, completed=fraction, left=f"~{_clock(left)} left" if left is not None else "")
            if lines is not None:
                lines.update(what, fraction)

        try:
            yield update
        finally:
            if lines is not None:
                lines.close()


def emit_json(result: Any) -> None:
    """The result as JSON on stdout, with the settings in effect (defaults included) under "settings"."""
    data = result.to_dict() if hasattr(result, "to_dict") else result
    if isinstance(data, dict) and DISPLAY.settings:
        data = {**data, "settings": DISPLAY.settings}
    print(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
