"""Run (case, transform) tasks in worker processes that can die or hang without ending the run.

`concurrent.futures` pools cannot kill one stuck task and break as a whole when a worker segfaults,
so this is a small pool of its own: each worker takes one task at a time over a pipe and reports the
step it is in; the parent kills a worker that runs past the per-task timeout, turns a dead or killed
worker's task into a result (attributed to the step it died in) and starts a fresh worker. Workers
are also replaced after a number of tasks and capped in address space, so memory stays bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from .classify import Result, evaluate_case, interrupted_result
from .generate import Case
from .transforms import build

TASKS_PER_WORKER = 200  # then a fresh process: whatever a case leaked goes with the old one
POLL_SECONDS = 0.5


class WorkerStartError(RuntimeError):
    """Workers die before they run anything: the environment is broken, not a case."""


@dataclass(frozen=True)
class Task:
    case: Case
    transform: str  # a name from corpus.transforms.BUILDERS


@dataclass
class PoolOptions:
    jobs: int = 2
    timeout: float = 120.0  # seconds per task
    memory_limit: int = 8 << 30  # bytes of address space per worker (0: no cap)


def worker_main(connection: Connection, memory_limit: int) -> None:
    """Worker loop: run each task received, reporting steps and the result; None ends it."""
    _silence()
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    transforms = {}
    while (task := connection.recv()) is not None:
        transform = transforms.get(task.transform) or transforms.setdefault(task.transform, build(task.transform))
        with tempfile.TemporaryDirectory(prefix="ortforge-corpus-") as workdir:
            result = evaluate_case(task.case, transform, Path(workdir), lambda step: connection.send(("step", step)))
        connection.send(("result", result))


def _silence() -> None:
    """ORT, the quantizer and onnx print warnings per case; the parent's progress line is what counts."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


@dataclass
class _Worker:
    process: multiprocessing.Process
    connection: Connection
    task: Task | None = None
    step: str = ""
    started: float = 0.0
    done: int = 0

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()


@dataclass
class _Pool:
    options: PoolOptions
    requeue: deque = field(default_factory=deque)  # tasks whose worker died before starting them
    retried: set = field(default_factory=set)
    context: multiprocessing.context.BaseContext = field(default_factory=lambda: multiprocessing.get_context("spawn"))
    workers: list[_Worker | None] = field(default_factory=list)

    def start_worker(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=worker_main, args=(child, self.options.memory_limit), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def give(self, slot: int, task: Task) -> None:
        worker = self.workers[slot]
        if worker is None or not worker.process.is_alive():
            worker = self.workers[slot] = self.start_worker()
        worker.task, worker.step, worker.started = task, "", time.monotonic()
        worker.connection.send(task)

    def collect(self, slot: int) -> Result | None:
        """The slot's finished, dead or timed-out task's result, or None while it is still running."""
        worker = self.workers[slot]
        assert worker is not None and worker.task is not None
        try:
            while worker.connection.poll():
                kind, payload = worker.connection.recv()
                if kind == "step":
                    worker.step = payload
                else:
                    return self._finished(slot, payload)
        except (EOFError, OSError):
            pass  # the worker died: judged below by its exit code
        if not worker.process.is_alive():
            if not worker.step:
                return self._lost(slot)
            return self._replace(slot, "crashed", _exit_text(worker.process.exitcode))
        if time.monotonic() - worker.started > self.options.timeout:
            return self._replace(slot, "hung", f"timed out after {self.options.timeout:g} s")
        return None

    def _finished(self, slot: int, result: Result) -> Result:
        worker = self.workers[slot]
        worker.task, worker.done = None, worker.done + 1
        if worker.done >= TASKS_PER_WORKER:
            worker.connection.send(None)
            worker.process.join(timeout=10)
            worker.stop()
            self.workers[slot] = None
        return result

    def _lost(self, slot: int) -> None:
        """A worker that died before its task's first step failed to start: retry once, then give up.

        Blaming the case would turn a broken environment into a corpus full of 'excluded'.
        """
        worker = self.workers[slot]
        task, code = worker.task, worker.process.exitcode
        worker.stop()
        self.workers[slot] = None
        if task in self.retried:
            raise WorkerStartError(f"worker processes die before running anything ({_exit_text(code)}); run one case in-process to see why")
        self.retried.add(task)
        self.requeue.append(task)

    def _replace(self, slot: int, kind: str, detail: str) -> Result:
        worker = self.workers[slot]
        task, step = worker.task, worker.step
        worker.stop()
        self.workers[slot] = None
        return interrupted_result(task.case, build(task.transform), step, kind, detail)

    def busy(self) -> list[int]:
        return [slot for slot, worker in enumerate(self.workers) if worker is not None and worker.task is not None]

    def close(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.stop()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_tasks(tasks: Iterable[Task], options: PoolOptions, on_result: Callable[[Result], None]) -> None:
    """Run every task on `options.jobs` workers, calling `on_result` in the parent as results come."""
    pending = deque(tasks)
    pool = _Pool(options, workers=[None] * max(options.jobs, 1))
    try:
        while pending or pool.requeue or pool.busy():
            pending.extendleft(reversed(pool.requeue))
            pool.requeue.clear()
            for slot in range(len(pool.workers)):
                if pending and slot not in pool.busy():
                    pool.give(slot, pending.popleft())
            busy = pool.busy()
            waitables = [pool.workers[s].connection for s in busy] + [pool.workers[s].process.sentinel for s in busy]
            wait(waitables, timeout=POLL_SECONDS)
            for slot in busy:
                result = pool.collect(slot)
                if result is not None:
                    on_result(result)
    finally:
        pool.close()
