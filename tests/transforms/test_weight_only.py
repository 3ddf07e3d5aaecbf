"""Weight-only quantization on tiny models: what gets quantized, what is skipped and why, and the outputs."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers import make_model, tensor, weight
from ortforge.core.errors import UserError
from ortforge.core.model import from_proto
from ortforge.transforms.weight_only import WeightOnlyOptions, quantize_weight_only

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)


def chain_model() -> onnx.ModelProto:
    """fc1 (initializer) -> Relu -> fc2 (Constant weight) -> head (Gemm transB=1 + bias) -> self (B activation)."""
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu"),
        helper.make_node("Constant", [], ["W2"], name="w2_const", value=numpy_helper.from_array(_w(64, 48), "W2")),
        helper.make_node("MatMul", ["r1", "W2"], ["h2"], name="fc2"),
        helper.make_node("Gemm", ["h2", "W3", "C3"], ["y"], name="head", transB=1),
        helper.make_node("Transpose", ["y"], ["yt"], name="transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["y", "yt"], ["z"], name="self"),
    ]
    initializers = [weight("W1", _w(64, 64)), weight("W3", _w(32, 48)), weight("C3", _w(32))]
    return make_model(nodes, [tensor("x", [4, 64])], [tensor("y", [4, 32]), tensor("z", [4, 4])], initializers)


def embedding_model(shared: bool = False) -> onnx.ModelProto:
    """embed (Gather on a table) -> proj (MatMul; with shared=True on the table itself) -> ReduceMean (opset-17 axes attribute)."""
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "E" if shared else "W"], ["p"], name="proj"),
        helper.make_node("ReduceMean", ["p"], ["y"], name="mean", axes=[-1], keepdims=1),
    ]
    initializers = [weight("E", _w(64, 64))] if shared else [weight("E", _w(100, 64)), weight("W", _w(64, 32))]
    return make_model(nodes, [tensor("ids", [5], TensorProto.INT64)], [tensor("p", None), tensor("y", None)], initializers)


def if_model() -> onnx.ModelProto:
    """A MatMul in each If branch: one on an outer-scope weight, one on the branch's own initializer."""
    then_branch = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"], name="then_mm")], "then", [], [tensor("t", None)])
    else_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "V"], ["e"], name="else_mm")], "else", [], [tensor("e", None)], [weight("V", _w(64, 32))]
    )
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    return make_model([node], [tensor("x", [3, 64]), tensor("c", [], TensorProto.BOOL)], [tensor("y", None)], [weight("W", _w(64, 32))])


def run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ops(proto: onnx.ModelProto) -> list[str]:
    found = []
    for graph in [proto.graph] + [a.g for n in proto.graph.node for a in n.attribute if a.HasField("g")]:
        found.extend(node.op_type for node in graph.node)
    return found


def quantized_nodes(proto: onnx.ModelProto, op_type: str = "MatMulNBits") -> list[onnx.NodeProto]:
    return [node for node in proto.graph.node if node.op_type == op_type and node.domain == "com.microsoft"]


def attribute(node: onnx.NodeProto, name: str):
    values = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return values[0] if values else None


CHAIN_FEEDS = {"x": RNG.standard_normal((4, 64)).astype(np.float32)}


@pytest.mark.parametrize(("bits", "floor"), [(4, 0.99), (8, 0.9999)])
def test_chain_quantizes_initializer_constant_and_gemm_weights(bits: int, floor: float) -> None:
    original = chain_model()
    result = quantize_weight_only(from_proto(original), WeightOnlyOptions(bits=bits))
    assert result.changed
    assert len(quantized_nodes(result.proto)) == 3
    assert {attribute(n, "bits") for n in quantized_nodes(result.proto)} == {bits}
    assert ops(result.proto).count("MatMul") == 1 and "Gemm" not in ops(result.proto) and "Constant" not in ops(result.proto)
    details = result.details
    assert details["quantized"] == {"MatMul": 2, "Gemm": 1}
    assert details["skipped"] == [{"node": "self", "op_type": "MatMul", "reason": "B is an activation, not a weight"}]
    assert details["constants_lifted"] == 1 and details["gemms_rewritten"] == 1
    assert details["weight_bytes_after"] < (0.35 if bits == 4 else 0.5) * details["weight_bytes_before"]
    reference, produced = run(original, CHAIN_FEEDS), run(result.proto, CHAIN_FEEDS)
    assert all(cosine(r, p) >= floor for r, p in zip(reference, produced, strict=True))
    assert result.proto.opset_import[0].version == original.opset_import[0].version


def test_gemm_rewrite_honours_trans_a_alpha_beta_and_computed_c() -> None:
    nodes = [
        helper.make_node("Relu", ["c_in"], ["c"], name="c_act"),
        helper.make_node("Gemm", ["a", "B", "c"], ["y"], name="gemm", transA=1, alpha=0.5, beta=2.0),
        helper.make_node("Gemm", ["y", "B2", "C2"], ["y2"], name="gemm2", beta=3.0),
    ]
    proto = make_model(nodes, [tensor("a", [64, 4]), tensor("c_in", [4, 32])], [tensor("y2", [4, 16])],
                       [weight("B", _w(64, 32)), weight("B2", _w(32, 16)), weight("C2", _w(16))])
    feeds = {"a": RNG.standard_normal((64, 4)).astype(np.float32), "c_in": RNG.standard_normal((4, 32)).astype(np.float32)}
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(bits=8))
    assert result.details["quantized"] == {"MatMul": 0, "Gemm": 2}
    assert len(quantized_nodes(result.proto)) == 2 and "Transpose" in ops(result.proto)
    assert cosine(run(proto, feeds)[0], run(result.proto, feeds)[0]) >= 0.9999


def test_gemms_sharing_a_weight_share_its_quantized_form() -> None:
    nodes = [helper.make_node("Gemm", [x, "B"], [f"{x}_out"], name=f"gemm_{x}", transB=1) for x in ("a", "b")]
    proto = make_model(nodes, [tensor("a", [2, 64]), tensor("b", [2, 64])], [tensor("a_out", [2, 32]), tensor("b_out", [2, 32])],
                       [weight("B", _w(32, 64))])
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions())
    packed = {n.input[1] for n in quantized_nodes(result.proto)}
    assert len(quantized_nodes(result.proto)) == 2 and len(packed) == 1
    assert [t.name for t in result.proto.graph.initializer].count(packed.pop()) == 1


def test_k_not_a_multiple_of_the_block_is_padded_not_skipped() -> None:
    proto = make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [tensor("x", [3, 20])], [tensor("y", [3, 24])],
                       [weight("W", _w(20, 24))])
    feeds = {"x": RNG.standard_normal((3, 20)).astype(np.float32)}
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(bits=8, block_size=32))
    assert attribute(quantized_nodes(result.proto)[0], "K") == 20
    assert cosine(run(proto, feeds)[0], run(result.proto, feeds)[0]) >= 0.9999


def test_symmetric_drops_zero_points_and_asymmetric_stores_them() -> None:
    proto = chain_model()
    asymmetric = quantize_weight_only(from_proto(proto), WeightOnlyOptions(symmetric=False))
    symmetric = quantize_weight_only(from_proto(proto), WeightOnlyOptions(symmetric=True))
    assert all(len(n.input) == 4 for n in quantized_nodes(asymmetric.proto))
    assert all(len(n.input) == 3 for n in quantized_nodes(symmetric.proto))
    assert not any(t.name.endswith("_zero_points") for t in symmetric.proto.graph.initializer)
    # Symmetric 4-bit spends a level on the sign: three chained random layers land near 0.99, not above.
    assert cosine(run(proto, CHAIN_FEEDS)[0], run(symmetric.proto, CHAIN_FEEDS)[0]) >= 0.98


def test_accuracy_level_and_block_size_land_in_the_node() -> None:
    result = quantize_weight_only(from_proto(chain_model()), WeightOnlyOptions(accuracy_level=4, block_size=16))
    assert {attribute(n, "accuracy_level") for n in quantized_nodes(result.proto)} == {4}
    assert {attribute(n, "block_size") for n in quantized_nodes(result.proto)} == {16}
    unset = quantize_weight_only(from_proto(chain_model()), WeightOnlyOptions(accuracy_level=0))
    assert {attribute(n, "accuracy_level") for n in quantized_nodes(unset.proto)} == {None}
    run(result.proto, CHAIN_FEEDS)


def test_exclusions_by_name_and_op_type() -> None:
    result = quantize_weight_only(from_proto(chain_model()), WeightOnlyOptions(exclude=("fc1", "Gemm", "no_such_node")))
    assert len(quantized_nodes(result.proto)) == 1  # fc2 only
    assert "Gemm" in ops(result.proto) and ops(result.proto).count("MatMul") == 2
    reasons = {entry["node"]: entry["reason"] for entry in result.details["skipped"]}
    assert reasons["fc1"] == "excluded by name" and reasons["head"] == "excluded by op type"
    assert any("no_such_node" in note for note in result.notes)
    run(result.proto, CHAIN_FEEDS)


def test_gather_is_opt_in_and_keeps_the_opset() -> None:
    proto = embedding_model()
    feeds = {"ids": np.array([0, 7, 42, 99, 7])}
    default = quantize_weight_only(from_proto(proto), WeightOnlyOptions())
    assert "Gather" in ops(default.proto) and "Gather" not in default.details["quantized"]
    for symmetric in (False, True):
        result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(op_types=("MatMul", "Gather"), symmetric=symmetric))
        (gather,) = quantized_nodes(result.proto, "GatherBlockQuantized")
        assert len(gather.input) == (3 if symmetric else 4)
        assert result.details["quantized"] == {"MatMul": 1, "Gather": 1}
        # ORT's tool forces opset 21, which would make ReduceMean's axes attribute invalid.
        assert result.proto.opset_import[0].version == 17
        assert cosine(run(proto, feeds)[0], run(result.proto, feeds)[0]) >= 0.99  # y, a mean, is checked by running


def test_weight_shared_by_gather_and_matmul_gets_a_copy_each() -> None:
    proto = embedding_model(shared=True)
    feeds = {"ids": np.array([1, 2, 3, 4, 5])}
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(op_types=("MatMul", "Gather")))
    assert result.details["quantized"] == {"MatMul": 1, "Gather": 1} and result.details["weights_split"] == 1
    assert cosine(run(proto, feeds)[0], run(result.proto, feeds)[0]) >= 0.99


def test_matmuls_inside_if_branches_are_quantized() -> None:
    proto = if_model()
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(bits=8))
    assert result.details["quantized"] == {"MatMul": 2, "Gemm": 0}
    assert ops(result.proto).count("MatMulNBits") == 2 and result.proto.graph.node[0].op_type == "If"
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    for condition in (True, False):
        feeds = {"x": x, "c": np.array(condition)}
        assert cosine(run(proto, feeds)[0], run(result.proto, feeds)[0]) >= 0.9999


def test_nothing_to_quantize_returns_the_model_untouched() -> None:
    node = helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")
    proto = make_model([node], [tensor("a", [2, 3]), tensor("b", [3, 2])], [tensor("y", [2, 2])])
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions())
    assert not result.changed and result.proto == proto
    assert result.details["skipped_by_reason"] == {"B is an activation, not a weight": 1}


def test_input_model_is_not_modified_and_no_files_are_written(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    proto = chain_model()
    proto.graph.node[0].name = ""  # an unnamed MatMul is named for ORT's tool (in the copy only)
    snapshot = proto.SerializeToString()
    result = quantize_weight_only(from_proto(proto), WeightOnlyOptions(op_types=("MatMul", "Gemm", "Gather")))
    assert os.listdir(tmp_path) == []
    assert proto.SerializeToString() == snapshot
    assert len(quantized_nodes(result.proto)) == 3 and result.details["nodes_named"] == 1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"bits": 3}, "bits=3"),
        ({"block_size": 10}, "block_size=10"),
        ({"block_size": 512}, "block_size=512"),
        ({"accuracy_level": 5}, "accuracy_level=5"),
        ({"op_types": ("Conv",)}, "Conv"),
        ({"op_types": ("Gather",), "bits": 8}, "4 bits only"),
    ],
)
def test_impossible_options_are_user_errors(kwargs: dict, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        WeightOnlyOptions(**kwargs)


def test_k_quants_are_an_algorithm_choice_and_impossible_ones_are_refused():
    from helpers import tiny_decoder
    from ortforge.core.errors import OptionError
    from ortforge.searches.recipes import auto_recipes

    model = from_proto(tiny_decoder())
    plain = quantize_weight_only(model, WeightOnlyOptions())
    kquant = quantize_weight_only(model, WeightOnlyOptions(algorithm="k_quant"))
    assert kquant.changed and sum(n.op_type == "MatMulNBits" for n in kquant.proto.graph.node) == 13
    assert kquant.proto.SerializeToString() != plain.proto.SerializeToString()  # other scales, same op
    assert WeightOnlyOptions(algorithm="k_quant").describe().startswith("weight-only int4 k_quant block 32")
    with pytest.raises(OptionError, match="^algorithm=k_quant: ORT's k-quants are 4 bits in blocks of 32"):
        WeightOnlyOptions(algorithm="k_quant", block_size=128)
    with pytest.raises(OptionError, match="^algorithm=hqq: embeddings"):
        WeightOnlyOptions(algorithm="hqq", op_types=("MatMul", "Gather"))
    decoder = [r.describe() for r in auto_recipes("decoder", ("avx512_vnni",)) if isinstance(r, WeightOnlyOptions)]
    assert any("k_quant" in d for d in decoder) and any("Gather" in d for d in decoder) and any("block 128" in d for d in decoder)
    assert any("gptq block 128" in d for d in decoder)


def test_parameters_of_block_quantized_models_are_their_logical_weights():
    from helpers import tiny_decoder
    from ortforge.analysis.model_report import parameter_stats

    model = from_proto(tiny_decoder(peaked=False))
    before = parameter_stats(model.proto)
    for options in (WeightOnlyOptions(), WeightOnlyOptions(bits=8), WeightOnlyOptions(op_types=("MatMul", "Gather"))):
        after = parameter_stats(quantize_weight_only(model, options).proto)
        assert after.count == before.count, options.describe()  # packed bytes would count fewer; scales would count more
        assert after.bytes < before.bytes and f"int{options.bits} (packed)" in after.by_dtype


def _correlated(rows: int, features: int, seed: int) -> np.ndarray:
    """Activations whose channels are correlated (as a layer's are), one covariance for every seed: where GPTQ's error
    feedback has something to use."""
    mixing = np.random.default_rng(features).standard_normal((features, features)) * 0.3 + np.eye(features)
    return (np.random.default_rng(seed).standard_normal((rows, features)) @ mixing).astype(np.float32)


def test_gptq_carries_rounding_error_to_later_channels_and_beats_round_to_nearest():
    from ortforge.transforms.weight_only.gptq import gptq_fit

    activations, weights = _correlated(2048, 256, 1), _w(256, 64) * 16
    hessian = 2 * activations.T.astype(np.float64) @ activations / len(activations)

    def output_error(fitted: np.ndarray) -> float:
        return float(np.linalg.norm(activations @ (weights - fitted)) / np.linalg.norm(activations @ weights))

    nearest = gptq_fit(weights, np.diag(np.diag(hessian)), 4, 32, False)  # a diagonal Hessian carries nothing: plain rounding
    fitted = gptq_fit(weights, hessian, 4, 32, False)
    assert output_error(fitted) < 0.8 * output_error(nearest)  # ORT 1.31's own GPTQ equals rounding: bench/gptq_fit.py
    assert np.unique(np.round(fitted[:32, 0] / np.ptp(fitted[:32, 0]) * 15, 3)).size <= 16  # each block on a 16-level grid


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_fits_the_weights_to_calibration_data_and_is_refused_without_it(symmetric):
    from ortforge.core.errors import OptionError
    from ortforge.transforms.weight_only.gptq import gptq_fit

    weights = _w(128, 64)
    model = from_proto(make_model([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], [tensor("x", [None, 128])], [tensor("y", None)],
                                  [weight("W", weights)]))  # fmt: skip
    calibration = [{"x": _correlated(256, 128, seed)} for seed in range(4)]
    fitted = quantize_weight_only(model, WeightOnlyOptions(algorithm="gptq", symmetric=symmetric), calibration)
    nearest = quantize_weight_only(model, WeightOnlyOptions(symmetric=symmetric))
    assert [n.op_type for n in fitted.proto.graph.node] == ["MatMulNBits"] and "GPTQ fitted 1 MatMul" in " ".join(fitted.notes)
    held_out = {"x": _correlated(512, 128, 9)}  # drawn like the calibration data, never seen by the fit
    reference = run(model.proto, held_out)[0]
    errors = [np.linalg.norm(run(r.proto, held_out)[0] - reference) for r in (fitted, nearest)]
    assert errors[0] < errors[1]
    # the packer keeps the fitted values when its grid is the fit's: symmetric blocks (a grid of the fit's own had it
    # round a third of them again); asymmetric blocks whose fitted values miss the block's extremes get a narrower grid
    x = np.concatenate([feed["x"] for feed in calibration]).astype(np.float64)
    fit = gptq_fit(weights, 2 * x.T @ x / len(x), 4, 32, symmetric)
    packed = run(fitted.proto, {"x": np.eye(128, dtype=np.float32)})[0]
    assert np.mean(np.isclose(packed, fit, rtol=1e-3, atol=1e-6)) > (0.98 if symmetric else 0.8)
    with pytest.raises(OptionError, match="^algorithm=gptq: GPTQ fits weights to calibration activations"):
        quantize_weight_only(model, WeightOnlyOptions(algorithm="gptq"))


def test_gptq_collects_hessians_in_passes_within_its_memory_bound_and_fits_the_same(monkeypatch):
    from ortforge.transforms.weight_only import gptq

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]  # fmt: skip
    model = from_proto(make_model(nodes, [tensor("x", [None, 64])], [tensor("y", None)], [weight("W1", _w(64, 64)), weight("W2", _w(64, 32))]))
    calibration = [{"x": _correlated(128, 64, seed)} for seed in range(2)]
    together = quantize_weight_only(model, WeightOnlyOptions(algorithm="gptq"), calibration)
    collected = []
    original = gptq._hessians
    monkeypatch.setattr(gptq, "_hessians", lambda m, names, feeds: collected.append(list(names)) or original(m, names, feeds))
    monkeypatch.setattr(gptq, "HESSIAN_BYTES", 8 * 64 * 64)  # one 64 x 64 Hessian at a time
    apart = quantize_weight_only(model, WeightOnlyOptions(algorithm="gptq"), calibration)
    assert collected == [["r"], ["x"]] and apart.proto.SerializeToString() == together.proto.SerializeToString()


def test_k_quants_take_a_model_with_an_input_no_node_reads_and_keep_it():
    from helpers import tiny_decoder

    proto = tiny_decoder()
    proto.graph.input.insert(1, tensor("unread", ["batch"], TensorProto.INT64))  # as position_ids once GroupQueryAttention counts positions
    kquant = quantize_weight_only(from_proto(proto), WeightOnlyOptions(algorithm="k_quant"))  # ORT's sort failed: KeyError 'unread'
    assert kquant.changed and [v.name for v in kquant.proto.graph.input] == [v.name for v in proto.graph.input]


def test_a_gptq_build_is_cached_per_calibration_set_and_rounding_is_not():
    from ortforge.searches.trial import Candidate

    gptq, rtn = (Candidate.of_recipe(WeightOnlyOptions(algorithm=algorithm)) for algorithm in ("gptq", "rtn"))
    assert gptq.key("model", "calibration A") != gptq.key("model", "calibration B")  # the fit depends on the data
    assert rtn.key("model", "calibration A") == rtn.key("model", "calibration B")
