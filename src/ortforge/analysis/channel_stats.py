"""Per-channel statistics of intermediate tensors (axis 1), read through small probes of the one tensor tap.

Bias correction needs each layer input's per-channel mean, equalization each activation's per-channel largest |x|.
Fetching whole feature maps would hold them all; a probe per tensor reduces it inside ORT to one number per (sample
row, channel), whatever the tensor's rank: Flatten(axis=2) gives [N * C, rest], a reduction over axis 1 leaves N * C
numbers, and numpy folds the N rows and the samples.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ortforge.analysis.tap import names_in_use, tap_session
from ortforge.core.model import Model, fresh_name
from ortforge.core.session import run_checked
from ortforge.data import FeedSet

REDUCTIONS = {"mean": "ReduceMean", "absmax": "ReduceMax"}


def _probes(proto: onnx.ModelProto, tensors: list[str], reduce: str, last_axis: bool) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    used = names_in_use(proto.graph)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    probes, outputs = [], {}
    for tensor in tensors:
        source = tensor
        if reduce == "absmax":
            source = fresh_name(f"{tensor}_abs", used)
            probes.append(helper.make_node("Abs", [tensor], [source], name=source))
        flat, out = fresh_name(f"{tensor}_flat", used), fresh_name(f"{tensor}_channel_{reduce}", used)
        # Channels on axis 1: [N * C, rest], reduced over axis 1. On the last axis (a transformer's hidden size):
        # [rest, C], reduced over axis 0.
        probes.append(helper.make_node("Flatten", [source], [flat], axis=-1 if last_axis else 2, name=flat))
        op, reduced = REDUCTIONS[reduce], 0 if last_axis else 1
        if opset >= 18:  # the axes became an input
            axes = fresh_name(f"{tensor}_axes", used)
            probes.append(helper.make_node("Constant", [], [axes], value=numpy_helper.from_array(np.array([reduced], np.int64)), name=axes))
            probes.append(helper.make_node(op, [flat, axes], [out], keepdims=0, name=out))
        else:
            probes.append(helper.make_node(op, [flat], [out], axes=[reduced], keepdims=0, name=out))
        outputs[tensor] = out
    return probes, outputs


def channel_stats(model: Model, tensors: dict[str, int], feeds: FeedSet, reduce: str = "mean", *, last_axis: bool = False) -> dict[str, np.ndarray]:
    """Per channel of each tensor (name -> its channel count; channels on axis 1, or the last axis), over every sample:
    the mean, or the largest |x|. (With `last_axis`, a mean is the mean of per-sample means.)"""
    probes, outputs = _probes(model.proto, list(tensors), reduce, last_axis)
    session = tap_session(model, list(outputs.values()), probes=probes, purpose=f"per-channel {reduce}")
    names = [o.name for o in session.get_outputs()]
    found: dict[str, np.ndarray] = {}
    for number, sample in enumerate(feeds.samples):
        values = dict(zip(names, run_checked(session, sample, model.name, number)))
        for tensor, count in tensors.items():
            rows = np.asarray(values[outputs[tensor]], np.float64).reshape(-1, count)
            if reduce == "mean":
                found[tensor] = found.get(tensor, 0.0) + rows.mean(axis=0) / max(len(feeds.samples), 1)
            else:
                found[tensor] = np.maximum(found.get(tensor, 0.0), rows.max(axis=0))
    return found
