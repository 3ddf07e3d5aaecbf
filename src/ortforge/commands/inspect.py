"""`ortforge inspect`: a model's I/O, ops, parameters, MACs, family, and which nodes each local EP takes."""

from __future__ import annotations

from pathlib import Path

from ortforge import zoo
from ortforge.analysis.model_report import ModelReport, inspect_model
from ortforge.commands.common import feeds_for, open_model
from ortforge.core.runtime import local_providers
from ortforge.data import ShapeOptions
from ortforge.measure.placement import placement_for


def inspect(reference: str | Path, *, shape_options: ShapeOptions | None = None, placement: bool = True, check: bool = True) -> ModelReport:
    """Inputs, ops, parameters, FLOPs, family, and the node->EP assignment for every local EP."""
    model = open_model(reference, check=check)
    feeds = None
    is_zoo = zoo.is_zoo_reference(str(reference))
    if shape_options is None and is_zoo:
        # A zoo model's real input shapes matter: PP-OCR rec only runs at height 48, silero at 576 samples.
        sample = feeds_for(model, reference, samples=1).samples[0]
        shape_options = ShapeOptions(shapes={name: array.shape for name, array in sample.items()})
        feeds = sample
    report = inspect_model(model, shape_options, feeds=feeds)
    if is_zoo:
        report.name = str(reference)
    if placement:
        report.placements = [placement_for(model, provider) for provider in local_providers()]
    return report
