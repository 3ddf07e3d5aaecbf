"""all-MiniLM-L6-v2 through `ortforge tune` on real sentences, then checked independently.

    HF_HUB_OFFLINE=1 /work/bench-venv/bin/python bench/minilm_tune.py [--out DIR] [--budget 5m] [--tolerance cosine=0.985]

Exports the model (TorchScript, opset 17, dynamic batch/sequence; see minilm_fusion.py for the venv),
tokenizes 64 real sentences padded to 128 tokens (the first 32 calibrate, the other 32 judge: tune splits
--data that way) and tunes under the tolerance. Then, outside tune: the shipped artifact's sentence
embedding (the mean over real tokens, what a user of sentence-transformers takes) against fp32 on each
of the 32 evaluation sentences and on 16 held-out ones, worst first; and the artifact against fp32 in
an independent interleaved bench run, whose interval must overlap the one tune reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a pip package; never reach for the hub

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from minilm_fusion import INPUTS, SENTENCES, export, load_torch_model  # noqa: E402

from ortforge.core.model import load_model  # noqa: E402
from ortforge.core.session import SessionConfig, run_outputs  # noqa: E402
from ortforge.data import FeedSet  # noqa: E402
from ortforge.measure.bench import BenchOptions, Variant, bench  # noqa: E402
from ortforge.measure.compare import score  # noqa: E402
from ortforge.tuning.artifact import read_artifact  # noqa: E402

# 64 sentences for tune (calibration, then evaluation), apart from minilm_fusion's 16 (held out here).
TUNE_SENTENCES = [
    "The train to Edinburgh leaves from platform four.", "Add a pinch of salt and stir until the sauce thickens.",
    "Our team shipped the new search ranking on Tuesday.", "How do I reset my password?", "Yes.",
    "The committee postponed its decision until the spring meeting.", "Bees communicate the direction of flowers by dancing.",
    "A compiler translates source code into machine instructions.", "My grandmother grew up on a farm near the river.",
    "The stock market fell sharply after the announcement.", "Turn left at the bakery and walk two blocks.",
    "Photosynthesis converts light energy into chemical energy.", "He forgot his umbrella and got soaked on the way home.",
    "The violinist tuned her instrument before the concert began.", "Is this seat taken?", "Thanks!",
    "Neural networks learn representations from large amounts of data.", "The hotel room overlooked a quiet courtyard.",
    "Volcanic ash grounded flights across northern Europe.", "Please submit the report by Friday afternoon.",
    "The library extended its opening hours during exam season.", "Cats sleep for up to sixteen hours a day.",
    "The new bridge reduced the commute by twenty minutes.", "Which programming language should I learn first?",
    "Fresh snow covered the mountain pass overnight.", "The detective noticed a scratch on the window frame.",
    "Solar panels produce less power on cloudy days.", "We celebrated her birthday with a picnic in the park.",
    "The orchestra played Beethoven's fifth symphony.", "A balanced diet includes fruit, vegetables and whole grains.",
    "The printer on the second floor is out of paper.", "Glaciers carve deep valleys over thousands of years.",
    "The startup raised its first round of funding last week.", "Can you recommend a good book about history?",
    "The children built a sandcastle near the waves.", "Traffic was heavy because of the football match.",
    "The doctor advised him to drink more water.", "Ancient Romans built roads that are still used today.",
    "The database query returned no results.", "Our flight was delayed by three hours.", "No.",
    "Tea is the most widely consumed drink after water.", "The artist painted the harbour at sunrise.",
    "Batteries lose capacity when they are kept in the cold.", "The referee blew the whistle and the game ended.",
    "She learned to play chess from her older brother.", "Wind turbines turn slowly even in a light breeze.",
    "The package was delivered to the wrong address.", "Mountains influence the weather on both of their sides.",
    "The software update fixed a bug in the login screen.", "Dolphins use echolocation to find their prey.",
    "The bakery sells out of croissants before nine.", "Rain is expected throughout the weekend.",
    "He translated the novel from Portuguese into English.", "The museum's new wing displays modern sculpture.",
    "Sorting algorithms differ in speed and memory use.", "The farmer harvested the wheat before the storm.",
    "Our neighbours adopted a puppy from the shelter.", "The lecture covered the causes of the French Revolution.",
    "Electric cars are quieter than petrol cars.", "The recipe needs butter, sugar and three eggs.",
    "I lost my keys somewhere in the office.", "The satellite sends images back to Earth every hour.",
    "The meeting ended earlier than expected.",
]  # fmt: skip
SEQUENCE = 128


def tokenized(tokenizer, sentences: list[str]) -> list[dict[str, np.ndarray]]:
    """One batch-1 sample per sentence, padded to SEQUENCE tokens as a serving system with a fixed shape does."""
    samples = []
    for sentence in sentences:
        encoded = tokenizer([sentence], padding="max_length", max_length=SEQUENCE, truncation=True, return_tensors="np")
        samples.append({name: encoded[name].astype(np.int64) for name in INPUTS})
    return samples


def embedding_cosines(reference: list[dict], candidate: list[dict], samples: list[dict]) -> list[float]:
    """Per sentence: cosine of the mean over real tokens of last_hidden_state, fp32 vs candidate."""
    values = []
    for expected, actual, feed in zip(reference, candidate, samples):
        mask = feed["attention_mask"][0].astype(bool)
        a = next(iter(expected.values()))[0][mask].mean(axis=0).astype(np.float64)
        b = next(iter(actual.values()))[0][mask].mean(axis=0).astype(np.float64)
        values.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the export, data and artifact (a temporary one by default)")
    parser.add_argument("--budget", default="5m", help="tune's --time-budget (default 5m)")
    parser.add_argument("--tolerance", default="cosine=0.985", help="tune's --tolerance (default cosine=0.985)")
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per variant in the independent check (default 8)")
    args = parser.parse_args()
    module, tokenizer = load_torch_model()
    with tempfile.TemporaryDirectory(prefix="minilm-tune-") as scratch:
        folder = Path(args.out) if args.out else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        model_path = export(module, tokenizer, folder)["torchscript"]
        data = folder / "sentences"
        samples = tokenized(tokenizer, TUNE_SENTENCES)
        if not data.exists():
            data.mkdir()
            for index, sample in enumerate(samples):
                np.savez(data / f"sample_{index:02d}.npz", **sample)
        artifact = folder / "tuned"
        command = [str(Path(sys.executable).with_name("ortforge")), "tune", str(model_path), "--data", str(data), "--calib-samples", "32", "--samples", "32",
                   "--tolerance", args.tolerance, "--time-budget", args.budget, "-o", str(artifact), "--overwrite"]  # fmt: skip
        print("$ " + " ".join(command))
        subprocess.run(command, check=True)
        tuned_path, config, record = read_artifact(artifact)
        reported = record["figures"]["latency_ratio"] or {"median": 1.0, "low": 1.0, "high": 1.0}
        print(f"\nshipped: {record['chosen']['label']}: {record['summary']['speedup']} (noise {record['summary']['noise']})")
        print(f"tune's accuracy: {json.dumps({k: v for k, v in record['figures']['accuracy'].items() if not k.endswith('_total')})}")
        original, tuned = load_model(model_path), load_model(tuned_path)
        for name, chosen in (("evaluation (tune judged these)", samples[32:]), ("held out", tokenized(tokenizer, SENTENCES))):
            feeds = FeedSet(chosen, name, generated=False)
            cosines = embedding_cosines(run_outputs(original, feeds), run_outputs(tuned, feeds, config), chosen)
            worst = np.argsort(cosines)[:3]
            below = sum(c < 0.985 for c in cosines)
            print(f"mean-pooled embedding cosine, {name}: worst {min(cosines):.5f}, {below} of {len(cosines)} below 0.985; "
                  f"worst sentences: {[round(cosines[i], 5) for i in worst]}")
        feeds = FeedSet(samples[32:40], "8 evaluation sentences", generated=False)
        report = bench([Variant("fp32 | ORT defaults", original, SessionConfig(), feeds), Variant("shipped", tuned, config, feeds)],
                       BenchOptions(max_seconds=args.seconds, profile=False, min_rounds=20))  # fmt: skip
        independent = score(report.variants[1], report.variants[0])
        overlap = independent.low <= reported["high"] and reported["low"] <= independent.high
        print(f"independent run: {independent.text()} over {report.rounds} rounds, noise ±{report.noise_floor:.1%}; tune reported "
              f"{reported['median']:.3g}x [{reported['low']:.3g}-{reported['high']:.3g}]: {'intervals overlap' if overlap else 'DISAGREE'}")


if __name__ == "__main__":
    main()
