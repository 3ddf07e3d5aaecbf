"""A target: a class of machine a tuned model is made for, and the physical host a process runs on.

Two machines are the same target when everything that can change a winner is the same: the ORT flavour and
version, its EPs, the CPU's architecture and ISA features, and the GPUs. The facts are hashed to a short id;
the name is readable. A fleet measures a candidate for target T only on nodes of T, one measurement per host
at a time, so the host is named too: several node processes on one machine share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ortforge.core import runtime
from ortforge.core.machine import machine_info

ID_LENGTH = 10


@dataclass(frozen=True)
class Target:
    id: str
    name: str
    facts: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "facts": self.facts}


def target_facts() -> dict[str, Any]:
    """What can change a winner on this machine, as stable JSON-ready values."""
    machine = machine_info()
    return {
        "onnxruntime": f"{runtime.flavour()} {runtime.version()}",
        "providers": sorted(runtime.available_providers()),
        "architecture": machine.cpu.architecture,
        "cpu_features": sorted(machine.cpu.features),
        "gpus": sorted(gpu.name for gpu in machine.gpus),
    }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:ID_LENGTH]


def this_target(name: str | None = None) -> Target:
    """This machine as a target. A `name` stands for a simulated target (tests, or two node processes on one machine
    playing two machines): it goes into the id, so differently named targets never share measurements."""
    facts = target_facts()
    readable = f"{facts['architecture']} {_headline(facts['cpu_features'])} {facts['onnxruntime']}" + (f" {'+'.join(facts['gpus'])}" if facts["gpus"] else "")
    if name:
        return Target(_digest({**facts, "simulated": name}), name, {**facts, "simulated": name})
    return Target(_digest(facts), readable, facts)


def _headline(features: list[str]) -> str:
    """The ISA features that decide most CPU winners, for a readable name."""
    for feature in ("amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "i8mm", "dotprod"):
        if feature in features:
            return feature
    return "baseline-isa"


TARGET_ENV = "ORTFORGE_TARGET_NAME"  # set on a node process: the simulated target it plays
HOST_ENV = "ORTFORGE_HOST"  # set on a node process: the host it is on, where the machine id cannot tell


def node_target() -> Target:
    """The target of this process: this machine, or the simulated one its node was started as."""
    return this_target(os.environ.get(TARGET_ENV) or None)


def host_id() -> str:
    """This physical machine (shared by every process and container on it that sees the same machine id)."""
    if os.environ.get(HOST_ENV):
        return re.sub(r"[^A-Za-z0-9_-]", "-", os.environ[HOST_ENV])
    for path in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return _digest(text)
    return _digest(socket.gethostname())
