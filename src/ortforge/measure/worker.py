"""The measurement subprocess: owns one session, times it on request, reports memory and profiles.

Run as `python -m ortforge.measure.worker`; frames come on stdin and go back on the original
stdout, which is kept away from ORT and user code (their prints go to stderr).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ortforge.measure import protocol
from ortforge.measure.memory import current_rss, peak_rss, release_freed_memory
from ortforge.measure.placement import RECORD_ASSIGNMENT, placement_from_session
from ortforge.measure.profile import summarize_profile

PROFILE_MAX_RUNS = 50


class Worker:
    def __init__(self) -> None:
        self.session: Any = None
        self.feeds: list[dict] = []
        self.config: Any = None
        self.source: tuple[bytes | str, dict[str, str], str] = (b"", {}, "")
        self.pools: dict[int, ThreadPoolExecutor] = {}
        self.loop: Any = None  # a GenerationLoop, when this worker times generations
        self.prompt: Any = None
        self.new_tokens = 0

    def ping(self) -> int:
        """Answer once imports are done, so start-up of one process does not disturb another's timing."""
        return os.getpid()

    def load(self, source: bytes | str, entries: dict[str, str], name: str, config: Any, feeds: list[dict], generation: dict | None = None) -> dict:
        """Create the session from `Model.ort_source()`; time it and note the memory it took. With `generation` (a
        `Generation` as a dict), `generate` times greedy generations on it."""
        from ortforge.core.values import ort_feed

        self.source, self.config, self.feeds = (source, entries, name), config, [ort_feed(feed) for feed in feeds]
        feeds = self.feeds
        baseline = current_rss()
        start = time.perf_counter()
        self.session = config.create(source, {**entries, RECORD_ASSIGNMENT: "1"}, name=name)
        create_s = time.perf_counter() - start
        start = time.perf_counter()
        self.session.run(None, feeds[0])
        first_run_s = time.perf_counter() - start
        placement = placement_from_session(self.session, config.provider_names)
        if generation is not None:
            self._prepare_generation(generation)
        release_freed_memory()  # what graph optimization freed; other workers run beside this one
        return {
            "create_s": create_s,
            "first_run_s": first_run_s,
            "baseline_rss": baseline,
            "providers": self.session.get_providers(),
            "placement": placement,
        }

    def _prepare_generation(self, generation: dict) -> None:
        from ortforge.measure.generate import GenerationLoop, prompt_from

        self.loop = GenerationLoop(self.session, self.feeds[0])
        vocabulary = self.session.get_outputs()[self.loop.logits_at].shape[-1]
        self.prompt = prompt_from(self.feeds[0], self.loop.roles, generation["prompt"], vocabulary if isinstance(vocabulary, int) else None)
        self.new_tokens = generation["new_tokens"]

    def generate(self, count: int) -> dict[str, list[int]]:
        """`count` greedy generations: each one's prefill and mean decode step (nanoseconds), and the tokens of the last."""
        prefill, step = [], []
        for _ in range(count):
            run = self.loop.run(self.prompt, self.new_tokens)
            prefill.append(run.prefill_ns)
            step.append(sum(run.step_ns) // max(1, len(run.step_ns)))
        return {"prefill": prefill, "step": step, "tokens": run.tokens}

    def startup(self, count: int) -> list[int]:
        """Nanoseconds to create a fresh session, `count` times (process-wide ORT set-up already paid)."""
        source, entries, name = self.source
        times = []
        for _ in range(count):
            start = time.perf_counter_ns()
            session = self.config.create(source, entries, name=name)
            times.append(time.perf_counter_ns() - start)
            del session
        return times

    def run(self, count: int, offset: int = 0, streams: int = 1) -> list[int]:
        """`count` timed runs, cycling through the feeds; nanoseconds each. Kept as tight as a bare loop."""
        if streams > 1:
            return self._run_concurrently(count, offset, streams)
        run, feeds, clock = self.session.run, self.feeds, time.perf_counter_ns
        n_feeds = len(feeds)
        times = []
        append = times.append
        for index in range(offset, offset + count):
            feed = feeds[index % n_feeds]
            start = clock()
            run(None, feed)
            append(clock() - start)
        return times

    def _run_concurrently(self, count: int, offset: int, streams: int) -> list[int]:
        """`count` runs shared by `streams` threads calling the one session, as a server with that many
        requests in flight does; each run is credited wall time / count, the inverse of the throughput."""
        if streams not in self.pools:
            self.pools[streams] = ThreadPoolExecutor(streams, thread_name_prefix="ortforge-stream")
        pool = self.pools[streams]
        run, feeds = self.session.run, self.feeds
        together = threading.Barrier(streams)  # no stream starts before all are there: the requests overlap

        def serve(indices: range) -> None:
            together.wait()
            for index in indices:
                run(None, feeds[index % len(feeds)])

        shares = [range(offset + stream, offset + count, streams) for stream in range(streams)]
        start = time.perf_counter_ns()
        for finished in [pool.submit(serve, share) for share in shares]:
            finished.result()
        wall = time.perf_counter_ns() - start
        return [wall // count] * count

    def memory(self) -> dict:
        return {"peak_rss": peak_rss(), "rss": current_rss()}

    def profile(self, seconds: float, max_runs: int = PROFILE_MAX_RUNS) -> Any:
        """Per-op times from a second, profiling session (the profiler slows runs, so never while timing).

        Time-boxed: the profiler slows a run several times over and its trace takes as long again to read,
        so 200 runs of a 1 ms model cost 3 s; a few dozen give the same per-op shares."""
        with tempfile.TemporaryDirectory(prefix="ortforge-profile-") as folder:
            source, entries, name = self.source
            session = self.config.create(source, entries, name=name, profile_dir=folder)
            runs, start = 0, time.perf_counter()
            while runs == 0 or (runs < max_runs and time.perf_counter() - start < seconds):
                session.run(None, self.feeds[runs % len(self.feeds)])
                runs += 1
            profile_path = Path(session.end_profiling())
            summary = summarize_profile(profile_path, runs)
        del session
        release_freed_memory()
        return summary


def serve(inbox: Any, outbox: Any) -> None:
    from ortforge.core.errors import UserError

    worker = Worker()
    while True:
        try:
            command, arguments = protocol.receive(inbox)
        except EOFError:
            return
        if command == "exit":
            protocol.send(outbox, ("ok", None))
            return
        try:
            result = getattr(worker, command)(**arguments)
            protocol.send(outbox, ("ok", result))
        except UserError as exc:
            protocol.send(outbox, ("user_error", str(exc)))
        except Exception as exc:  # reported to the parent, which decides how to show it
            if type(exc).__module__.startswith("onnxruntime"):  # the model on these inputs, not ortforge: one line for the user
                protocol.send(outbox, ("ort_error", f"onnxruntime failed to {'open and run' if command == 'load' else command} it on the inputs: {str(exc).strip().splitlines()[0]}"))
                continue
            protocol.send(outbox, ("error", f"{type(exc).__name__}: {exc}"))


def main() -> None:
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the frames
    serve(sys.stdin.buffer, outbox)


if __name__ == "__main__":
    main()
