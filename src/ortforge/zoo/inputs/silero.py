"""silero VAD's realistic inputs: chunks of speech-like audio, with the state the model reaches on them.

The audio is synthetic (glottal pulses through vowel formants, between near-silences); each sample's
LSTM state comes from running the model itself chunk by chunk up to that point, as it would in use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ortforge.core import runtime
from ortforge.zoo.inputs.realistic import Realistic
from ortforge.zoo.registry import ZooEntry
from ortforge.zoo.wheels import fetch

_RATE = 16000
_CHUNK = 512
_CONTEXT = 64
_STATE_SHAPE = (2, 1, 128)
# Chunks this far into a voiced or silent stretch: the LSTM state has settled on what it hears.
_SETTLE_CHUNKS = 8
# (F1, F2, F3) in Hz of a few vowels; the formants are what makes a buzz sound like a voice.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))
_FORMANT_BANDWIDTHS = (80, 100, 140)
_FORMANT_GAINS = (1.0, 0.6, 0.3)


def _syllable(rng: np.random.Generator, length: int) -> np.ndarray:
    """A vowel: glottal pulses at a gliding pitch, shaped by formant resonances and an envelope."""
    start_pitch = rng.uniform(100, 220)
    pitch = start_pitch * (1 + rng.uniform(-0.2, 0.2) * np.linspace(0, 1, length))
    cycles = np.floor(np.cumsum(pitch / _RATE))
    pulses = np.diff(cycles, prepend=0.0)
    t = np.arange(int(0.03 * _RATE)) / _RATE
    formants = np.array(_VOWELS[int(rng.integers(len(_VOWELS)))]) * rng.uniform(0.9, 1.1)
    response = sum(
        gain * np.exp(-np.pi * bandwidth * t) * np.sin(2 * np.pi * frequency * t)
        for frequency, bandwidth, gain in zip(formants, _FORMANT_BANDWIDTHS, _FORMANT_GAINS)
    )
    # A soft glottal pulse rather than a click: speech loses energy above a few hundred Hz.
    glottal = 0.85 ** np.arange(40)
    voiced = np.convolve(np.convolve(pulses, glottal), response)[:length]
    voiced += 0.02 * np.abs(voiced).max() * rng.standard_normal(length)  # breath
    voiced /= np.abs(voiced).max() + 1e-9
    ramp = min(int(0.03 * _RATE), length // 3)
    envelope = np.ones(length)
    envelope[:ramp] = np.sin(np.linspace(0, np.pi / 2, ramp)) ** 2
    envelope[length - ramp:] = np.cos(np.linspace(0, np.pi / 2, ramp)) ** 2
    return voiced * envelope


def _utterance(rng: np.random.Generator, length: int) -> np.ndarray:
    """Syllables one after another with short dips between, at one loudness."""
    pieces, total = [], 0
    while total < length:
        syllable = _syllable(rng, int(rng.uniform(0.12, 0.3) * _RATE))
        gap = np.zeros(int(rng.uniform(0.0, 0.04) * _RATE))
        pieces += [syllable, gap]
        total += len(syllable) + len(gap)
    return rng.uniform(0.15, 0.6) * np.concatenate(pieces)[:length]


def _speech_like_audio(
    rng: np.random.Generator, voiced_chunks: int, silent_chunks: int
) -> tuple[np.ndarray, np.ndarray]:
    """Voiced stretches between near-silences, long enough to hold the settled chunks asked for.

    Returns the audio (float32 at 16 kHz) and a per-sample flag of which parts are voiced.
    """
    pieces, flags = [], []
    have = {True: 0, False: 0}
    voiced = False
    while have[True] < voiced_chunks or have[False] < silent_chunks or len(pieces) < 4:
        seconds = rng.uniform(0.8, 1.6) if voiced else rng.uniform(0.5, 1.0)
        length = int(seconds * _RATE)
        pieces.append(_utterance(rng, length) if voiced else np.zeros(length))
        flags.append(np.full(length, voiced))
        have[voiced] += max(0, length // _CHUNK - _SETTLE_CHUNKS - 2)
        voiced = not voiced
    audio = np.concatenate(pieces)
    audio += 0.002 * rng.standard_normal(len(audio))  # room noise, also under the voice
    return audio.astype(np.float32), np.concatenate(flags)


def _settled_chunks(flags: np.ndarray) -> tuple[list[int], list[int]]:
    """Indices of chunks wholly voiced / wholly silent, the previous _SETTLE_CHUNKS chunks alike."""
    chunk_count = len(flags) // _CHUNK
    per_chunk = flags[: chunk_count * _CHUNK].reshape(chunk_count, _CHUNK)
    all_voiced, all_silent = per_chunk.all(axis=1), ~per_chunk.any(axis=1)
    voiced, silent = [], []
    for index in range(_SETTLE_CHUNKS, chunk_count):
        window = slice(index - _SETTLE_CHUNKS, index + 1)
        if all_voiced[window].all():
            voiced.append(index)
        elif all_silent[window].all():
            silent.append(index)
    return voiced, silent


def _chunk_input(audio: np.ndarray, index: int) -> np.ndarray:
    """Chunk `index` with the 64 samples before it in front (zeros for the first), as silero wants."""
    start = index * _CHUNK
    context = audio[start - _CONTEXT:start] if index else np.zeros(_CONTEXT, dtype=np.float32)
    return np.concatenate([context, audio[start:start + _CHUNK]])[np.newaxis].astype(np.float32)


def _states_before_chunks(model_path: Path, audio: np.ndarray, last: int) -> list[np.ndarray]:
    """The LSTM state going into each chunk 0..last, by running the model chunk by chunk from zeros."""
    ort = runtime.ort()
    session = ort.InferenceSession(
        str(model_path), sess_options=runtime.quiet_session_options(), providers=["CPUExecutionProvider"]
    )
    rate = np.array(_RATE, dtype=np.int64)
    states = [np.zeros(_STATE_SHAPE, dtype=np.float32)]
    for index in range(last):
        _, state = session.run(None, {"input": _chunk_input(audio, index), "state": states[-1], "sr": rate})
        states.append(state.astype(np.float32))
    return states


def feeds(entry: ZooEntry, count: int, seed: int) -> Realistic:
    """Voiced and silent chunks in turn, each with the state the model reached before it."""
    rng = np.random.default_rng(seed)
    want_voiced, want_silent = (count + 1) // 2, count // 2
    audio, flags = _speech_like_audio(rng, want_voiced, want_silent)
    voiced, silent = _settled_chunks(flags)
    # Voiced and silent chunks alternate, so even two samples hold both answers the model gives.
    picked_voiced = sorted(rng.choice(voiced, size=want_voiced, replace=False).tolist())
    picked_silent = sorted(rng.choice(silent, size=want_silent, replace=False).tolist()) if want_silent else []
    order = [0] * count
    order[0::2], order[1::2] = picked_voiced, picked_silent
    states = _states_before_chunks(fetch(entry.name), audio, max(order))
    samples, notes = [], []
    for index, chunk in enumerate(order):
        samples.append({"input": _chunk_input(audio, chunk), "state": states[chunk], "sr": np.array(_RATE, dtype=np.int64)})
        kind = "voiced" if chunk in picked_voiced else "silence"
        notes.append(f"sample {index}: chunk {chunk} at {chunk * _CHUNK / _RATE:.2f} s ({kind})")
    seconds = len(audio) / _RATE
    summary = f"{seconds:.1f} s of synthetic speech-like audio at 16 kHz, state from running the model"
    return Realistic(samples, notes, summary)
