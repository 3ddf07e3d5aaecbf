"""Input data: specs from the graph, concrete shapes, and feeds from user sources or generated."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ortforge.core.errors import OptionError
from ortforge.core.model import Model
from ortforge.core.values import describe_value
from ortforge.data.generate import generate_sample, vocabulary_sizes
from ortforge.data.pinned import pinned_dims
from ortforge.data.sources import Feed, read_source, validate_feed
from ortforge.data.specs import (
    InputSpec,
    ResolvedShapes,
    ShapeOptions,
    input_specs,
    parse_dim_option,
    parse_shape_option,
    resolve_shapes,
)

GENERATED_WARNING = (
    "accuracy judged on generated random inputs: they can hide accuracy collapse; give real data (data, --data)"
)

__all__ = [
    "Feed",
    "FeedSet",
    "GENERATED_WARNING",
    "InputSpec",
    "ShapeOptions",
    "ResolvedShapes",
    "input_specs",
    "check_count",
    "load_feeds",
    "generate_feeds",
    "parse_dim_option",
    "parse_shape_option",
    "resolve_shapes",
]


@dataclass
class FeedSet:
    """Samples to run a model on, and where they came from (generated feeds must be flagged downstream)."""

    samples: list[Feed]
    origin: str
    generated: bool
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def content_hash(self) -> str:
        """sha256 (16 hex digits) of the samples' names and values: the same data hashes the same wherever it was read."""
        digest = hashlib.sha256()
        for sample in self.samples:
            for name in sorted(sample):
                digest.update(name.encode())
                value = sample[name]
                for item in value if isinstance(value, list) else [value]:  # a sequence's items; None for an absent optional
                    digest.update(b"<none>" if item is None else np.ascontiguousarray(item).tobytes())
        return digest.hexdigest()[:16]

    def to_dict(self) -> dict:
        first = self.samples[0] if self.samples else {}
        return {
            "origin": self.origin,
            "generated": self.generated,
            "samples": len(self.samples),
            "shapes": {name: list(value.shape) if isinstance(value, np.ndarray) else describe_value(value) for name, value in first.items()},
            "notes": self.notes,
        }


def generate_feeds(model: Model, count: int = 1, seed: int = 0, shape_options: ShapeOptions | None = None) -> FeedSet:
    """`count` seeded samples with concrete shapes; notes say which defaults and value ranges were used."""
    specs = input_specs(model)
    resolved = resolve_shapes(specs, shape_options, pinned_dims(model))
    vocab = vocabulary_sizes(model)
    rng = np.random.default_rng(seed)
    samples: list[Feed] = []
    value_notes: list[str] = []
    for index in range(count):
        feed = {}
        for spec in specs:
            feed[spec.name], why = generate_sample(spec, resolved.shapes[spec.name], rng, vocab.get(spec.name))
            if index == 0:
                value_notes.append(f"{spec.name}: {why}")
        samples.append(feed)
    return FeedSet(samples, origin=f"generated (seed {seed})", generated=True, notes=resolved.defaults + value_notes)


def check_count(count: int | None, option: str) -> None:
    """A sample count the user gave: a whole number, 1 or more (None: the command's default)."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise OptionError(option, count, "give a whole number of samples, 1 or more")


def load_feeds(
    model: Model,
    source: str | None = None,
    *,
    count: int | None = None,
    seed: int = 0,
    shape_options: ShapeOptions | None = None,
    option: str = "data",
) -> FeedSet:
    """Feeds from `source` (file, folder, module:function) validated against the model, else generated.

    `count` caps the samples read (all by default) or sets how many to generate (1 by default);
    errors name `option`, the argument the source came from (data, calib).
    """
    check_count(count, "calib_samples" if option == "calib" else "samples")
    if source is None:
        return generate_feeds(model, count or 1, seed, shape_options)
    specs = input_specs(model)
    samples = [validate_feed(feed, specs, option, where) for where, feed in read_source(source, specs, limit=count, option=option)]
    if not samples:
        raise OptionError(option, source, "contains no samples")
    return FeedSet(samples, origin=source, generated=False)
