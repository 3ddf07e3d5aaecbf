"""tune-many on a real Ray cluster on this machine: two node processes playing two targets, builds anywhere, timings only on
each target's nodes and never two at once on one host, builds byte-identical to the local runner's."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the fleet tests need the ray extra: pip install 'ortforge[ray]'")

from helpers import conv_net, linear_model, save  # noqa: E402
from ortforge.commands.tune import prepare_tune  # noqa: E402
from ortforge.commands.tune_many import tune_many  # noqa: E402
from ortforge.tuning.cluster import stop_local_cluster  # noqa: E402

TARGETS = ("sim-a", "sim-b")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ortforge", *args], capture_output=True, text=True, timeout=180,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    """A head and one more node on this machine, 1 CPU each, as two simulated targets; stopped afterwards."""
    port = _free_port()
    head = _cli("cluster", "node", "--target-name", TARGETS[0], "--port", str(port), "--cpus", "1")
    assert head.returncode == 0, head.stderr
    address = f"127.0.0.1:{port}"
    try:
        node = _cli("cluster", "node", "--address", address, "--target-name", TARGETS[1], "--cpus", "1")
        assert node.returncode == 0, node.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = _cli("cluster", "status", "--address", address, "--json")
            if status.returncode == 0 and len(json.loads(status.stdout)["nodes"]) == 2:
                break
            time.sleep(1)
        yield address, json.loads(status.stdout)["nodes"]
    finally:
        stop_local_cluster(port)


@pytest.fixture(scope="module")
def fleet(cluster, tmp_path_factory):
    address, nodes = cluster
    folder = tmp_path_factory.mktemp("fleet")
    patch = pytest.MonkeyPatch()
    patch.setenv("ORTFORGE_CACHE", str(folder / "cache"))
    models = [save(conv_net(), folder / "cnn.onnx"), save(linear_model(64, batch=1), folder / "linear.onnx")]
    report = tune_many([str(m) for m in models], folder / "out", runner="ray", address=address, time_budget_s=45, samples=8, calib_samples=4)
    yield folder, models, nodes, report
    patch.undo()


def test_one_artifact_per_model_and_target_measured_only_on_its_target(fleet):
    folder, models, nodes, report = fleet
    assert sorted((Path(p.model).name, p.target.name) for p in report.pairs) == sorted((m.name, t) for m in models for t in TARGETS)
    assert all(not p.error for p in report.pairs), [p.error for p in report.pairs]
    index = json.loads((folder / "out" / "index.json").read_text())
    assert len(index["pairs"]) == 4 and (folder / "out" / "index.html").is_file()
    node_target = {n["node"]: n["target"] for n in nodes}
    for pair in report.pairs:
        record = json.loads((folder / "out" / pair.folder / "ortforge.json").read_text())
        assert record["measured_on"], pair.folder
        for measurement in record["measured_on"]:  # recorded by the node itself
            assert measurement["target"] == pair.target.id and node_target[measurement["node"]] == pair.target.id


def test_no_two_measurements_on_one_host_overlapped(fleet):
    folder, _, _, report = fleet
    spans = []
    for pair in report.pairs:
        record = json.loads((folder / "out" / pair.folder / "ortforge.json").read_text())
        spans += [(m["host"], m["start"], m["end"]) for m in record["measured_on"]]
    for host in {h for h, _, _ in spans}:
        ordered = sorted((s, e) for h, s, e in spans if h == host)
        assert all(later[0] >= earlier[1] for earlier, later in zip(ordered, ordered[1:])), ordered
    builds = [a for a in report.activity if a["kind"] == "build"]
    measures = [a for a in report.activity if a["kind"] == "measure"]
    # Each candidate was built once, for both targets (the cache is shared): one build per cache entry.
    entries = [e for e in (folder / "cache" / "tune").glob("*/*") if (e / "result.json").is_file()
               and json.loads((e / "result.json").read_text())["label"] != "fp32"]  # fmt: skip
    assert len(builds) == len(entries) and len({b["node"] for b in builds}) == 2  # on both nodes
    assert builds and measures  # and no build ran on a host while it measured:
    assert not any(b["host"] == m["host"] and b["start"] < m["end"] and m["start"] < b["end"] for b in builds for m in measures)
    # Nor did the driver's own computing (reference runs, offline optimization, reopen checks) on this host, also the nodes'.
    driver = [a for a in report.activity if a["kind"] == "driver"]
    assert driver and not any(d["host"] == m["host"] and d["start"] < m["end"] and m["start"] < d["end"] for d in driver for m in measures)


def test_cluster_builds_are_the_local_runner_builds_byte_for_byte(fleet, tmp_path, monkeypatch):
    from ortforge.accuracy.judge import Judge
    from ortforge.accuracy.tolerance import default_tolerances
    from ortforge.core.session import run_outputs
    from ortforge.tuning.runner import LocalRunner

    folder, models, _, _ = fleet
    job = prepare_tune(str(models[0]), samples=8, calib_samples=4)
    reference = run_outputs(job.model, job.evaluation)
    judge = Judge(reference, default_tolerances(reference), None, feeds=job.evaluation, reference_label="fp32")
    cluster_cache = LocalRunner(job.model, job.calibration, job.evaluation, judge, folder / "cache" / "tune")
    local = LocalRunner(job.model, job.calibration, job.evaluation, judge, tmp_path / "local")
    built = [entry for entry in cluster_cache.folder.iterdir() if (entry / "model.onnx").is_file()]
    assert built, "the cluster built no candidate with a model"
    compared = 0
    for entry in built:
        label = json.loads((entry / "result.json").read_text())["label"]
        candidate = next((c for c in _candidates(job) if c.label == label and cluster_cache.entry(c) == entry), None)
        if candidate is None or candidate.kind == "fp32":
            continue
        local.build(candidate)
        assert (local.entry(candidate) / "model.onnx").read_bytes() == (entry / "model.onnx").read_bytes(), label
        compared += 1
    assert compared >= 1


def _candidates(job) -> list:  # noqa: ANN001
    from ortforge.tuning.candidates import precision_candidates

    return precision_candidates(job.family, ["CPUExecutionProvider"], job.transformer)


def _raylet_pid(port: int) -> int | None:
    """The raylet of the node started with this node-manager port (its command line names it)."""
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "raylet" in command and f"--node_manager_port={port}" in command:
            return int(proc.name)
    return None


def test_a_node_killed_mid_run_loses_nothing_and_misattributes_nothing(cluster, tmp_path, monkeypatch):
    """A third node (a second one of target sim-b) is killed while it works: its task goes to the other sim-b node."""
    import signal
    import threading

    from ortforge.core.target import TARGET_ENV, host_id, this_target
    from ortforge.tuning.cluster import node_command

    address, nodes = cluster
    monkeypatch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    manager_port = _free_port()
    command = node_command(address, this_target(TARGETS[1]), host_id(), cpus=1) + [f"--node-manager-port={manager_port}"]
    started = subprocess.run(command, env={**os.environ, TARGET_ENV: TARGETS[1], "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    victim = None
    for _ in range(60):
        status = json.loads(_cli("cluster", "status", "--address", address, "--json").stdout)["nodes"]
        victim = next((n["node"] for n in status if n["node"] not in {m["node"] for m in nodes}), None)
        if victim:
            break
        time.sleep(1)
    assert victim is not None
    # The victim first in the scheduler's list, so it gets work early; each slot it is given is seen here.
    from ortforge.tuning import cluster as cluster_module
    from ortforge.tuning import ray_runner

    real_nodes, real_slot = cluster_module.cluster_nodes, cluster_module.Scheduler.build_slot
    given: list[str] = []
    monkeypatch.setattr(ray_runner, "cluster_nodes", lambda ray: sorted(real_nodes(ray), key=lambda n: n.node_id != victim))

    @contextlib.contextmanager
    def watched_slot(self, what="", kind="build", on_wait=None):  # noqa: ANN001, ANN202
        with real_slot(self, what, kind, on_wait) as node:
            given.append(node.node_id)
            yield node

    monkeypatch.setattr(cluster_module.Scheduler, "build_slot", watched_slot)
    model = save(conv_net(), tmp_path / "cnn.onnx")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(report=tune_many([str(model)], tmp_path / "out", runner="ray", address=address,
                                                                             time_budget_s=45, samples=8, calib_samples=4)))  # fmt: skip
    runner.start()
    killed_at = None
    deadline = time.monotonic() + 60
    while runner.is_alive() and time.monotonic() < deadline:
        if victim in given:  # killed as its first task starts
            pid = _raylet_pid(manager_port)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            break
        time.sleep(0.05)
    runner.join(timeout=300)
    assert killed_at is not None, "the third node never got work"
    report = outcome["report"]
    assert all(not p.error for p in report.pairs), [p.error for p in report.pairs]  # the run completed for both targets
    target_of = {n["node"]: n["target"] for n in nodes}
    by_name = {n["target_name"]: n["target"] for n in nodes}
    for pair in report.pairs:
        record = json.loads((tmp_path / "out" / pair.folder / "ortforge.json").read_text())
        for measurement in record["measured_on"]:
            assert measurement["target"] == pair.target.id  # never judged on another target
            assert target_of.get(measurement["node"], by_name[TARGETS[1]]) == pair.target.id  # the victim was a sim-b node
            assert measurement["node"] != victim or measurement["end"] <= killed_at  # nothing credited to the dead node after its death
    notes = [note for pair in report.pairs for note in json.loads((tmp_path / "out" / pair.folder / "ortforge.json").read_text())["notes"]]
    assert any("lost, retried on another node" in note for note in notes), notes


def test_a_driver_interrupted_and_restarted_resumes_from_the_shared_cache(cluster, tmp_path):
    """Ctrl-C in the driver once a first candidate is built; `--resume` then builds nothing the first driver stored."""
    import signal

    address, _ = cluster
    env = {**os.environ, "ORTFORGE_CACHE": str(tmp_path / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    model = save(conv_net(), tmp_path / "cnn.onnx")
    command = [sys.executable, "-m", "ortforge", "tune-many", str(model), "-o", str(tmp_path / "out"), "--runner", "ray", "--address", address,
               "--time-budget", "45s", "--samples", "8", "--calib-samples", "4"]  # fmt: skip
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip

    def stored() -> dict[str, float]:  # cache entries of built candidates, with when they were stored
        return {str(e): e.stat().st_mtime for e in (tmp_path / "cache" / "tune").glob("*/*/result.json")
                if json.loads(e.read_text())["label"] != "fp32"}  # fmt: skip

    deadline = time.monotonic() + 120
    while driver.poll() is None and not stored() and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    before = stored()
    assert before, "the driver stored no build before it was interrupted"
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["state"] == "interrupted"
    labels = {json.loads(Path(e).read_text())["label"] for e in before}

    patch = pytest.MonkeyPatch()
    patch.setenv("ORTFORGE_CACHE", str(tmp_path / "cache"))
    try:
        report = tune_many([str(model)], tmp_path / "out", runner="ray", address=address, time_budget_s=45, samples=8, calib_samples=4, resume=True)
    finally:
        patch.undo()
    assert all(not p.error for p in report.pairs) and len(report.pairs) == 2
    rebuilt = [a["what"] for a in report.activity if a["kind"] == "build" and any(a["what"].startswith(f"{label} of ") for label in labels)]
    assert rebuilt == []  # what the first driver stored was read from the cache, not built again
    assert all(stored()[entry] == when for entry, when in before.items())


def test_a_plain_ray_node_is_asked_for_its_target_and_host(cluster):
    """A node started without ortforge's announcements (a KubeRay pod, a plain `ray start`) tells its target and host."""
    import signal

    from ortforge.core.target import HOST_ENV, TARGET_ENV
    from ortforge.tuning.cluster import ray_executable

    address, nodes = cluster
    manager_port = _free_port()
    env = {**os.environ, TARGET_ENV: TARGETS[1], HOST_ENV: "pod-host", "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([ray_executable(), "start", f"--address={address}", "--num-cpus=1", f"--node-manager-port={manager_port}",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        plain = None
        for _ in range(60):
            status = json.loads(_cli("cluster", "status", "--address", address, "--json").stdout)["nodes"]
            plain = next((n for n in status if n["node"] not in {m["node"] for m in nodes}), None)
            if plain:
                break
            time.sleep(1)
        sim_b = next(n for n in nodes if n["target_name"] == TARGETS[1])
        assert plain is not None and (plain["target"], plain["target_name"], plain["host"]) == (sim_b["target"], TARGETS[1], "pod-host")
    finally:
        pid = _raylet_pid(manager_port)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
