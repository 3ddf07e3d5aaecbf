"""Build the zoo's decoder: a small Llama trained here on Python's standard library, exported by onnxruntime-genai's builder.

No hub is reachable, and random weights make accuracy meaningless (their logits are nearly flat, so every int4 recipe
"changes" the next token), so the decoder is trained for a few minutes on text every machine has offline under the
PSF license: Python's standard library, its docstrings and its source. Steps, each cached under
~/.cache/ortforge/zoo/models/stdlib-llama-1/:

1. corpus: every docstring of every importable stdlib module, class and function (de-duplicated), then the stdlib's own
   .py sources (tests left out) up to SOURCE_CHARS; 95% train / 5% held out (the last 5%, never trained on);
2. tokenizer: a byte-level BPE of the size's vocabulary trained on the corpus (`tokenizers`), saved as tokenizer.json;
3. model: transformers' LlamaConfig (the published Llama architecture: RMSNorm, rotary positions, SwiGLU, grouped-query
   attention) at one of SIZES (small: hidden 256, 4 layers, 8 heads / 4 KV heads; base: hidden 768, 4 layers, 12 / 4 heads), trained
   with AdamW on 128-token windows for --minutes;
4. export: onnxruntime-genai's model builder (`-p fp32 -e cpu` and, for the comparison, `-p int4 -e cpu`), from the
   saved folder (`-i`), as a user of that tool would; and torch's exporters (onnx-torch/: TorchScript; onnx-dynamo/:
   dynamo), which write the attention out as transformers' eager code computes it (the form `tune` fuses into
   GroupQueryAttention itself).

It prints the held-out loss and how peaked the next-token distributions are (median top-1 probability, share of
positions whose top-1 beats the runner-up by 2 logits) so the accuracy figures measured on it mean something.

    /work/bench-venv/bin/pip install torch transformers tokenizers onnxruntime-genai==0.18.0
    /work/bench-venv/bin/python bench/decoder_build.py [--size small|base] [--minutes 6] [--force]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WINDOW = 128
# Sizes: "small" is stdlib-llama-1 (5.0 M parameters, 15 min); "base" is wide so that weights, not per-node overhead,
# dominate a decode step, as in the models int4 is for (38 M parameters; bf16 autocast trains it at ~1,500 tokens/s here).
SIZES = {
    "small": {"name": "stdlib-llama-1", "vocab": 4096, "hidden": 256, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 688, "lr": 3e-3, "batch": 16, "bf16": False},
    "base": {"name": "stdlib-llama-2", "vocab": 8192, "hidden": 768, "layers": 4, "heads": 12, "kv_heads": 4, "ffn": 2048, "lr": 1e-3, "batch": 16, "bf16": True},
}  # fmt: skip
ZOO = Path.home() / ".cache" / "ortforge" / "zoo" / "models"
SKIP = ("test", "idlelib", "tkinter", "turtle", "antigravity", "this", "lib2to3", "ensurepip", "venv", "pydoc_data")
SOURCE_CHARS = 6_000_000  # code is predictable: a model trained on it has peaked next-token distributions


def corpus() -> str:
    """Docstrings of the standard library, each once, in a stable order."""
    seen, texts = set(), []
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and not n.startswith(SKIP))
    warnings.simplefilter("ignore")
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - platform-specific modules
            continue
        members = [module] + [m for _, m in inspect.getmembers(module) if inspect.isclass(m) or inspect.isfunction(m) or inspect.isbuiltin(m)]
        for member in members:
            for item in [member] + ([m for _, m in inspect.getmembers(member) if inspect.isfunction(m)] if inspect.isclass(member) else []):
                doc = inspect.getdoc(item) if not isinstance(item, type(sys)) or item is module else None
                if doc and len(doc) > 40 and doc not in seen:
                    seen.add(doc)
                    texts.append(doc.strip())
    sources = sorted(Path(os.__file__).parent.glob("*.py")) + sorted(Path(os.__file__).parent.glob("[a-z]*/*.py"))
    code, size = [], 0
    for path in sources:
        if "test" in path.parts[-2:][0] or path.name.startswith("test") or size > SOURCE_CHARS:
            continue
        text = path.read_text(errors="ignore")
        code.append(text)
        size += len(text)
    return "\n\n".join(texts + code)


def build_tokenizer(text: str, folder: Path, vocab: int):  # noqa: ANN201
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def train(ids: list[int], held_out: list[int], minutes: float, folder: Path, size: dict) -> dict:
    """AdamW on random 128-token windows, bf16 autocast where the CPU has AMX/AVX-512 bf16 (fp32 master weights), the
    learning rate warmed up over 50 steps and decayed linearly to a tenth by the deadline."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = LlamaConfig(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["ffn"], num_hidden_layers=size["layers"],
                         num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], max_position_embeddings=4 * WINDOW,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)  # fmt: skip
    model = LlamaForCausalLM(config)
    peak, batch = size["lr"], size["batch"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.01)
    data = torch.tensor(ids)
    start, step = time.time(), 0
    deadline = start + 60 * minutes
    bf16 = size["bf16"]  # the small model was trained in fp32, and still is, so that it rebuilds the same
    while time.time() < deadline:
        offsets = torch.randint(0, len(data) - WINDOW - 1, (batch,))
        window = torch.stack([data[o : o + WINDOW + 1] for o in offsets])
        lr = peak * min(1.0, (step + 1) / 50) * max(0.1, 1 - (time.time() - start) / (deadline - start))
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=window, labels=window).loss  # the model shifts the labels itself
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"  step {step}, {time.time() - start:.0f} s, loss {loss.item():.3f}", flush=True)
    model.eval()
    figures = peakedness(model, held_out)
    figures.update({"steps": step, "train_seconds": round(time.time() - start), "parameters": sum(p.numel() for p in model.parameters()),
                    "tokens_seen": step * batch * WINDOW, "bf16_autocast": bf16})  # fmt: skip
    model.save_pretrained(folder, safe_serialization=True)
    return figures


def peakedness(model, held_out: list[int]) -> dict:  # noqa: ANN001
    """Held-out loss and how sure the model is of its next token."""
    import torch

    with torch.no_grad():
        windows = [held_out[i : i + WINDOW] for i in range(0, min(len(held_out), 64 * WINDOW) - WINDOW, WINDOW)]
        batch = torch.tensor(windows)
        out = model(input_ids=batch, labels=batch)
        probs = out.logits.softmax(-1)
        top2 = out.logits.topk(2, dim=-1).values
    return {"held_out_loss": round(out.loss.item(), 3), "held_out_perplexity": round(math.exp(out.loss.item()), 1),
            "median_top1_probability": round(probs.max(-1).values.median().item(), 3),
            "share_top1_ahead_by_2_logits": round(((top2[..., 0] - top2[..., 1]) > 2).float().mean().item(), 3)}  # fmt: skip


def export(folder: Path, precision: str) -> Path:
    out = folder / f"onnx-{precision}"
    if (out / "model.onnx").exists():
        return out
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(folder / "hf"), "-o", str(out), "-p", precision, "-e", "cpu",
               "-c", str(folder / "builder-cache")]  # fmt: skip
    print("  " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return out


def export_with_cache(model, path: Path, dynamo: bool) -> None:  # noqa: ANN001
    """A transformers causal LM (eager attention) exported by `torch.onnx.export`, TorchScript or dynamo (torch.export;
    the default since torch 2.9, weights in a .data file), its cache as the builder names it: past_key_values.N.key/value
    in, present.N.key/value out, a DynamicCache filled from the inputs inside."""
    import torch
    from transformers.cache_utils import DynamicCache

    config = model.config
    layers, kv_heads = config.num_hidden_layers, config.num_key_value_heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, past):  # noqa: ANN001, ANN202
            cache = DynamicCache()
            for layer in range(layers):
                cache.update(past[2 * layer], past[2 * layer + 1], layer)
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, past_key_values=cache, use_cache=True)
            return (output.logits, *[tensor for layer in output.past_key_values.layers for tensor in (layer.keys, layer.values)])

    past_length, length = 3, 4
    example = (torch.randint(0, config.vocab_size, (1, length)), torch.ones(1, past_length + length, dtype=torch.int64),
               torch.arange(past_length, past_length + length)[None], [torch.randn(1, kv_heads, past_length, head_size) for _ in range(2 * layers)])
    cache_names = [f"{layer}.{part}" for layer in range(layers) for part in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *[f"past_key_values.{name}" for name in cache_names]]
    outputs = ["logits", *[f"present.{name}" for name in cache_names]]
    with torch.no_grad():
        if dynamo:
            dim = torch.export.Dim.DYNAMIC
            shapes = {"input_ids": {0: dim, 1: dim}, "attention_mask": {0: dim, 1: dim}, "position_ids": {0: dim, 1: dim},
                      "past": [{0: dim, 2: dim} for _ in range(2 * layers)]}  # fmt: skip
            torch.onnx.export(WithCache(), example, str(path), input_names=inputs, output_names=outputs, dynamic_shapes=shapes, opset_version=18,
                              dynamo=True, verbose=False)  # fmt: skip
        else:
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"}, "position_ids": {0: "batch", 1: "sequence"},
                    **{name: {0: "batch", 2: "past"} for name in inputs[3:]}}  # fmt: skip
            torch.onnx.export(WithCache(), example, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes, opset_version=18,
                              dynamo=False)  # fmt: skip


def export_torch(folder: Path, dynamo: bool) -> Path:
    """The trained model exported by torch (onnx-torch/: TorchScript; onnx-dynamo/: dynamo), attention written out."""
    from transformers import LlamaForCausalLM

    out = folder / ("onnx-dynamo" if dynamo else "onnx-torch") / "model.onnx"
    if out.exists():
        return out.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"  torch.onnx.export(dynamo={dynamo}) -> {out}", flush=True)
    export_with_cache(LlamaForCausalLM.from_pretrained(folder / "hf", attn_implementation="eager").eval(), out, dynamo)
    return out.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="small: stdlib-llama-1 (default); base: stdlib-llama-2")
    parser.add_argument("--minutes", type=float, default=6.0, help="training time")
    parser.add_argument("--force", action="store_true", help="train again even when a trained model is cached")
    args = parser.parse_args()
    size = SIZES[args.size]
    folder = ZOO / size["name"]
    hf = folder / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    if args.force or not (hf / "model.safetensors").exists():
        text = corpus()
        (folder / "corpus.txt").write_text(text)
        print(f"corpus: {len(text):,} characters of stdlib docstrings and sources", flush=True)
        tokenizer = build_tokenizer(text, hf, size["vocab"])
        ids = tokenizer(text)["input_ids"]
        cut = int(len(ids) * 0.95)
        print(f"tokens: {len(ids):,} ({cut:,} train, {len(ids) - cut:,} held out); training {args.minutes:g} min", flush=True)
        np.save(folder / "held_out.npy", np.array(ids[cut:], np.int32))  # benchmarks read these without a tokenizer
        figures = train(ids[:cut], ids[cut:], args.minutes, hf, size)
        config = {k: size[k] for k in ("vocab", "hidden", "layers", "heads", "kv_heads", "ffn")}
        info = {"how": __doc__.split("\n\n")[0], "architecture": "LlamaForCausalLM (transformers LlamaConfig)", "config": config,
                "corpus": "Python's standard library: its docstrings, then its .py sources without tests (PSF license)", "held_out_from_token": cut, **figures}  # fmt: skip
        (folder / "zoo.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(json.loads((folder / "zoo.json").read_text()), indent=2))
    for precision in ("fp32", "int4"):
        print(f"export {precision}: {export(folder, precision)}", flush=True)
    for dynamo in (False, True):
        print(f"export torch ({'dynamo' if dynamo else 'TorchScript'}): {export_torch(folder, dynamo)}", flush=True)


if __name__ == "__main__":
    main()
