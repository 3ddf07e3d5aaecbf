"""The Ray cluster as ortforge sees it: nodes announcing their target and host, and a scheduler in the driver that
hands out node slots so that timings stay clean.

A node started with `ortforge cluster node` (or the `ray start` line it prints) carries two custom resources:
`ortforge_target_<id>` and `ortforge_host_<id>`. The driver reads them from `ray.nodes()` and pins every task to a
node (NodeAffinitySchedulingStrategy). The host lock is kept here, in the one driver: a measurement takes a whole
host (no build and no other measurement on any node of that host meanwhile), builds take one CPU slot of a node
whose host is not measuring. Ray's own resources are per node, so they could not lock a host that runs several
node processes; a lock in the driver can, with no distributed lock to leak when a node dies.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ortforge.core.errors import OptionError, UserError
from ortforge.core.runtime import REMOTE_PROVIDERS
from ortforge.core.target import Target

TARGET_PREFIX = "ortforge_target_"
HOST_PREFIX = "ortforge_host_"
WAIT_S = 0.05


def ray_module():  # noqa: ANN201 - the ray module
    """Ray, or one line saying how to get it (it is the optional extra `ortforge[ray]`)."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray runner needs Ray: pip install 'ortforge[ray]'") from None
    return ray


def ray_executable() -> str:
    """The `ray` command of this Python's environment (beside its interpreter), else the one on PATH."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.is_file() else shutil.which("ray") or "ray"


def node_command(address: str | None, target: Target, host: str, *, port: int = 6379, cpus: int | None = None) -> list[str]:
    """The `ray start` command line of a node announcing `target` and `host` (a head when `address` is None)."""
    ray = ray_executable()
    resources = f'{{"{TARGET_PREFIX}{target.id}": 1000, "{HOST_PREFIX}{host}": 1000}}'
    where = ["--head", f"--port={port}", "--include-dashboard=false"] if address is None else [f"--address={address}"]
    return [ray, "start", *where, f"--resources={resources}", "--disable-usage-stats", *([f"--num-cpus={cpus}"] if cpus else [])]


@dataclass
class Node:
    node_id: str
    target: str  # target id
    host: str
    cpus: int
    builds: int = 0  # builds running on it now
    alive: bool = True


def cluster_nodes(ray) -> list[Node]:  # noqa: ANN001 - the ray module
    """The live nodes with CPUs, with the target and host they announce (`ortforge cluster node`); a node that announces
    none (a KubeRay pod, a plain `ray start`) has them empty until `identify_nodes` asks it."""
    found = []
    for info in ray.nodes():
        resources = info.get("Resources", {})
        if not info.get("Alive") or resources.get("CPU", 0) < 1:
            continue
        target = next((key.removeprefix(TARGET_PREFIX) for key in resources if key.startswith(TARGET_PREFIX)), "")
        host = next((key.removeprefix(HOST_PREFIX) for key in resources if key.startswith(HOST_PREFIX)), "")
        found.append(Node(info["NodeID"], target, host, max(1, int(resources.get("CPU", 1)))))
    return found


@dataclass(eq=False)  # each one is its own: `running.remove` takes this one, not an equal one
class Activity:
    """What a node did, for progress and for the record: build or measurement, when, for which candidate."""

    node: str
    host: str
    target: str
    kind: str  # "build", "exclusion search" (builds too), "measure", or "driver" (the driver's own computing, node "driver")
    what: str
    start: float
    end: float = 0.0


@dataclass
class Scheduler:
    """Node slots under the host lock: `measure_slot(target)` waits for a host of that target with nothing running,
    `build_slot()` for a free CPU on a node whose host is not measuring."""

    nodes: list[Node]
    measuring: set[str] = field(default_factory=set)  # hosts timing now
    log: list[Activity] = field(default_factory=list)
    condition: threading.Condition = field(default_factory=threading.Condition)
    building: dict[str, threading.Event] = field(default_factory=dict)  # cache entries being built now, by path
    waiting: dict[str, int] = field(default_factory=dict)  # targets with a measurement waiting for a host: no new builds there
    driving: dict[str, int] = field(default_factory=dict)  # hosts where the driver itself computes now: no timing starts there
    running: list[Activity] = field(default_factory=list)  # what every node (and the driver) does now
    names: dict[str, str] = field(default_factory=dict)  # target id -> its readable name, for the activity line
    watch: Callable[[str], None] | None = None  # told the activity line whenever a slot starts or ends

    def claim(self, entry: str) -> threading.Event | None:
        """None when this caller is to build `entry`; else the event set once whoever builds it has stored it."""
        with self.condition:
            if entry in self.building:
                return self.building[entry]
            self.building[entry] = threading.Event()
            return None

    def built(self, entry: str) -> None:
        with self.condition:
            self.building.pop(entry).set()

    def targets(self) -> set[str]:
        return {node.target for node in self.nodes if node.alive}

    def hosts_of(self, target: str) -> set[str]:
        return {node.host for node in self.nodes if node.alive and node.target == target}

    @contextmanager
    def build_slot(self, what: str = "", kind: str = "build", on_wait: Callable[[float], None] | None = None) -> Iterator[Node]:
        asked = time.monotonic()
        with self.condition:
            while True:
                # Hosts timing now, or wanted by a waiting measurement (builds there would starve it), take no new build.
                claimed = self.measuring | {n.host for n in self.nodes if n.alive and self.waiting.get(n.target)}
                free = [n for n in self.nodes if n.alive and n.host not in claimed and n.builds < n.cpus]
                if free:
                    node = min(free, key=lambda n: n.builds / n.cpus)
                    node.builds += 1
                    break
                if not any(n.alive for n in self.nodes):
                    raise UserError("no live ortforge node left in the cluster to build on")
                self.condition.wait(WAIT_S)
        if on_wait is not None:  # how long this slot was queued behind other work
            on_wait(time.monotonic() - asked)
        activity = self._started(Activity(node.node_id, node.host, node.target, kind, what, time.time()))
        try:
            yield node
        finally:
            with self.condition:
                node.builds -= 1
            self._ended(activity)

    @contextmanager
    def measure_slot(self, target: str, what: str = "", on_wait: Callable[[float], None] | None = None) -> Iterator[Node]:
        asked = time.monotonic()
        with self.condition:
            self.waiting[target] = self.waiting.get(target, 0) + 1  # its hosts take no new build while it waits
            try:
                node = self._wait_for_host(target)
            finally:
                self.waiting[target] -= 1
        if on_wait is not None:
            on_wait(time.monotonic() - asked)
        activity = self._started(Activity(node.node_id, node.host, node.target, "measure", what, time.time()))
        try:
            yield node
        finally:
            with self.condition:
                self.measuring.discard(node.host)
            self._ended(activity)

    @contextmanager
    def driver_slot(self, host: str, what: str = "", on_wait: Callable[[float], None] | None = None) -> Iterator[None]:
        """The driver's own computing (reference runs, offline optimization, the reopen check) on `host`: when that host
        is also a node's, it waits for timings there to end and none starts until it is done, as for a build."""
        if host not in {n.host for n in self.nodes}:
            yield
            return
        asked = time.monotonic()
        with self.condition:
            while host in self.measuring or any(n.host == host and n.alive and self.waiting.get(n.target) for n in self.nodes):
                self.condition.wait(WAIT_S)
            self.driving[host] = self.driving.get(host, 0) + 1
        if on_wait is not None:
            on_wait(time.monotonic() - asked)
        activity = self._started(Activity("driver", host, "", "driver", what, time.time()))
        try:
            yield
        finally:
            with self.condition:
                self.driving[host] -= 1
            self._ended(activity)

    def _started(self, activity: Activity) -> Activity:
        with self.condition:
            self.running.append(activity)
            line = self.activity_line()
        if self.watch is not None:
            self.watch(line)
        return activity

    def _ended(self, activity: Activity) -> None:
        activity.end = time.time()
        with self.condition:
            self.running.remove(activity)
            self.log.append(activity)
            self.condition.notify_all()
            line = self.activity_line()
        if self.watch is not None:
            self.watch(line)

    def activity_line(self) -> str:
        """What each node does now, one clause per node ("idle" included), the driver's work last when it has any."""
        def doing(activities: list[Activity]) -> str:
            return ", ".join(a.what if a.kind == "driver" else f"{'measuring' if a.kind == 'measure' else a.kind} {a.what}"
                             for a in activities) or "idle"  # fmt: skip

        clauses = [f"{n.node_id[:8]} ({self.names.get(n.target, n.target)}) " + (doing([a for a in self.running if a.node == n.node_id])
                   if n.alive else "lost") for n in self.nodes]  # fmt: skip
        driver = [a for a in self.running if a.node == "driver"]
        return "nodes: " + "; ".join(clauses + ([f"driver: {doing(driver)}"] if driver else []))

    def _wait_for_host(self, target: str) -> Node:
        """(Holding the condition.) A node of `target` whose host runs nothing, marked measuring."""
        while True:
            idle = [n for n in self.nodes if n.alive and n.target == target and n.host not in self.measuring and not self.driving.get(n.host)
                    and not any(m.builds for m in self.nodes if m.alive and m.host == n.host)]  # fmt: skip
            if idle:
                self.measuring.add(idle[0].host)
                return idle[0]
            if not self.hosts_of(target):
                raise NoNodeLeft(target)
            self.condition.wait(WAIT_S)

    def lost(self, node: Node) -> None:
        """A node that died: nothing more is scheduled on it."""
        with self.condition:
            node.alive = False
            self.condition.notify_all()


class NoNodeLeft(UserError):
    def __init__(self, target: str) -> None:
        super().__init__(f"no live node of target {target} is left to measure on: its candidates stay unmeasured")
        self.target = target


def identify_nodes(ray, nodes: list[Node]) -> tuple[list[Node], dict[str, Target]]:  # noqa: ANN001 - the ray module
    """The ortforge nodes and their targets, asked of the nodes themselves: one node per announced target, and every node
    that announces nothing (it tells its target and host; ORTFORGE_HOST names the host in containers). A node that
    cannot import ortforge takes no ortforge work."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def describe() -> dict:
        from ortforge.core.target import host_id, node_target

        return {**node_target().to_dict(), "host": host_id()}

    probe = ray.remote(describe)
    found: dict[str, Target] = {}
    kept = []
    for node in nodes:
        if node.target in found and node.host:
            kept.append(node)
            continue
        try:
            data = ray.get(probe.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote())
        except ray.exceptions.RayTaskError:  # no ortforge there (a bare head, another team's nodes)
            continue
        if node.target and data["id"] != node.target:
            raise UserError(f"node {node.node_id[:8]} announces target {node.target} but its ortforge computes {data['id']}: start it with "
                            "`ortforge cluster node` (the same ortforge and onnxruntime as its announced target)")  # fmt: skip
        node.target, node.host = data["id"], node.host or data["host"]
        found.setdefault(node.target, Target(data["id"], data["name"], data["facts"]))
        kept.append(node)
    return kept, found


def chosen_targets(available: dict[str, Target], asked: Sequence[str]) -> list[Target]:
    """The targets named in `asked` (by name or id; 'all' or nothing: every one), refused in one line when unknown."""
    if not asked or "all" in asked:
        return list(available.values())
    found = []
    for name in asked:
        match = next((t for t in available.values() if name in (t.name, t.id)), None)
        if match is None:
            known = ", ".join(f"{t.name} ({t.id})" for t in available.values())
            raise OptionError("targets", name, f"no such target here (targets: {known})")
        found.append(match)
    return found


def target_providers(target: Target) -> list[str]:
    """The EPs a target's session candidates may use (its ORT's, less remote ones)."""
    return [p for p in target.facts.get("providers", []) if p not in REMOTE_PROVIDERS]


def stop_local_cluster(port: int) -> int:
    """Kill this machine's Ray processes of the cluster on `port` only (`ray stop` stops every Ray cluster here), with
    their children (Ray's agents rename themselves, so only their parents name the port). Returns how many processes
    were stopped (Linux: read from /proc)."""
    import os
    import signal

    marks = (f":{port} ", f"--gcs_server_port={port} ", f"--port={port} ")
    parents: dict[int, int] = {}
    matched: set[int] = set()
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ") + " "
            parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "ray" in text and any(mark in text for mark in marks):
            matched.add(int(proc.name))
    doomed = set(matched)
    while True:  # the matched processes' descendants
        more = {pid for pid, parent in parents.items() if parent in doomed} - doomed
        if not more:
            break
        doomed |= more
    stopped = 0
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
            stopped += 1
        except OSError:
            pass
    return stopped
