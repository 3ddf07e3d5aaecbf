"""The fleet's decisions on scripted inputs, no Ray and no timing races: the host lock (tuning/cluster.Scheduler) and pair folders."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ortforge.tuning.cluster import Node, NoNodeLeft, Scheduler


def _nodes() -> list[Node]:
    # Host h1 runs a node of target A and one of target B (two node processes on one machine); host h2 runs one of A.
    return [Node("a1", "A", "h1", 1), Node("b1", "B", "h1", 1), Node("a2", "A", "h2", 2)]


def test_a_measurement_takes_a_node_of_its_target_on_a_host_that_runs_nothing():
    scheduler = Scheduler(_nodes())
    with scheduler.measure_slot("B") as node:
        assert node.node_id == "b1" and scheduler.measuring == {"h1"}
        with scheduler.measure_slot("A") as other:  # h1 is timing: A goes to h2
            assert other.node_id == "a2"
        with scheduler.build_slot() as build:  # builds avoid hosts that are timing
            assert build.host == "h2"
    assert scheduler.measuring == set() and [a.kind for a in scheduler.log] == ["measure", "build", "measure"]


def test_a_measurement_waits_for_the_builds_on_its_host_and_new_builds_wait_for_it():
    scheduler = Scheduler([Node("b1", "B", "h1", 2)])
    events: list[str] = []
    first = scheduler.build_slot("first build")
    first.__enter__()

    def measure() -> None:
        with scheduler.measure_slot("B"):
            events.append("measure start")
            time.sleep(0.1)
            events.append("measure end")

    def late_build() -> None:
        time.sleep(0.05)  # asks after the measurement started waiting
        with scheduler.build_slot("late build", on_wait=queued.append):
            events.append("late build")

    queued: list[float] = []

    threads = [threading.Thread(target=measure), threading.Thread(target=late_build)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert events == []  # the running build holds the host; the late build may not slip in before the waiting measurement
    first.__exit__(None, None, None)
    for thread in threads:
        thread.join(timeout=5)
    assert events == ["measure start", "measure end", "late build"]
    assert queued and queued[0] >= 0.2  # told how long it queued (a search gives that time back to its deadline)


def test_a_target_without_live_nodes_is_never_measured_elsewhere():
    scheduler = Scheduler(_nodes())
    scheduler.lost(scheduler.nodes[1])  # b1, the only node of B
    with pytest.raises(NoNodeLeft, match="no live node of target B"):
        with scheduler.measure_slot("B"):
            pass
    with scheduler.build_slot() as node:  # builds go on, on what is left
        assert node.alive and node.node_id != "b1"


def test_one_build_per_cache_entry_when_two_targets_ask_at_once():
    scheduler = Scheduler(_nodes())
    assert scheduler.claim("entry") is None  # the first asker builds
    waiting = scheduler.claim("entry")
    assert waiting is not None and not waiting.is_set()  # the second waits for it
    scheduler.built("entry")
    assert waiting.is_set() and scheduler.claim("entry") is None  # stored: a later claim (after a failure) may build again


def test_pairs_of_two_models_with_one_file_name_get_folders_of_their_own(tmp_path):
    from types import SimpleNamespace

    from ortforge.core.target import Target
    from ortforge.tuning.fleet import run_pairs

    target = Target("abc", "sim a")
    model = SimpleNamespace(content_hash=lambda: "abc123")
    jobs = [SimpleNamespace(reference=str(tmp_path / folder / "model.onnx"), model=model) for folder in ("a", "b")]
    ran: list = []
    report = SimpleNamespace(record={"chosen": {"label": "fp32"}, "summary": {"speedup": "1.00x", "accuracy": "cosine 1"}})
    results = run_pairs([(job, target) for job in jobs], tmp_path / "out", lambda job, t, folder: ran.append(folder) or report, parallel=False)
    assert [r.folder for r in results] == ["model/sim-a", "model-2/sim-a"] and len(set(ran)) == 2
    assert [r.winner for r in results] == ["fp32", "fp32"]


def test_the_drivers_own_computing_on_a_node_host_never_overlaps_a_timing_there():
    scheduler = Scheduler(_nodes())
    events: list[str] = []
    measuring = scheduler.measure_slot("B")  # takes host h1
    measuring.__enter__()

    def driver() -> None:
        with scheduler.driver_slot("h1", "reference run"):
            events.append("driver")

    thread = threading.Thread(target=driver)
    thread.start()
    time.sleep(0.15)
    assert events == []  # waits for the timing on its host
    measuring.__exit__(None, None, None)
    thread.join(timeout=5)
    assert events == ["driver"]
    with scheduler.driver_slot("h1", "offline optimization"):  # and while it computes, no timing starts on h1
        with scheduler.measure_slot("A") as node:
            assert node.host == "h2"
    with scheduler.driver_slot("elsewhere", "reference run"):  # a driver off the nodes' hosts takes no lock at all
        assert scheduler.driving == {"h1": 0}
    assert [a.kind for a in scheduler.log].count("driver") == 2  # the free one is not logged: it held nothing


def test_the_activity_line_names_what_every_node_does():
    lines: list[str] = []
    scheduler = Scheduler(_nodes(), names={"A": "avx512", "B": "avx2"}, watch=lines.append)
    with scheduler.build_slot("static int8", "build"):
        assert "a1 (avx512) build static int8;" in lines[-1] and "b1 (avx2) idle" in lines[-1]
    scheduler.lost(scheduler.nodes[1])
    assert "b1 (avx2) lost" in scheduler.activity_line() and lines[-1].endswith("a2 (avx512) idle")


def test_the_printed_node_command_pastes_into_a_shell_as_it_runs():
    import json
    import shlex
    import subprocess
    import sys

    printed = subprocess.run([sys.executable, "-m", "ortforge", "cluster", "node", "--dry-run", "--address", "head:6379", "--target-name", "sim a"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    words = shlex.split(printed.stdout)
    assert words[0] == "ORTFORGE_TARGET_NAME=sim a" and words[2:4] == ["start", "--address=head:6379"]
    resources = json.loads(next(w for w in words if w.startswith("--resources=")).removeprefix("--resources="))
    assert sorted(key.split("_")[1] for key in resources) == ["host", "target"]


def test_stopping_a_local_cluster_takes_its_renamed_children_too(tmp_path):
    """A process whose command line names the port, and its child, which (like Ray's agents) does not."""
    import os
    import subprocess
    import sys

    from ortforge.tuning.cluster import stop_local_cluster

    port = 6000 + os.getpid() % 1000
    child = "import time, subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", child, "ray", f"--port={port}"])
    time.sleep(1.0)
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == parent.pid]
    assert children
    assert stop_local_cluster(port) >= 2
    parent.wait(timeout=10)
    time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in (Path(f"/proc/{pid}") / "stat").read_text().split()[2] for pid in children)


def _parent(proc) -> int:  # noqa: ANN001 - a /proc entry
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
