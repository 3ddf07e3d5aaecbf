"""Realistic inputs for each zoo model: accuracy measured on random inputs means nothing for these models.

One module per model family makes inputs like the ones the model meets in use, preprocessed the way
its own package does: `magika` (bytes of real files on this machine), `ppocr` (rendered text pages and
lines for the detector, direction classifier and recogniser), `silero` (speech-like audio, with the
LSTM state the model itself reaches on it).
"""

from __future__ import annotations

from ortforge.core.errors import UserError
from ortforge.data import FeedSet
from ortforge.zoo.inputs import magika, ppocr, silero
from ortforge.zoo.inputs.realistic import Synthesizer
from ortforge.zoo.registry import lookup

SYNTHESIZERS: dict[str, Synthesizer] = {
    "magika": magika.feeds,
    "ppocr-det": ppocr.det_feeds,
    "ppocr-cls": ppocr.cls_feeds,
    "ppocr-rec": ppocr.rec_feeds,
    "silero-vad": silero.feeds,
}


def realistic_feeds(name: str, count: int = 8, seed: int = 0) -> FeedSet:
    """`count` seeded inputs like the ones the model meets in use, each of batch 1; notes say what each is."""
    entry = lookup(name)
    if count < 1:
        raise UserError(f"zoo:{name}: need at least one realistic sample, got count {count}")
    made = SYNTHESIZERS[name](entry, count, seed)
    origin = f"zoo:{name} realistic inputs ({made.summary}, seed {seed})"
    return FeedSet(made.samples, origin=origin, generated=False, notes=made.notes)
