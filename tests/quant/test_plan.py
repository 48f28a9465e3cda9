"""Layer discovery, bits plans and resolved plans (quant.plan)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sail_compiler.errors import OptionError
from sail_compiler.quant.plan import (
    PLAN_METHODS,
    BitsPlan,
    LayerChoice,
    ResolvedPlan,
    find_embeddings,
    find_layers,
    layer_ref,
    layer_weight,
    weight_ref,
)
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(3)


def _model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x[2, 8] -> MatMul(W0 [8, 6], named) -> Gemm(B [5, 6], transB) -> MatMul(unnamed W2 [5, 4])
    plus a MatMul of two activations and an int weight that are not layers."""
    w0 = RNG.standard_normal((8, 6)).astype(np.float32)
    b1 = RNG.standard_normal((5, 6)).astype(np.float32)
    w2 = RNG.standard_normal((5, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="proj"),
        helper.make_node("Gemm", ["h0", "b1"], ["h1"], name="head", transB=1),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "h2t"], ["y"], name="act_act"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8]),
                     helper.make_tensor_value_info("h2t", TensorProto.FLOAT, [4, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph), {"proj": w0, "head": b1.T, "MatMul_2": w2}


def test_find_layers_names_shapes_and_weights() -> None:
    model, weights = _model()
    layers = find_layers(model)
    assert [(x.name, x.op_type, x.k, x.n, x.transposed) for x in layers] == [
        ("proj", "MatMul", 8, 6, False), ("head", "Gemm", 6, 5, True),
        ("MatMul_2", "MatMul", 5, 4, False)]
    for layer in layers:
        np.testing.assert_array_equal(layer_weight(model, layer), weights[layer.name])
        assert layer_weight(model, layer).flags.c_contiguous


def test_layer_refs_name_the_constant_the_ir_holds() -> None:
    """A layer's weight is found in the IR by its initializer's name; a Gemm(transB=1) reads
    the transposed constant, a lookup table the initializer as stored."""
    model, _ = _model()
    assert [layer_ref(x) for x in find_layers(model)] == [
        "sail.init:w0", "sail.init.T:b1", "sail.init:w2"]
    assert weight_ref("w0") == "sail.init:w0" and weight_ref("w0", True) == "sail.init.T:w0"
    table = numpy_helper.from_array(RNG.standard_normal((9, 4)).astype(np.float32), "embed")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed", "ids"], ["y"], name="lookup")], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4])], [table])
    (lookup,) = find_embeddings(helper.make_model(graph))
    assert lookup.transposed and layer_ref(lookup) == "sail.init:embed"

def test_plan_first_matching_rule_decides_and_forms_agree() -> None:
    model, _ = _model()
    layers = find_layers(model)
    plan = BitsPlan.parse({"layers": [
        {"match": "head", "float": True},
        {"match": "pro*", "scheme": "w3g64sym", "method": "search"},
        {"match": "*", "bits": 5, "group_size": "channel"},
    ]}, default=QuantScheme(4, 32))
    assert plan.choose(layers[1]).scheme is None
    assert plan.choose(layers[0]) == LayerChoice(QuantScheme(3, 64, True), "search", "plan")
    assert plan.choose(layers[2]).scheme == QuantScheme(5, None, False)
    assert plan.unmatched(layers) == []


@pytest.mark.parametrize(("data", "message"), [
    ({"rules": []}, "\"layers\" list"),
    ({"layers": [{"bits": 4}]}, "string \"match\""),
    ({"layers": [{"match": "*"}]}, "needs \"bits\""),
    ({"layers": [{"match": "*", "bits": 9}]}, "1..8"),
    ({"layers": [{"match": "*", "bits": 4, "group_size": 0}]}, "positive"),
    ({"layers": [{"match": "*", "bits": 4, "group_size": "row"}]}, "\"channel\""),
    ({"layers": [{"match": "*", "bits": 4, "method": "awq"}]}, "valid choices are: rtn"),
    ({"layers": [{"match": "*", "bits": 4, "colour": 1}]}, "unknown key"),
    ({"layers": [{"match": "*", "float": True, "bits": 4}]}, "keep one"),
    ({"layers": [{"match": "*", "scheme": "w4g32", "bits": 4}]}, "give one form"),
    ({"format": "other", "layers": []}, "expected 'sail-quant-plan'"),
])
def test_bad_plans_are_option_errors(data: object, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        BitsPlan.parse(data, "plan.json")


def test_plan_file_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match="does not exist"):
        BitsPlan.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(OptionError, match="not readable JSON"):
        BitsPlan.load(tmp_path / "bad.json")


def test_resolved_plan_reloads_to_the_same_choices() -> None:
    model, _ = _model()
    layers = find_layers(model)
    # a name with fnmatch metacharacters must still match only itself
    layers[2] = type(layers[2])(**{**layers[2].__dict__, "name": "blk[0]*?"})
    choices = (LayerChoice(QuantScheme(2, 32), "gptq", "avg-bits"),
               LayerChoice(None, "rtn", "skip"),
               LayerChoice(QuantScheme(7, None, True), "search", "plan"))
    resolved = ResolvedPlan(tuple(layers), choices, 8)
    reloaded = BitsPlan.parse(json.loads(json.dumps(resolved.to_json())))
    assert reloaded.act_bits == 8
    for layer, choice in zip(layers, choices, strict=True):
        got = reloaded.choose(layer)
        assert (got.scheme, got.method if got.scheme else None) == \
            (choice.scheme, choice.method if choice.scheme else None)
    assert resolved.average_bits() == pytest.approx((2 * 48 + 7 * 20) / (48 + 20))


def test_plan_methods_match_the_methods_module() -> None:
    from sail_compiler.quant.methods import METHODS

    assert tuple(PLAN_METHODS) == tuple(METHODS)
