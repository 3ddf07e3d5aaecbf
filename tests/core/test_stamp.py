"""The stamp an offline-optimized model carries, checked against this machine without optimizing anything."""

from __future__ import annotations

from dataclasses import replace

import pytest

from helpers import linear_model
from ortforge.core import runtime
from ortforge.core.errors import UserError
from ortforge.core.machine import machine_info
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.core.stamp import LAYOUT_FEATURES, STAMP_KEY, config_for, load_level, make_stamp, mismatches, read_stamp, write_stamp

CPU = [{"name": "CPUExecutionProvider", "options": {}}]


def test_a_stamp_made_here_fits_here_and_survives_the_model():
    stamp = make_stamp(CPU, "all", False, "abc")
    assert stamp.ort_version == runtime.version() and stamp.architecture == machine_info().cpu.architecture
    assert set(stamp.isa_features) <= LAYOUT_FEATURES and mismatches(stamp) == []
    proto = linear_model()
    write_stamp(proto, stamp)
    write_stamp(proto, stamp)  # restamping replaces, never duplicates
    assert [entry.key for entry in proto.metadata_props].count(STAMP_KEY) == 1
    assert read_stamp(proto) == stamp


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"ort_version": "1.2.0"}, "made with onnxruntime 1.2.0"),
        ({"architecture": "riscv64"}, "made for a riscv64 CPU"),
        ({"providers": [{"name": "NoSuchExecutionProvider", "options": {}}]}, "made for NoSuchExecutionProvider"),
        ({"gpu_compute_capabilities": ["99.0"]}, "made for GPU compute capability 99.0"),
    ],
)
def test_each_mismatch_is_named(changes, fragment):
    stamp = replace(make_stamp(CPU, "all", False, "abc"), **changes)
    assert any(fragment in problem for problem in mismatches(stamp))


def test_isa_features_must_match_exactly_unless_portable():
    here = make_stamp(CPU, "all", False, "abc")
    missing = sorted(LAYOUT_FEATURES - set(here.isa_features))[0]
    assert any(f"made for {missing}" in p for p in mismatches(replace(here, isa_features=here.isa_features + [missing])))
    if here.isa_features:  # made on a CPU with fewer features than this one: other kernels and layouts here
        assert any("without" in p for p in mismatches(replace(here, isa_features=[])))
    assert mismatches(replace(here, isa_features=[missing], portable=True)) == []


def test_the_load_level_and_config_follow_from_the_saved_level():
    assert [load_level(level) for level in ("basic", "extended", "layout", "all")] == ["all", "all", "disable", "disable"]
    stamp = make_stamp([{"name": "CPUExecutionProvider", "options": {}}], "extended", True, "abc")
    assert config_for(stamp).graph_optimization_level == "all"
    mine = SessionConfig(providers=[ProviderSpec("CPUExecutionProvider")], intra_op_num_threads=1)
    assert config_for(replace(stamp, level="all"), mine) == replace(mine, graph_optimization_level="disable")  # keeps the given EPs and threads
    assert config_for(None, mine) is mine


def test_an_unreadable_stamp_is_one_line():
    proto = linear_model()
    proto.metadata_props.add(key=STAMP_KEY, value='{"level": "all"}')
    with pytest.raises(UserError, match="stamp is unreadable"):
        read_stamp(proto)
