"""Greedy generation as a client runs it: one prefill over the prompt, then one run per new token, the KV cache handed
from each run's `present` outputs to the next run's `past` inputs through IO binding (OrtValues stay in ORT's memory:
no copy into numpy and back per step, as onnxruntime-genai does it).

On a GPU EP the `present` outputs are bound on the card, so the cache stays there from step to step and only the
logits come back to the host (`cache_device`).

A decoder's speed is two figures, not one run's latency: prefill latency over P prompt tokens, and decode tokens/s at
a context of P + i tokens. `bench --generate P,N` and `tune --objective decode|prefill` time this loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ortforge.core.errors import OptionError, UserError
from ortforge.core.runtime import NVIDIA_PROVIDERS
from ortforge.data.decoder_io import DecoderIO, decoder_roles, session_port

NUMPY_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
               onnx.TensorProto.INT32: np.int32, onnx.TensorProto.DOUBLE: np.float64}  # fmt: skip


@dataclass(frozen=True)
class Generation:
    """What one timed generation does: a prompt of `prompt` tokens, then `new_tokens` greedy steps (no early stop)."""

    prompt: int = 64
    new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.prompt < 1 or self.new_tokens < 2:
            raise OptionError("generate", f"{self.prompt},{self.new_tokens}", "give a prompt of 1 token or more and 2 new tokens or more "
                              "(the first comes from the prefill; decode speed needs at least one step after it)")

    def describe(self) -> str:
        return f"prefill of {self.prompt} tokens, then {self.new_tokens} tokens greedy"

    @classmethod
    def parse(cls, text: str) -> Generation:
        """'64,32' -> prompt 64, 32 new tokens."""
        parts = text.replace(" ", "").split(",")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise OptionError("generate", text, "expected P,N: prompt tokens and new tokens, e.g. 64,32")
        return cls(int(parts[0]), int(parts[1]))


@dataclass
class GenerationRun:
    """One generation: the tokens chosen, the prefill's time and each decode step's (nanoseconds)."""

    tokens: list[int]
    prefill_ns: int
    step_ns: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return len(self.step_ns) / (sum(self.step_ns) / 1e9) if self.step_ns else float("nan")


def session_roles(session: Any) -> DecoderIO:
    """The decoder roles of a live session's inputs and outputs; one line naming the problem when it is no decoder."""
    roles = decoder_roles([session_port(a) for a in session.get_inputs()], [session_port(a) for a in session.get_outputs()])
    if roles is None:
        raise UserError("the model has no past/present key-value inputs and outputs: it is not a decoder with a KV cache, so it cannot be "
                        "timed generating tokens", hint="time one run instead (no --generate)")  # fmt: skip
    if roles.other_inputs:
        raise UserError(f"input '{roles.other_inputs[0]}' of the decoder has no role a generation loop knows how to feed "
                        "(tokens, attention mask, position ids, past key/values)")  # fmt: skip
    return roles


def prompt_from(feed: dict[str, Any], roles: DecoderIO, length: int, vocabulary: int | None, seed: int = 0) -> np.ndarray:
    """`length` prompt tokens: the feed's own token ids where it has that many, else seeded ids below the vocabulary."""
    given = np.asarray(feed.get(roles.tokens, np.zeros((1, 0), np.int64))).reshape(-1)
    if given.size >= length:
        return given[:length].astype(np.int64)
    return np.random.default_rng(seed).integers(0, max(2, vocabulary or 1000), length, dtype=np.int64)




def cache_device(session: Any) -> tuple[str, int]:
    """Where the KV cache is kept between steps: on the card of the session's first EP when it is a CUDA one (copying
    the cache to the host and back each token is most of a small decoder's step on a GPU), else on the host."""
    provider = session.get_providers()[0]
    if provider not in NVIDIA_PROVIDERS:  # their outputs can stay in CUDA memory (IO binding's device type "cuda")
        return "cpu", 0
    return "cuda", int(session.get_provider_options().get(provider, {}).get("device_id", 0) or 0)


class GenerationLoop:
    """Runs greedy generations on one session (IO binding; the KV cache never leaves ORT between steps)."""

    def __init__(self, session: Any, template: dict[str, Any] | None = None) -> None:
        """`template`: a feed for the session (its past inputs give the cache's sizes where the model leaves them symbolic:
        onnxruntime-genai's builder names the head size 'kv_cache_dim')."""
        self.session, self.template = session, template or {}
        self.roles = session_roles(session)
        inputs = {a.name: a for a in session.get_inputs()}
        self.types = {name: NUMPY_TYPES.get(session_port(arg).elem_type, np.float32) for name, arg in inputs.items()}
        self.outputs = [a.name for a in session.get_outputs()]
        self.logits_at = self.outputs.index(self.roles.logits)
        self.present_at = {entry.past: self.outputs.index(entry.present) for entry in self.roles.cache}
        self.cache_device = cache_device(session)

    def _bind_outputs(self, binding: Any) -> None:
        """The logits to the host (the next token is chosen there), the cache where `cache_device` says."""
        for at, name in enumerate(self.outputs):
            if at == self.logits_at:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_output(name, *self.cache_device)

    def _step_inputs(self, tokens: np.ndarray, start: int) -> dict[str, np.ndarray]:
        roles, length = self.roles, tokens.shape[-1]
        feeds = {roles.tokens: tokens.reshape(1, -1).astype(self.types[roles.tokens])}
        if roles.attention_mask:
            feeds[roles.attention_mask] = np.ones((1, start + length), self.types[roles.attention_mask])
        if roles.position_ids:
            feeds[roles.position_ids] = np.arange(start, start + length).reshape(1, -1).astype(self.types[roles.position_ids])
        return feeds

    def _empty_cache(self) -> dict[str, np.ndarray]:
        empty = {}
        for entry in self.roles.cache:
            given = np.shape(self.template[entry.past]) if entry.past in self.template else entry.shape
            shape = [0 if axis == entry.sequence_axis else (d if isinstance(d, int) and d > 0 else 1) for axis, d in enumerate(given)]
            empty[entry.past] = np.zeros(shape, self.types[entry.past])
        return empty

    def run(self, prompt: np.ndarray, new_tokens: int) -> GenerationRun:
        """Prefill over `prompt`, then `new_tokens` greedy steps; times each run as the client sees it (binding included)."""
        session, binding, clock = self.session, self.session.io_binding(), time.perf_counter_ns
        for name, value in {**self._step_inputs(prompt, 0), **self._empty_cache()}.items():
            binding.bind_cpu_input(name, value)
        self._bind_outputs(binding)
        start = clock()
        session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        token = int(np.argmax(outputs[self.logits_at].numpy()[0, -1]))
        run = GenerationRun([token], clock() - start)
        for step in range(new_tokens - 1 if new_tokens > 1 else 0):
            start = clock()
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            for name, value in self._step_inputs(np.array([token]), prompt.size + step).items():
                binding.bind_cpu_input(name, value)
            for past, at in self.present_at.items():
                binding.bind_ortvalue_input(past, outputs[at])
            self._bind_outputs(binding)
            session.run_with_iobinding(binding)
            outputs = binding.get_outputs()
            token = int(np.argmax(outputs[self.logits_at].numpy()[0, -1]))
            run.step_ns.append(clock() - start)
            run.tokens.append(token)
        return run
