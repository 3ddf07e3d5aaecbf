"""The trial runner on a Ray cluster: builds on any node, measurements only on nodes of one target, under the host lock.

A build runs the local runner's own code on a node, in a scratch cache there, and comes back as that cache entry's
files, stored byte for byte in the driver's cache under the same key: a candidate built once is never built again,
for another target or another run, and a cluster build is the local build. A measurement carries its models' bytes
and the evaluation feeds to a node of the target, runs the same interleaved bench there, and returns its report with
where and when it ran. A node that dies takes its task with it: the task is retried on another eligible node, and a
measurement with no node of its target left raises `NoNodeLeft` (the candidates stay unmeasured, never judged on
another target).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortforge.core.deadline import Deadline
from ortforge.core.errors import UserError, first_line
from ortforge.core.files import atomic_write_text
from ortforge.core.model import from_proto, load_model
from ortforge.core.progress import Progress, silent
from ortforge.core.target import Target, host_id
from ortforge.data import FeedSet
from ortforge.measure.bench import BenchOptions, BenchReport, Variant, bench
from ortforge.searches.trial import Candidate, Trial
from ortforge.tuning.cluster import Node, NoNodeLeft, Scheduler, cluster_nodes, identify_nodes, ray_module, target_providers
from ortforge.tuning.runner import LocalRunner, MeasureTarget, entry_files

RETRIES = 3  # a task is tried on this many nodes before its failure is the run's


def remote_build(model_bytes: bytes, calibration: FeedSet, evaluation: FeedSet, judge: Any, candidate: Candidate,
                 stages: dict[str, dict[str, bytes]] | None = None) -> tuple[str, dict[str, bytes]]:  # fmt: skip
    """On a node: the local runner's build, in a scratch cache holding the pipeline's earlier `stages` (their cache
    entries, built before); returns the entry's key and files."""
    import onnx

    model = from_proto(onnx.load_from_string(model_bytes))
    with tempfile.TemporaryDirectory(prefix="ortforge-node-") as scratch:
        runner = LocalRunner(model, calibration, evaluation, judge, Path(scratch))
        for stage in candidate.stages[:-1]:
            runner.store_files(stage, (stages or {})[runner.entry(stage).name])
        runner.build(candidate)
        folder = runner.entry(candidate)
        return folder.name, entry_files(folder)


def remote_exclusion(model_bytes: bytes, calibration: FeedSet, evaluation: FeedSet, judge: Any, candidate: Candidate, built: dict[str, bytes],
                     seconds: float | None, keep_s: float) -> tuple[Candidate | None, str | None]:  # fmt: skip
    """On a node: the local runner's exclusion search for `candidate`, whose cache entry (`built`, its files) comes along
    so that it is not quantized again there; returns what it found and its cache record (None when it ran out of time)."""
    import onnx

    model = from_proto(onnx.load_from_string(model_bytes))
    with tempfile.TemporaryDirectory(prefix="ortforge-node-") as scratch:
        runner = LocalRunner(model, calibration, evaluation, judge, Path(scratch))
        runner.store_files(candidate, built)
        trial = runner.build(candidate)  # from the entry just stored
        found = runner.exclusion(trial, deadline=Deadline(seconds) if seconds else None, keep_s=keep_s)
        record = runner.exclusion_record(candidate)
        return found, record.read_text() if record.is_file() else None


def remote_measure(items: list[tuple[str, bytes, dict, int]], evaluation: FeedSet, options: BenchOptions) -> tuple[BenchReport, dict]:
    """On a node: the interleaved bench of the given models (label, model bytes, session config, streams), and where it ran."""
    import ray

    from ortforge.core.session import SessionConfig

    start = time.time()
    with tempfile.TemporaryDirectory(prefix="ortforge-node-") as scratch:
        variants = []
        for index, (label, data, config, streams) in enumerate(items):
            path = Path(scratch) / f"m{index}.onnx"
            path.write_bytes(data)
            variants.append(Variant(label, load_model(path, check=False), SessionConfig.from_dict(config), evaluation, streams))
        report = bench(variants, options)
    return report, {"node": ray.get_runtime_context().get_node_id(), "host": host_id(), "start": start, "end": time.time()}


class RayRunner:
    """`TrialRunner` over a cluster, for one model measured for one target; the cache and the scheduler are shared."""

    def __init__(self, local: LocalRunner, scheduler: Scheduler, target: str, ray: Any) -> None:
        if local.model.external_data_files():
            raise UserError(f"{local.model.name}: the ray runner carries models as bytes; models with external data (over 2 GB) tune with --runner local")
        self.local, self.scheduler, self.target, self.ray = local, scheduler, target, ray
        self.model = local.model
        # Into the object store once: every task on every node reads them from there.
        self._model = ray.put(local.model.proto.SerializeToString())
        self._calibration, self._evaluation, self._judge = ray.put(local.calibration), ray.put(local.evaluation), ray.put(local.judge)
        self.measurements: list[dict] = []  # where and when each measurement ran (the record's "measured_on")
        self.retried: list[str] = []  # tasks a lost node forced onto another node
        self.deadline: Deadline | None = None
        self._count = threading.Lock()  # builds finish on several threads at once
        self._searching: threading.Thread | None = None  # the thread running the search (bind_deadline)
        self._granted: dict[str, float] = {}  # cache entry -> when its build got a node slot
        self._remote: dict[Any, Any] = {}  # function -> its Ray remote function
        self.queued_s = 0.0  # time spent waiting for a node slot behind other pairs' work

    def bind_deadline(self, deadline: Deadline) -> None:
        """The search's deadline (called from the search's thread): time that thread waits for a node behind other
        pairs' builds and timings is not this search's, so it moves the deadline later instead of cutting its stages."""
        self.deadline, self._searching = deadline, threading.current_thread()

    def _queued(self, waited: float) -> None:
        """A slot's wait, given back to the deadline when the search itself waited (prefetched builds wait side by side,
        their waits would add up to more than the time that passed)."""
        if threading.current_thread() is not self._searching:
            return
        self.queued_s += waited
        if self.deadline is not None:
            self.deadline.started += waited

    def hold(self, what: str) -> Any:
        """The driver's own computing for this search, kept off timings on the driver's host (`Scheduler.driver_slot`)."""
        return self.scheduler.driver_slot(host_id(), f"{what} of {self.model.name}", on_wait=self._queued)

    @property
    def built(self) -> int:
        return self.local.built

    @property
    def folder(self) -> Path:
        return self.local.folder

    def _pinned(self, function: Any, node: Node) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if function not in self._remote:  # registered with Ray once per runner, not once per task
            self._remote[function] = self.ray.remote(function)
        return self._remote[function].options(num_cpus=1, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False))

    def _lost(self, exc: BaseException) -> bool:
        """Whether a task failed because its node or worker went away (retry elsewhere), not because of the work."""
        exceptions = self.ray.exceptions
        return isinstance(exc, (exceptions.NodeDiedError, exceptions.WorkerCrashedError, exceptions.ActorDiedError, exceptions.ObjectLostError,
                                exceptions.TaskUnschedulableError, exceptions.RaySystemError))  # fmt: skip

    def build(self, candidate: Candidate) -> Trial:
        cached = self.local.cached(candidate)
        if cached is not None:
            return cached
        if candidate.kind == "fp32":  # judged in the driver, on the reference outputs it already holds
            with self.hold("judging fp32"):
                return self.local.build(candidate)
        # A pipeline's earlier stages first (each built once, anywhere, and cached here), carried to the node with it.
        stages = {self.local.entry(stage).name: self._files_of(stage) for stage in candidate.stages[:-1]}
        entry = self.local.entry(candidate)
        key = entry.name
        waiting = self.scheduler.claim(str(entry))  # two targets asking for one build at once: the second waits for the first
        if waiting is not None:
            asked = time.monotonic()
            waiting.wait()
            # The search waited on a build started ahead (prefetched, or another pair's): what of that wait the build spent
            # queued for a slot behind other work is not this search's time.
            done = time.monotonic()
            self._queued(max(0.0, min(done, self._granted.get(str(entry), done)) - asked))
            return self.local.cached(candidate) or self.build(candidate)  # its builder failed: try it here, failures surface
        try:
            name, files = self._on_a_node("build", f"{candidate.label} of {self.model.name}", lambda node: self._pinned(remote_build, node).remote(self._model, *self._data_args(), candidate, stages),
                                          str(entry))  # fmt: skip
            if name != key:
                raise RuntimeError(f"a node keyed {candidate.label} as {name}, this driver as {key}: the cache would split")
            self.local.store_files(candidate, files)
            with self._count:
                self.local.built += 1
        finally:
            self.scheduler.built(str(entry))
        trial = self.local.cached(candidate)
        assert trial is not None
        trial.cached = False  # built in this run, on a node
        return trial

    def _files_of(self, stage: Candidate) -> dict[str, bytes]:
        """A stage's cache entry files, built first when this cache lacks it."""
        self.build(stage)
        return entry_files(self.local.entry(stage))

    def prefetch(self, candidates: Sequence[Candidate]) -> None:
        """Start building every candidate now, each on a free node (the search then takes them one by one, as built):
        one model's builds run in parallel across the cluster, not only different models' builds."""
        for candidate in candidates:
            threading.Thread(target=self._quietly_build, args=(candidate,), daemon=True).start()

    def _quietly_build(self, candidate: Candidate) -> None:
        try:
            self.build(candidate)
        except Exception:  # noqa: BLE001 - the search's own build() call of this candidate meets the failure and reports it
            pass

    def _data_args(self) -> tuple[Any, Any, Any]:
        return self._calibration, self._evaluation, self._judge

    def _on_a_node(self, kind: str, what: str, submit: Any, entry: str = "") -> Any:
        """Run a build-kind task on a free node, retried on another one when a node is lost."""

        def granted(waited: float) -> None:  # when the slot came: a search waiting on this entry is credited the queue before it
            self._granted[entry or what] = time.monotonic()
            self._queued(waited)

        for attempt in range(RETRIES):
            with self.scheduler.build_slot(what, kind, on_wait=granted) as node:
                try:
                    return self.ray.get(submit(node))
                except Exception as exc:
                    if not self._lost(exc) or attempt == RETRIES - 1:
                        raise
                    self.scheduler.lost(node)
                    self.retried.append(f"{kind} of {what}: node {node.node_id[:8]} lost, retried on another node")
        raise AssertionError("unreachable")

    def exclusion(self, trial: Trial, progress: Progress | None = None, *, deadline: Deadline | None = None, keep_s: float = 0.0) -> Candidate | None:
        if self.local.exclusion_record(trial.candidate).is_file():  # searched before (a resumed run): the nodes found then
            return self.local.exclusion(trial)
        (progress or silent)(f"exclusion search for {trial.label} on a node", 0.0)
        seconds = deadline.left if deadline is not None else None
        built = entry_files(self.local.entry(trial.candidate))
        found, record = self._on_a_node("exclusion search", f"{trial.label} of {self.model.name}", lambda node: self._pinned(remote_exclusion, node).remote(
            self._model, *self._data_args(), trial.candidate, built, seconds, keep_s))  # fmt: skip
        if record is not None:  # kept in the driver's cache, as a local search keeps it
            path = self.local.exclusion_record(trial.candidate)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, record)
        return found

    def measure(self, targets: Sequence[MeasureTarget], options: BenchOptions, progress: Progress | None = None) -> BenchReport:
        items = [(t.label, self._bytes_of(t.trial), t.config.to_dict(), t.streams) for t in targets]
        shown = progress or silent
        while True:
            with self.scheduler.measure_slot(self.target, f"{self.model.name} ({len(items)} variants)", on_wait=self._queued) as node:
                shown(f"measuring {len(items)} variant(s) on node {node.node_id[:8]} (host {node.host})", 0.0)
                try:
                    report, where = self.ray.get(self._pinned(remote_measure, node).remote(items, self._evaluation, options))
                except Exception as exc:
                    if not self._lost(exc):
                        raise
                    self.scheduler.lost(node)
                    self.retried.append(f"measurement: node {node.node_id[:8]} lost, retried on another node of target {self.target}")
                    if not self.scheduler.hosts_of(self.target):
                        raise NoNodeLeft(self.target) from None
                    continue
            self.measurements.append({**where, "target": self.target, "variants": [t.label for t in targets]})
            return report

    def _bytes_of(self, trial: Trial) -> bytes:
        if trial.model is None:
            raise UserError(f"{trial.label}: nothing to measure (no model was built)")
        if trial.model.path is not None and trial.model.path.is_file() and not trial.model.external_data_files():
            return trial.model.path.read_bytes()
        return trial.model.proto.SerializeToString()


@dataclass
class Cluster:
    """A connected cluster: the ray module, its ortforge targets by id, and the scheduler every runner shares."""

    ray: Any
    targets: dict[str, Target]
    scheduler: Scheduler

    def hold(self, what: str, on_wait: Callable[[float], None] | None = None) -> Any:
        """The driver's own computing, kept off timings on this host when it is also a node's (`Scheduler.driver_slot`)."""
        return self.scheduler.driver_slot(host_id(), what, on_wait=on_wait)

    def runner_for(self, target: Target) -> Callable[[Any], Any]:
        """A factory turning tune's local runner (its cache) into a runner on this cluster for `target`."""
        return lambda local: RayRunner(local, self.scheduler, target.id, self.ray)

    def tune_arguments(self, target: Target) -> dict[str, Any]:
        """What a tune for `target` takes from this cluster: its runner, the target's EPs, and the host lock's hold."""
        return {"runner": self.runner_for(target), "providers": target_providers(target), "hold": self.hold}


@contextmanager
def connected(address: str | None) -> Iterator[Cluster]:
    """The Ray cluster at `address` (default: the one this machine joined), its ortforge nodes found and described."""
    ray = ray_module()
    where = address or "the default address"
    try:
        ray.init(address=address or "auto", log_to_driver=False, configure_logging=False)
    except ConnectionError as exc:
        raise UserError(f"no Ray cluster at {where}: {first_line(exc)}", hint="start one: ortforge cluster node") from None
    try:
        nodes, targets = identify_nodes(ray, cluster_nodes(ray))
        if not nodes:
            raise UserError(f"the Ray cluster at {where} has no node with ortforge", hint="start nodes with `ortforge cluster node`")
        yield Cluster(ray, targets, Scheduler(nodes, names={t.id: t.name for t in targets.values()}))
    finally:
        ray.shutdown()
