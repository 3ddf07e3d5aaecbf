"""Which decoder architectures' TorchScript exports `fuse_transformer` turns into GroupQueryAttention, and how exactly.

For each published architecture config (transformers' own config classes, small and randomly initialised: the question
is the graph's form, not accuracy), the model is exported as a client would export it for ORT (eager attention, a KV
cache as past_key_values.N / present.N) by both of torch's exporters (`torch.onnx.export`, dynamo=False: TorchScript;
dynamo=True: torch.export, weights in a .data file), fused, and both are run on a prompt, a step with a cache and a
chunk after a cache: the largest difference in any output is printed, with the fuser kept and, for sites left
decomposed, the reason. Needs torch and transformers (`/work/bench-venv`, see bench/decoder_build.py).

    /work/bench-venv/bin/python bench/decoder_exports.py [ARCH ...]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from decoder_build import export_with_cache  # noqa: E402  (bench/, the script's own folder)

from ortforge.core.model import load_model  # noqa: E402
from ortforge.core.session import SessionConfig  # noqa: E402
from ortforge.transforms.fusion import fuse_transformer  # noqa: E402

VOCAB, LAYERS, KV_HEADS = 512, 2, 2
COMMON = {"vocab_size": VOCAB, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
          "num_key_value_heads": KV_HEADS, "max_position_embeddings": 256}  # fmt: skip


def configs() -> dict:
    import transformers

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    return {
        "llama": transformers.LlamaConfig(**COMMON),
        "llama (llama-3 rope scaling)": transformers.LlamaConfig(**COMMON, rope_scaling=llama3),
        "mistral": transformers.MistralConfig(**COMMON, sliding_window=None),
        "gemma": transformers.GemmaConfig(**COMMON, head_dim=32),
        "qwen2 (q/k/v biases)": transformers.Qwen2Config(**COMMON),
        "qwen3 (per-head q/k norm)": transformers.Qwen3Config(**COMMON, head_dim=32),
        "phi3 (one qkv projection)": transformers.Phi3Config(**COMMON, pad_token_id=0),
        "phi3 (half the head rotated)": transformers.Phi3Config(**COMMON, pad_token_id=0, partial_rotary_factor=0.5),
    }


def export(config, path: Path, dynamo: bool) -> int:  # noqa: ANN001
    """The model exported with its cache (random biases: zeros would hide a bias dropped or misplaced); its head size."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    for name, parameter in model.named_parameters():
        if name.endswith("bias"):
            parameter.data.normal_()
    export_with_cache(model, path, dynamo)
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def largest_difference(original, fused, head_size: int) -> float:  # noqa: ANN001
    rng, worst = np.random.default_rng(0), 0.0
    for past, new in ((0, 9), (9, 1), (5, 4)):  # a prompt, a step with a cache, a chunk after a cache
        feed = {"input_ids": rng.integers(0, VOCAB, (1, new)), "attention_mask": np.ones((1, past + new), np.int64),
                "position_ids": np.arange(past, past + new)[None]}  # fmt: skip
        feed.update({f"past_key_values.{layer}.{part}": rng.standard_normal((1, KV_HEADS, past, head_size)).astype(np.float32)
                     for layer in range(LAYERS) for part in ("key", "value")})  # fmt: skip
        worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(original.run(None, feed), fused.run(None, feed))))
    return worst


def main() -> None:
    chosen = configs()
    wanted = sys.argv[1:] or list(chosen)
    with tempfile.TemporaryDirectory() as scratch:
        for name, dynamo in ((name, dynamo) for name in wanted for dynamo in (False, True)):
            path = Path(scratch) / f"{len(list(Path(scratch).iterdir()))}.onnx"
            try:
                head_size = export(chosen[name], path, dynamo)
            except Exception as exc:  # noqa: BLE001 - an exporter failing on an architecture is a finding too
                print(f"{name:<30} {'dynamo' if dynamo else 'torchscript':<11} export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
                continue
            model = load_model(path, check=False)
            result = fuse_transformer(model)
            fused = result.as_model(model)
            attention = result.details["fused_ops"].get("GroupQueryAttention", 0)
            difference = largest_difference(SessionConfig().build(model), SessionConfig().build(fused), head_size) if result.changed else 0.0
            print(f"{name:<30} {'dynamo' if dynamo else 'torchscript':<11} {result.details['nodes_before']:>5} -> {result.details['nodes_after']:<5} nodes  "
                  f"fuser {result.details['fuser']:<10} "
                  f"GroupQueryAttention {attention}/{LAYERS}  largest output difference {difference:.2g}", flush=True)  # fmt: skip
            for note in result.notes:
                if "left decomposed" in note:
                    print(f"    {note}")
                    break


if __name__ == "__main__":
    main()
