"""Layers are found in the IR by the initializer names their constants carry from import on,
not by their content: identical weights of two layers, a Gemm(transB=1) whose transposed weight
equals another layer's, and the fallback for a weight the graph computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from sail_compiler.driver import compile_model
from sail_compiler.frontend import import_onnx, load_checked
from sail_compiler.ops.quant_matmul import attrs_dict, is_quant_matmul, layer_name, weight_ref_of
from sail_compiler.options import CompileOptions
from sail_compiler.passes import FoldWeightTransposes, QuantizeWeights
from sail_compiler.quant.plan import weight_ref
from sail_compiler.quant.scheme import QuantScheme

K = 32
RNG = np.random.default_rng(5)


def _model(path: Path) -> Path:
    """x[2, K] -> MatMul(w_a) "first" -> MatMul(w_b) "second" -> Gemm(b_t, transB=1) "third"
    -> MatMul(Mul(w_c, 2)) "computed": w_a, w_b and b_t^T hold the same floats; the last
    weight is computed in the graph, so no initializer names it."""
    w = RNG.standard_normal((K, K)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w_a"], ["h0"], name="first"),
        helper.make_node("MatMul", ["h0", "w_b"], ["h1"], name="second"),
        helper.make_node("Gemm", ["h1", "b_t"], ["h2"], name="third", transB=1),
        helper.make_node("Mul", ["w_c", "two"], ["w_c2"], name="scale_w"),
        helper.make_node("MatMul", ["h2", "w_c2"], ["y"], name="computed"),
    ]
    inits = [numpy_helper.from_array(w, "w_a"), numpy_helper.from_array(w.copy(), "w_b"),
             numpy_helper.from_array(np.ascontiguousarray(w.T), "b_t"),
             numpy_helper.from_array(RNG.standard_normal((K, K)).astype(np.float32), "w_c"),
             numpy_helper.from_array(np.float32(2.0), "two")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, K])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out = path / "same_weights.onnx"
    onnx.save(model, out)
    return out


def _quant_calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls: list[relax.Call] = []
    relax.analysis.post_order_visit(
        mod["main"], lambda e: calls.append(e) if is_quant_matmul(e) else None)
    return calls


def test_identical_weights_keep_their_own_plan_entries(tmp_path: Path) -> None:
    """Three layers with the same float weights (one through Gemm(transB=1)) get their own
    names and widths from a bits plan; by content they all got the first layer's."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [
        {"match": "first", "bits": 3, "group_size": 16},
        {"match": "second", "bits": 5, "group_size": 16},
        {"match": "third", "bits": 8, "group_size": 32}]}))
    result = compile_model(_model(tmp_path), None,
                           CompileOptions(bits_plan=plan, emit="quantize"))
    got = [(layer_name(c), attrs_dict(c)["bits"], attrs_dict(c)["group_size"])
           for c in _quant_calls(result.module)]
    assert got == [("first", 3, 16), ("second", 5, 16), ("third", 8, 32)]
    # the computed weight is no layer: it stays float
    assert result.module.script().count("R.matmul(") == 1


def test_weight_constants_are_named_from_import_on(tmp_path: Path) -> None:
    mod, _ = import_onnx(load_checked(_model(tmp_path)))
    refs: list[str | None] = []
    relax.analysis.post_order_visit(mod["main"], lambda e: refs.append(weight_ref_of(e))
                                    if isinstance(e, tvm.ir.GenericConst) else None)
    assert {"sail.init:w_a", "sail.init:w_b", "sail.init:b_t"} <= set(refs)
    # the Gemm's transpose is still a call: FoldConstant would make an unnamed constant of it
    folded = relax.transform.FoldConstant()(mod)
    ours = relax.transform.FoldConstant()(FoldWeightTransposes()(mod))
    tvm.ir.assert_structural_equal(ours, folded)  # the same module, values included

    def weights(m: tvm.IRModule) -> list[tuple[str | None, bytes]]:
        found: list[tuple[str | None, bytes]] = []
        relax.analysis.post_order_visit(m["main"], lambda e: found.append(
            (weight_ref_of(e.args[1]), e.args[1].value.numpy().tobytes()))
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.matmul"
            and isinstance(e.args[1], tvm.ir.GenericConst) else None)
        return found

    plain, named = weights(folded), weights(ours)
    assert [r for r, _ in plain] == ["sail.init:w_a", "sail.init:w_b", None, None]
    assert [r for r, _ in named] == ["sail.init:w_a", "sail.init:w_b", "sail.init.T:b_t", None]
    assert [b for _, b in plain] == [b for _, b in named]  # byte for byte


@pytest.mark.parametrize("scheme", [None, QuantScheme(4, 16)])
def test_unnamed_weight_falls_back_to_the_label(tmp_path: Path,
                                                scheme: QuantScheme | None) -> None:
    """A constant the graph computed carries no name: QuantizeWeights treats it like any weight
    outside the table, under its ``matmul.<i>`` label with the pass's scheme (float without)."""
    mod, _ = import_onnx(load_checked(_model(tmp_path)))
    mod = relax.transform.FoldConstant()(FoldWeightTransposes()(mod))
    table = {weight_ref(name): (layer, None)
             for name, layer in (("w_a", "first"), ("w_b", "second"))}
    table[weight_ref("b_t", True)] = ("third", None)
    pass_ = QuantizeWeights(scheme, layers=table)
    out = pass_(mod)
    assert [a["layer"] for a in pass_.applied] == ([] if scheme is None else ["matmul.3"])
    assert len(_quant_calls(out)) == (0 if scheme is None else 1)


def test_an_initializer_the_preprocessing_changed_is_not_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name stands for the initializer's bytes in the compiled model: one the preprocessing
    changed under its old name is left unnamed (so its layer stays float, not quantized from the
    original bytes)."""
    from sail_compiler.frontend import importer

    stock = importer.preprocess

    def changing(model: onnx.ModelProto) -> onnx.ModelProto:
        out = stock(model)
        for i, t in enumerate(out.graph.initializer):
            if t.name == "w_b":
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(
                    -numpy_helper.to_array(t), "w_b"))
        return out

    monkeypatch.setattr(importer, "preprocess", changing)
    mod, _ = import_onnx(load_checked(_model(tmp_path)))
    refs: list[str | None] = []
    relax.analysis.post_order_visit(mod["main"], lambda e: refs.append(weight_ref_of(e))
                                    if isinstance(e, tvm.ir.GenericConst) else None)
    assert "sail.init:w_a" in refs and "sail.init:w_b" not in refs
