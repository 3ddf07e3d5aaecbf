"""Decoder LMs: tune for decode tokens/s on the zoo decoder, against onnxruntime-genai's own int4 build, in one run.

Needs the zoo decoder (`bench/decoder_build.py`: a Llama trained here on the stdlib's docstrings and sources, exported by the model
builder to fp32 and int4). Accuracy is next-token agreement under teacher forcing on held-out text (the corpus' last
5%, never trained on), with its bound, and logits cosine; speed is greedy generation with the KV cache carried (prefill of
--prompt tokens, then --new tokens), every variant in a fresh process, interleaved, with an A/A pair.

With `--export torch` (or `dynamo`), tune starts from torch's TorchScript (or dynamo) export of the same weights instead
(attention written out: tune fuses it into GroupQueryAttention itself), and the builder's fp32 export joins the timed run.

    python bench/decoder.py [--zoo-name stdlib-llama-1] [--export builder|torch|dynamo] [--budget 6m] [--prompt 64] [--new 32]
                            [--samples 16] [--time 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ortforge.accuracy.judge import Judge  # noqa: E402
from ortforge.accuracy.tolerance import parse_tolerances  # noqa: E402
from ortforge.cli.arguments import parse_duration  # noqa: E402
from ortforge.commands.tune import tune  # noqa: E402
from ortforge.core.model import load_model, model_size  # noqa: E402
from ortforge.core.session import SessionConfig, run_outputs  # noqa: E402
from ortforge.data import FeedSet, ShapeOptions, generate_feeds  # noqa: E402
from ortforge.data.decoder_io import decoder_io  # noqa: E402
from ortforge.measure.bench import BenchOptions, Variant, bench  # noqa: E402
from ortforge.measure.compare import score  # noqa: E402
from ortforge.measure.generate import Generation  # noqa: E402
from ortforge.tuning.artifact import read_artifact  # noqa: E402

ZOO = Path.home() / ".cache" / "ortforge" / "zoo" / "models"
EXPORTS = {"builder": "onnx-fp32", "torch": "onnx-torch", "dynamo": "onnx-dynamo"}  # bench/decoder_build.py's folders
WINDOW = 128


def held_out_feeds(folder: Path, model_path: Path, count: int) -> FeedSet:
    """`count` windows of held-out tokens, each a prefill over WINDOW tokens from an empty cache."""
    ids = np.load(folder / "held_out.npy").tolist()  # the corpus' last 5%, tokenized by the build, never trained on
    model = load_model(model_path, check=False)
    roles = decoder_io(model.proto.graph)
    assert roles is not None
    template = generate_feeds(model, 1, shape_options=ShapeOptions(sequence=WINDOW)).samples[0]  # the empty cache's shapes
    samples = []
    for start in range(0, count * WINDOW, WINDOW):
        window = np.array([ids[start : start + WINDOW]], np.int64)
        feed = {**template, roles.tokens: window, roles.attention_mask: np.ones_like(window)}
        if roles.position_ids:
            feed[roles.position_ids] = np.arange(WINDOW, dtype=np.int64)[None]
        samples.append(feed)
    return FeedSet(samples, origin=f"held-out stdlib docstrings ({count} x {WINDOW} tokens)", generated=False)


def taken_by(model, feeds: FeedSet) -> FeedSet:  # noqa: ANN001
    """The feeds without the inputs `model` does not have (the builder's exports take no position_ids)."""
    names = {value.name for value in model.proto.graph.input}
    return FeedSet([{k: v for k, v in sample.items() if k in names} for sample in feeds.samples], feeds.origin, feeds.generated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo-name", default="stdlib-llama-1", help="the built decoder's folder name (bench/decoder_build.py --size base: stdlib-llama-2)")
    parser.add_argument("--export", choices=tuple(EXPORTS), default="builder",
                        help="the fp32 model tune starts from: the model builder's, or torch's TorchScript or dynamo export (attention written out)")
    parser.add_argument("--budget", default="6m")
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--time", type=float, default=10.0, help="seconds of timed generations per variant")
    parser.add_argument("--tolerance", action="append", default=[], help="METRIC=VALUE (default: token_top1=0.95)")
    args = parser.parse_args()
    folder = ZOO / args.zoo_name
    builder_fp32_path, builder_path = folder / "onnx-fp32" / "model.onnx", folder / "onnx-int4" / "model.onnx"
    fp32_path = folder / EXPORTS[args.export] / "model.onnx"
    if not fp32_path.exists():
        sys.exit("build the zoo decoder first: /work/bench-venv/bin/python bench/decoder_build.py")
    print(json.dumps(json.loads((folder / "zoo.json").read_text())))
    feeds = held_out_feeds(folder, fp32_path, 2 * args.samples)
    gate = args.tolerance or ["token_top1=0.95"]
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        data.mkdir()
        for index, feed in enumerate(feeds.samples):
            np.savez(data / f"{index:03d}.npz", **feed)
        out = Path(scratch) / "tuned"
        report = tune(str(fp32_path), out, data=str(data), samples=args.samples, calib_samples=args.samples, tolerances=gate,
                      objective="decode", generate=f"{args.prompt},{args.new}", time_budget_s=parse_duration(args.budget))  # fmt: skip
        print(f"tune: {report.result.why}")
        for trial in report.result.trials:  # every precision candidate's accuracy, so the recipes' agreement can be compared
            shown = {k: round(v, 4) for k, v in trial.metrics.items() if k in ("token_top1", "cosine")}
            print(f"  built {trial.label}: {shown or trial.error} {'within tolerance' if trial.passed else ''}")
        for label, why in report.result.rejected:
            print(f"  rejected {label}: {why}")
        for finalist in report.result.finalists:  # the session settings that reached the final run, with their scores
            print(f"  finalist {finalist.label}: {finalist.score.text() if finalist.score else 'baseline'}")
        for contender in report.result.ablation:  # the head-to-head run that made the choice, if there was one
            print(f"  head to head {contender.label}: {contender.score.text() if contender.score else '-'}")
        for note in report.result.notes:
            print(f"  note: {note}")
        tuned_model, tuned_config = load_model(out / "model.onnx", check=False), read_artifact(out)[1]
        fp32, builder = load_model(fp32_path, check=False), load_model(builder_path, check=False)
        evaluation = FeedSet(feeds.samples[args.samples :], feeds.origin, False)
        judge = Judge(run_outputs(fp32, evaluation), parse_tolerances(gate), feeds=evaluation)
        for label, model, config in (("tune's artifact", tuned_model, tuned_config), ("model builder int4", builder, SessionConfig())):
            verdict = judge(run_outputs(model, taken_by(model, evaluation), config))
            print(f"  {label}: {'; '.join(verdict.evidence)}")
            print(f"    measured: { {k: round(v, 4) for k, v in verdict.measured.items() if k in ('token_top1', 'cosine')} }, size {model_size(model) / 2**20:.1f} MiB")
        generation = Generation(args.prompt, args.new)
        variants = [Variant(f"fp32 ({args.export} export) | ORT defaults", fp32, SessionConfig(), evaluation),
                    Variant("tune's artifact", tuned_model, tuned_config, taken_by(tuned_model, evaluation)),
                    Variant("model builder int4 (-p int4 -e cpu)", builder, SessionConfig(), taken_by(builder, evaluation))]  # fmt: skip
        if args.export != "builder":
            builder_fp32 = load_model(builder_fp32_path, check=False)
            variants.insert(1, Variant("model builder fp32 (-p fp32 -e cpu)", builder_fp32, SessionConfig(), taken_by(builder_fp32, evaluation)))
        run = bench(variants, BenchOptions(max_seconds=args.time, profile=False, generation=generation))
    print(f"\n{generation.describe()}; one interleaved run, noise ±{run.noise_floor:.1%}")
    for result in run.variants:
        print(f"  {result.label:<40} {result.throughput:8.1f} tokens/s  {score(result, run.variants[0]).text():<24} per-token time; "
              f"prefill p50 {result.prefill.p50 if result.prefill else float('nan'):.2f} ms; peak RSS {result.peak_rss / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
