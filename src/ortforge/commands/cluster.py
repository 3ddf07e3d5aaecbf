"""`ortforge cluster node|status|stop`: start a Ray node that announces its target and host, list the cluster's nodes
by target, stop the Ray processes on this machine."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from ortforge.core.errors import UserError, first_line
from ortforge.core.target import HOST_ENV, TARGET_ENV, host_id, this_target
from ortforge.tuning.cluster import node_command, ray_executable, stop_local_cluster


@dataclass
class NodeStart:
    command: list[str]
    environment: dict[str, str]
    target: dict
    host: str
    started: bool

    def to_dict(self) -> dict:
        return self.__dict__


@dataclass
class ClusterStatus:
    address: str
    nodes: list[dict] = field(default_factory=list)  # node id, target id and name, host, CPUs

    def to_dict(self) -> dict:
        return self.__dict__


def cluster_node(address: str | None = None, *, target_name: str | None = None, host: str | None = None, port: int = 6379,
                 cpus: int | None = None, dry_run: bool = False) -> NodeStart:  # fmt: skip
    """Start a Ray node on this machine announcing its target (this machine's, or the simulated `target_name`) and its
    host; the head of a new cluster when `address` is None. `dry_run` only returns the command and its environment."""
    target, where = this_target(target_name), host or host_id()
    environment = {**({TARGET_ENV: target_name} if target_name else {}), **({HOST_ENV: host} if host else {})}
    command = node_command(address, target, where, port=port, cpus=cpus)
    if not dry_run:
        done = subprocess.run(command, env={**os.environ, **environment, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise UserError(f"ray start failed: {lines[-1] if lines else f'exit {done.returncode}'}")
    return NodeStart(command, environment, target.to_dict(), where, not dry_run)


def cluster_status(address: str | None = None) -> ClusterStatus:
    """The cluster's ortforge nodes with their target and host."""
    from ortforge.tuning.ray_runner import connected

    with connected(address) as cluster:
        return ClusterStatus(address or "auto", [{"node": n.node_id, "target": n.target, "target_name": cluster.targets[n.target].name,
                                                   "host": n.host, "cpus": n.cpus} for n in cluster.scheduler.nodes])  # fmt: skip


def cluster_stop(port: int | None = None) -> None:
    """Stop the Ray processes of this machine: those of the cluster on `port`, or every one (`ray stop`)."""
    if port is not None:
        if not stop_local_cluster(port):
            raise UserError(f"no Ray process of a cluster on port {port} runs here")
        return
    done = subprocess.run([ray_executable(), "stop", "--force"], capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"ray stop failed: {first_line(RuntimeError(done.stderr or done.stdout))}")
