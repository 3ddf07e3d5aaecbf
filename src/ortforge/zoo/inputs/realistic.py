"""What every input synthesizer returns, kept apart so that the synthesizers and their table share it."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ortforge.data import Feed
from ortforge.zoo.registry import ZooEntry


class Realistic(NamedTuple):
    """Seeded samples of batch 1, a note saying what each is, and a summary of how they were made."""

    samples: list[Feed]
    notes: list[str]
    summary: str


# (entry, count, seed) -> count samples; the same seed gives the same samples.
Synthesizer = Callable[[ZooEntry, int, int], Realistic]
