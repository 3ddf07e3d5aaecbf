"""The whole gauntlet as a table: every bad input as a user types it, plus the slow cases the tests leave out.

    python bench/bad_inputs.py [--jobs 2] [--filter TEXT] [--no-slow] [--large FOLDER]

Runs each case of tests/gauntlet.py as its own `python -m ortforge ...` process in a fresh work folder and
checks what a user would see: the exit code (2), one line on stderr naming the culprit, no traceback, every
file of the folder unchanged (sha256 before and after) and nothing left behind. Then correct successes (good
inputs must still work), and the slow cases: tune and quantize --mode auto interrupted (Ctrl-C) part-way,
tune killed and re-run (it resumes from its cache), two tunes sharing one cache at once, and with --large a
>2 GB model (bench/large_model.py builds it) through every command. Prints one row per case and a summary.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench")]

from gauntlet import CASES, Case, build_work, folder_state  # noqa: E402
from helpers import PROGRESS_LINE, SETTINGS_LINE  # noqa: E402

ORTFORGE = [sys.executable, "-m", "ortforge"]


@dataclass
class Row:
    case: str
    command: str
    code: int | None
    wall_s: float
    problems: list[str] = field(default_factory=list)
    expected: str = "clean failure"  # or "correct success"

    @property
    def verdict(self) -> str:
        return "FAIL: " + "; ".join(self.problems) if self.problems else self.expected


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run([*ORTFORGE, *argv], cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return done.returncode, done.stderr, time.perf_counter() - start


def stderr_problems(stderr: str, parts: tuple[str, ...], code: int, wanted: int = 2) -> list[str]:
    # The settings line and progress lines (printed once work starts) are not errors; one error line must follow them.
    lines = [line for line in stderr.strip().splitlines() if line.strip() and not PROGRESS_LINE.match(line)
             and not (SETTINGS_LINE.match(line) and not line.startswith("ortforge:"))]  # fmt: skip
    found = []
    if code != wanted:
        found.append(f"exit {code}, expected {wanted}")
    if "Traceback" in stderr:
        found.append("traceback")
    elif wanted == 2 and len(lines) != 1:
        found.append(f"{len(lines)} lines on stderr")
    missing = [part for part in parts if part not in stderr]
    if missing:
        found.append(f"does not name {missing[0]!r}")
    return found


def gauntlet_case(case: Case, scratch: Path) -> Row:
    work = build_work(Path(tempfile.mkdtemp(dir=scratch)))
    argv = case.argv(work)
    before = folder_state(work)
    code, stderr, wall = run(argv, work, {"ORTFORGE_CACHE": str(work.parent / f"{work.name}-cache")})
    problems = stderr_problems(stderr, case.parts, code)
    after = folder_state(work)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    left = sorted(set(after) - set(before))
    if changed:
        problems.append(f"changed {changed[0]}")
    if left:
        problems.append(f"left {left[0]}")
    return Row(case.name, argv[0], code, wall, problems)


GOOD = [  # (name, argv, the file or folder it must write)
    ("inspect a good model", lambda w: ["inspect", str(w / "m.onnx")], None),
    ("run on given data", lambda w: ["run", str(w / "m.onnx"), "--data", str(w / "data")], None),
    ("quantize judged on given data", lambda w: ["quantize", str(w / "m.onnx"), "-o", str(w / "q.onnx"), "--mode", "dynamic", "--data", str(w / "data")],
     "q.onnx"),  # static on these 4 constant samples misses the tolerance and is refused in one line, rightly
    ("fp16 planned for CUDA", lambda w: ["fp16", str(w / "m.onnx"), "-o", str(w / "h.onnx"), "--ep", "cuda"], "h.onnx"),  # judged by simulation
    ("optimize", lambda w: ["optimize", str(w / "m.onnx"), "-o", str(w / "o.onnx")], "o.onnx"),
    ("tune-session", lambda w: ["tune-session", str(w / "m.onnx"), "-o", str(w / "s.json"), "--time", "0.3"], "s.json"),
    ("tune over an earlier artifact with --overwrite", lambda w: ["tune", str(w / "m.onnx"), "-o", str(w / "art"), "--overwrite",
                                                                   "--time-budget", "40s"], "art/ortforge.json"),  # fmt: skip
]


def good_case(name: str, argv_of, wrote: str | None, scratch: Path) -> Row:  # noqa: ANN001
    work = build_work(Path(tempfile.mkdtemp(dir=scratch)))
    argv = argv_of(work)
    before = folder_state(work)
    code, stderr, wall = run(argv, work, {"ORTFORGE_CACHE": str(work.parent / f"{work.name}-cache")})
    problems = stderr_problems(stderr, (), code, wanted=0)
    after = folder_state(work)
    inputs = [n for n, digest in before.items() if after.get(n) != digest and not (wrote and n.startswith(wrote.split("/")[0]))]
    if inputs:
        problems.append(f"changed {inputs[0]}")
    if wrote and not (work / wrote).exists():
        problems.append(f"wrote no {wrote}")
    return Row(name, argv[0], code, wall, problems, "correct success")


def interrupted(name: str, argv: list[str], after_s: float, scratch: Path, sig: int = signal.SIGINT) -> Row:
    """Ctrl-C part-way: exit 130 with one line, no output written, inputs unchanged."""
    work = build_work(Path(tempfile.mkdtemp(dir=scratch)))
    full = [part.replace("{w}", str(work)) for part in argv]
    before = folder_state(work)
    start = time.perf_counter()
    # SIGINT back to its default in the child: started from a background job, it would inherit "ignored" and no Ctrl-C would land.
    process = subprocess.Popen([*ORTFORGE, *full], cwd=work, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "ORTFORGE_CACHE": str(work.parent / f"{work.name}-cache")},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    time.sleep(after_s)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    wall = time.perf_counter() - start
    problems = stderr_problems(stderr, ("interrupted",), process.returncode, wanted=130) if sig == signal.SIGINT else []
    after = folder_state(work)
    if any(after.get(n) != digest for n, digest in before.items()):
        problems.append("an input changed")
    if set(after) - set(before):
        problems.append(f"left {sorted(set(after) - set(before))[0]}")
    return Row(name, full[0], process.returncode, wall, problems, "clean interruption")


def killed_then_rerun(scratch: Path) -> Row:
    """SIGKILL part-way (nothing can clean up), then the same command again: it finishes, from the cache."""
    work = build_work(Path(tempfile.mkdtemp(dir=scratch)))
    argv = ["tune", str(work / "m.onnx"), "-o", str(work / "t"), "--time-budget", "40s"]
    env = {**os.environ, "ORTFORGE_CACHE": str(work.parent / f"{work.name}-cache")}
    process = subprocess.Popen([*ORTFORGE, *argv], cwd=work, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    time.sleep(10)
    process.kill()
    process.wait()
    code, stderr, wall = run(argv, work, env)
    problems = stderr_problems(stderr, (), code, wanted=0)
    if not (work / "t" / "ortforge.json").exists():
        problems.append("no artifact after the re-run")
    return Row("tune killed (SIGKILL) at 10 s, then re-run", "tune", code, wall, problems, "correct success")


def shared_cache(scratch: Path) -> Row:
    """Two tunes of one model at once, one cache: both finish and write their artifacts."""
    work = build_work(Path(tempfile.mkdtemp(dir=scratch)))
    env = {**os.environ, "ORTFORGE_CACHE": str(work.parent / f"{work.name}-cache")}
    start = time.perf_counter()
    processes = [subprocess.Popen([*ORTFORGE, "tune", str(work / "m.onnx"), "-o", str(work / f"t{i}"), "--time-budget", "40s"], cwd=work,
                                  stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) for i in range(2)]  # fmt: skip
    results = [(p.wait(), p.stderr.read() if p.stderr else "") for p in processes]
    problems = [f"tune {i}: {'; '.join(stderr_problems(err, (), code, wanted=0))}" for i, (code, err) in enumerate(results) if code != 0]
    problems += [f"no t{i}/ortforge.json" for i in range(2) if not (work / f"t{i}" / "ortforge.json").exists()]
    return Row("two tunes sharing one cache at once", "tune", max(code for code, _ in results), time.perf_counter() - start, problems, "correct success")


def large_rows(folder: Path) -> list[Row]:
    """The >2 GB model through every command (a correct success is expected of each)."""
    from large_model import build, commands

    path = folder / "large.onnx"
    if not path.exists():
        build(folder)
    (folder / "out").mkdir(exist_ok=True)
    rows = []
    for label, argv in commands(path, folder, "10m"):
        code, stderr, wall = run(argv, folder, timeout=1800)
        rows.append(Row(f">2 GB model: {label}", argv[0], code, wall, stderr_problems(stderr, (), code, wanted=0), "correct success"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--no-slow", action="store_true", help="skip interruption, kill and shared-cache cases")
    parser.add_argument("--large", metavar="FOLDER", help="also run the >2 GB model through every command (writes ~15 GB there)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="ortforge-gauntlet-"))
    cases = [case for case in CASES if args.filter in case.name]
    print(f"{len(cases)} gauntlet cases, {args.jobs} at a time; work folders under {scratch}", flush=True)
    rows: list[Row] = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for row in pool.map(lambda case: gauntlet_case(case, scratch), cases):
            rows.append(row)
            if row.problems:
                print(f"  FAIL {row.case}: {row.verdict}", flush=True)
        rows += list(pool.map(lambda good: good_case(*good, scratch), [g for g in GOOD if args.filter in g[0]]))
    if not args.no_slow:
        rows.append(interrupted("tune interrupted (Ctrl-C) at 8 s", ["tune", "{w}/m.onnx", "-o", "{w}/t", "--time-budget", "60s"], 8, scratch))
        rows.append(interrupted("quantize --mode auto interrupted at 4 s", ["quantize", "{w}/m.onnx", "-o", "{w}/q.onnx", "--mode", "auto"], 4, scratch))
        rows.append(killed_then_rerun(scratch))
        rows.append(shared_cache(scratch))
    if args.large:
        rows += large_rows(Path(args.large))
    print(f"\n{'case':<70} {'command':<13} {'exit':>4} {'wall s':>7}  verdict")
    for row in rows:
        print(f"{row.case[:70]:<70} {row.command:<13} {row.code if row.code is not None else '-':>4} {row.wall_s:>7.1f}  {row.verdict}")
    verdicts = Counter("FAIL" if row.problems else row.expected for row in rows)
    problems = Counter(problem.split(" ")[0] for row in rows for problem in row.problems)
    print(f"\n{len(rows)} cases: " + ", ".join(f"{count} {name}" for name, count in sorted(verdicts.items())))
    print(f"tracebacks: {problems.get('traceback', 0)}, inputs changed: {problems.get('changed', 0) + problems.get('an', 0)}, "
          f"files left behind: {problems.get('left', 0)}, wrong exit codes: {problems.get('exit', 0)}")  # fmt: skip


if __name__ == "__main__":
    main()
