"""tune-many on the zoo models: this machine alone (--runner local) against a Ray cluster of node processes on it
(--runner ray), then a projection of the wall time for more hosts per target from the stage times measured.

    python bench/fleet.py [--budget 90s] [--nodes 2] [--models zoo:magika zoo:ppocr-cls ...] [FOLDER]

Each run gets a cache of its own, so both build every candidate. The cluster's nodes all play this machine's target
on one host, so its measurements queue on that host exactly as in a real fleet with one machine per target, while its
builds spread over the nodes. Prints wall times, the per-stage times of each (model, target) pair, the winners of
both runs side by side, and the projection (the model it uses is printed with it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ZOO = ["zoo:magika", "zoo:ppocr-det", "zoo:ppocr-cls", "zoo:ppocr-rec", "zoo:silero-vad"]


def ortforge(*args: str, cache: Path) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ortforge", *args], capture_output=True, text=True,
                          env={**os.environ, "ORTFORGE_CACHE": str(cache), "RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
    return done.returncode, time.perf_counter() - start, done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def index(folder: Path) -> dict:
    return json.loads((folder / "index.json").read_text())


def stages(folder: Path, pair: dict) -> dict[str, float]:
    return json.loads((folder / pair["folder"] / "ortforge.json").read_text()).get("stages_s", {})


def projection(activity: list[dict], pairs: int, nodes: int) -> str:
    """Wall time for H hosts per target, from this run's build and measurement seconds.

    Builds spread over every node of the cluster (H hosts x `nodes` slots); measurements of one target queue per host,
    so H hosts run H of them at once. A lower bound, since a pair's measurements wait for its own builds."""
    build_s = sum(a["end"] - a["start"] for a in activity if a["kind"] != "measure")
    measure_s = sum(a["end"] - a["start"] for a in activity if a["kind"] == "measure")
    lines = [f"  builds {build_s:.0f} s of node time, measurements {measure_s:.0f} s of host time, {pairs} pairs; "
             "wall(H) = builds / (H x nodes per host) + measurements / H"]  # fmt: skip
    for hosts in (1, 2, 4, 8):
        lines.append(f"  {hosts} host(s) per target: ~{build_s / (hosts * nodes) + measure_s / hosts:.0f} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", help="where to write (default: a temporary folder)")
    parser.add_argument("--budget", default="90s", help="tune's --time-budget per (model, target) pair (default 90s)")
    parser.add_argument("--nodes", type=int, default=2, help="node processes of the cluster on this machine (default 2)")
    parser.add_argument("--models", nargs="+", default=ZOO, help="models (default: the five zoo models)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="ortforge-fleet-"))
    folder.mkdir(parents=True, exist_ok=True)

    code, local_s, errors = ortforge("tune-many", *args.models, "-o", str(folder / "local"), "--runner", "local", "--time-budget", args.budget,
                                     "--overwrite", cache=folder / "cache-local")  # fmt: skip
    print(f"--runner local: exit {code}, {local_s:.0f} s" + (f"\n{errors[-500:]}" if code else ""), flush=True)

    from ortforge.tuning.cluster import stop_local_cluster

    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        for index_ in range(args.nodes):
            where = ["--port", str(port)] if index_ == 0 else ["--address", address]
            started = subprocess.run([sys.executable, "-m", "ortforge", "cluster", "node", *where, "--cpus", "1"], capture_output=True, text=True,
                                     env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})  # fmt: skip
            if started.returncode:
                sys.exit(f"could not start node {index_}: {started.stderr[-300:]}")
        time.sleep(3)
        code, ray_s, errors = ortforge("tune-many", *args.models, "-o", str(folder / "ray"), "--runner", "ray", "--address", address,
                                       "--time-budget", args.budget, "--overwrite", cache=folder / "cache-ray")  # fmt: skip
        print(f"--runner ray ({args.nodes} node processes, one host): exit {code}, {ray_s:.0f} s" + (f"\n{errors[-500:]}" if code else ""), flush=True)
    finally:
        stop_local_cluster(port)

    local, ray = index(folder / "local"), index(folder / "ray")
    print(f"\n{'model':<16} {'local winner':<48} {'speed-up':<20} {'ray winner':<48} {'speed-up':<20}")
    by_model = {pair["model"]: pair for pair in ray["pairs"]}
    for pair in local["pairs"]:
        other = by_model.get(pair["model"], {})
        print(f"{pair['model']:<16} {pair['winner'] or pair['error'][:46]:<48} {pair['speedup']:<20} {other.get('winner', '-'):<48} {other.get('speedup', '-'):<20}")
    print("\nstage seconds per pair (local | ray):")
    for pair in local["pairs"]:
        other = by_model.get(pair["model"])
        shown = lambda s: ", ".join(f"{k} {v:.0f}" for k, v in s.items())  # noqa: E731
        print(f"  {pair['model']}: {shown(stages(folder / 'local', pair))} | {shown(stages(folder / 'ray', other)) if other else '-'}")
    print(f"\nprojection from the ray run's activity ({len(ray['activity'])} tasks):")
    print(projection(ray["activity"], len(ray["pairs"]), args.nodes))
    print(f"\nwall: local {local_s:.0f} s, ray {ray_s:.0f} s ({ray_s / local_s:.2f}x); folder {folder}")


if __name__ == "__main__":
    main()
