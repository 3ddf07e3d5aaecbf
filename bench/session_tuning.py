"""tune-session on zoo models: the chosen config vs ORT's defaults, measured interleaved.

    python bench/session_tuning.py [zoo:NAME ...] [--time 4]

Prints, per model, the chosen candidate, its p50 ratio to the defaults (median, min-max over rounds)
and how many rounds it won; "ORT defaults" means nothing beat them consistently.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import ortforge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=["zoo:magika", "zoo:ppocr-det", "zoo:ppocr-cls", "zoo:silero-vad"])
    parser.add_argument("--time", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for reference in args.models:
            tuning, _ = ortforge.tune_session(reference, Path(folder) / "config.json", seconds=args.time)
            chosen = next(s for s in tuning.scores if s.label == tuning.chosen.label)
            others = "; ".join(f"{s.label} {s.ratio:.2f}x won {s.wins:.0%}" for s in tuning.scores[1:])
            print(
                f"{reference}: chose '{chosen.label}' at {chosen.text()} of the defaults ("
                f"{len(tuning.final.variants[0].latency.round_medians)} rounds); finalists: {others}"
            )


if __name__ == "__main__":
    main()
