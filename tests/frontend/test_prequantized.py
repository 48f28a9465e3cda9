"""onnxruntime's quantized matmuls (MatMulNBits, DequantizeLinear -> MatMul) become float MatMuls
whose weights are exactly what onnxruntime dequantizes; checked against onnxruntime itself."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    HQQWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)
from onnxruntime.quantization.quant_utils import QuantFormat

from sail_compiler.errors import ModelCheckError
from sail_compiler.frontend import load_checked
from sail_compiler.frontend.prequantized import rewrite_prequantized
from sail_compiler.quant import dequantize
from sail_compiler.testing.decoders import PRESETS, make_decoder

QOP, QDQ = QuantFormat.QOperator, QuantFormat.QDQ
N = 24


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # onnxruntime fuses DequantizeLinear -> MatMul into a MatMulNBits that quantizes activations
    # to int8 (accuracy_level 4) unless told otherwise; the reference is the exact level 0.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _matmul_model(k: int, opset: int = 21, seed: int = 0) -> onnx.ModelProto:
    """``y = x @ w`` with x [batch, seq, k] and a random float32 w [k, N]."""
    w = np.random.default_rng(seed).normal(size=(k, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _ort_quantize(model: onnx.ModelProto, **config: object) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's MatMulNBitsQuantizer (default = RTN algorithm)."""
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    algo = config.pop("algo", None) or DefaultWeightOnlyQuantConfig(**config)
    quantizer = MatMulNBitsQuantizer(copy.deepcopy(model), algo_config=algo)
    quantizer.process()
    return quantizer.model.model


def _ort_weights(model: onnx.ModelProto, k: int) -> np.ndarray:
    """The [k, N] weights onnxruntime multiplies by: the model applied to the identity."""
    (y,) = _session(model).run(None, {"x": np.eye(k, dtype=np.float32)[None]})
    return y[0]


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _check_rewrite(quantized: onnx.ModelProto, k: int, source: str) -> None:
    """Rewrite a one-matmul quantized model and compare it with onnxruntime on the original."""
    rewritten = copy.deepcopy(quantized)
    layers = rewrite_prequantized(rewritten)
    (name, layer), = layers.items()
    assert layer.source == source and layer.weight_name == name
    matmul = [n for n in quantized.graph.node if n.op_type in ("MatMulNBits", "MatMul")][0]
    assert [(n.op_type, n.name) for n in rewritten.graph.node] == [("MatMul", matmul.name)]
    assert layer.node_name == matmul.name
    # Only the float weight is left, and it is dequantize(qw) bit for bit.
    (weight,) = rewritten.graph.initializer
    assert weight.name == name and weight.data_type == TensorProto.FLOAT
    assert np.array_equal(numpy_helper.to_array(weight), dequantize(layer.qw))
    assert all(o.domain != "com.microsoft" for o in rewritten.opset_import)
    # (b) the codes, scales and zero points reproduce onnxruntime's dequantized weights exactly.
    assert np.array_equal(dequantize(layer.qw), _ort_weights(quantized, k))
    # (a) the rewritten float model computes what onnxruntime computes on the quantized one.
    x = np.random.default_rng(1).normal(size=(2, 5, k)).astype(np.float32)
    (want,), (got,) = (_session(m).run(None, {"x": x}) for m in (quantized, rewritten))
    assert _rel_err(got, want) < 1e-5


@pytest.mark.parametrize("bits, block, symmetric, k", [
    (2, 16, True, 80), (2, 64, False, 80), (4, 16, False, 80), (4, 32, True, 80),
    (4, 128, False, 80), (4, 64, True, 128), (8, 32, False, 80), (8, 128, True, 128)])
def test_matmulnbits_matches_onnxruntime(bits: int, block: int, symmetric: bool, k: int) -> None:
    quantized = _ort_quantize(_matmul_model(k), bits=bits, block_size=block,
                              is_symmetric=symmetric)
    _check_rewrite(quantized, k, "MatMulNBits")
    (layer,) = rewrite_prequantized(quantized).values()
    qw = layer.qw
    assert (qw.bits, qw.group_size, qw.k, qw.n, qw.symmetric) == (bits, block, k, N, symmetric)


@pytest.mark.parametrize("block, symmetric, k", [(16, True, 80), (32, False, 80),
                                                 (128, False, 128)])
def test_onnxruntime_qdq_int4_matches_onnxruntime(block: int, symmetric: bool, k: int) -> None:
    quantized = _ort_quantize(_matmul_model(k), bits=4, block_size=block, is_symmetric=symmetric,
                              quant_format=QDQ)
    assert {t.data_type for t in quantized.graph.initializer} & {TensorProto.INT4,
                                                                 TensorProto.UINT4}
    _check_rewrite(quantized, k, "DequantizeLinear")


def test_bias_becomes_an_add() -> None:
    quantized = _ort_quantize(_matmul_model(64), bits=4, block_size=32, is_symmetric=False)
    (node,) = quantized.graph.node
    node.input.extend(["", "bias"])  # no g_idx, then the bias
    bias = np.random.default_rng(3).normal(size=N).astype(np.float32)
    quantized.graph.initializer.append(numpy_helper.from_array(bias, "bias"))
    rewritten = copy.deepcopy(quantized)
    rewrite_prequantized(rewritten)
    assert [(n.op_type, n.name) for n in rewritten.graph.node] == [("MatMul", "fc_Q4"),
                                                                   ("Add", "fc_Q4_bias")]
    x = np.random.default_rng(1).normal(size=(2, 5, 64)).astype(np.float32)
    (want,), (got,) = (_session(m).run(None, {"x": x}) for m in (quantized, rewritten))
    assert _rel_err(got, want) < 1e-5


def _dq_model(codes: np.ndarray, elem_type: int, scale: np.ndarray, zero: np.ndarray | None,
              opset: int, **attrs: int) -> onnx.ModelProto:
    """``x @ DequantizeLinear(codes, scale, zero)`` with constant codes [k, N]."""
    k = codes.shape[0]
    inits = [helper.make_tensor("q", elem_type, codes.shape, codes.flatten().tolist()),
             numpy_helper.from_array(scale, "s")]
    if zero is not None:
        inits.append(helper.make_tensor("z", elem_type, zero.shape, zero.flatten().tolist()))
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"] + ["z"] * (zero is not None), ["w"],
                              name="dq", **attrs),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "dq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 11 if opset >= 25 else 10
    return model


# (element type, bits, signed, opset, layout, zero point): layout "tensor", "column", "column-1"
# (axis=-1) or a block size along K.
DQ_CASES = [
    (TensorProto.INT8, 8, True, 21, "column", None),
    (TensorProto.INT8, 8, True, 21, "column-1", 3),
    (TensorProto.UINT8, 8, False, 21, "tensor", 131),
    (TensorProto.UINT8, 8, False, 21, 32, None),
    (TensorProto.INT4, 4, True, 21, 16, -3),
    (TensorProto.UINT4, 4, False, 21, 16, None),
    (TensorProto.INT2, 2, True, 25, 16, None),
    (TensorProto.UINT2, 2, False, 25, 32, 1),
]


@pytest.mark.parametrize("elem_type, bits, signed, opset, layout, zero", DQ_CASES)
def test_dequantize_linear_layouts_match_onnxruntime(elem_type: int, bits: int, signed: bool,
                                                     opset: int, layout: object,
                                                     zero: int | None) -> None:
    k = 40  # not a multiple of the blocks: the last group is padded
    rng = np.random.default_rng(bits + opset)
    lo = -(1 << (bits - 1)) if signed else 0
    codes = rng.integers(lo, lo + (1 << bits), size=(k, N))
    attrs: dict[str, int] = {}
    if layout == "tensor":
        scale_shape: tuple[int, ...] = ()
    elif layout in ("column", "column-1"):
        scale_shape, attrs["axis"] = (N,), (1 if layout == "column" else -1)
    else:
        scale_shape, attrs = (-(-k // layout), N), {"axis": 0, "block_size": layout}
    scale = rng.uniform(-0.1, 0.1, size=scale_shape).astype(np.float32)
    zeros = None
    if zero is not None:
        zeros = rng.integers(lo, lo + (1 << bits), size=scale_shape)
        zeros.flat[0] = zero
    _check_rewrite(_dq_model(codes, elem_type, scale, zeros, opset, **attrs), k,
                   "DequantizeLinear")
    (layer,) = rewrite_prequantized(_dq_model(codes, elem_type, scale, zeros, opset,
                                              **attrs)).values()
    assert layer.qw.bits == bits
    assert layer.qw.group_size == (k if isinstance(layout, str) else layout)
    assert layer.qw.symmetric == (signed and zero is None)


@pytest.mark.parametrize("config", [dict(bits=4, block_size=32, is_symmetric=False),
                                    dict(bits=8, block_size=128, is_symmetric=True)])
def test_decoder_through_load_checked(config: dict, tmp_path: Path) -> None:
    float_model = make_decoder(PRESETS["tiny"])
    n_matmuls = sum(n.op_type == "MatMul" and n.input[1] in {t.name for t in
                                                             float_model.graph.initializer}
                    for n in float_model.graph.node)
    path = tmp_path / "quantized.onnx"
    onnx.save(_ort_quantize(float_model, **config), path)

    layers: dict = {}
    model = load_checked(path, prequantized=layers)
    assert len(layers) == n_matmuls == 4 * 7 + 1
    assert not [n for n in model.graph.node if n.op_type in ("MatMulNBits", "DequantizeLinear")]
    assert {layer.qw.bits for layer in layers.values()} == {config["bits"]}
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, PRESETS["tiny"].vocab_size, size=(2, 7)),
             "attention_mask": np.ones((2, 7), np.int64)}
    want = _session(onnx.load(path)).run(None, feeds)[0]
    assert _rel_err(_session(model).run(None, feeds)[0], want) < 1e-5
    # Callers that pass no dict get the same rewrite.
    assert ([n.op_type for n in load_checked(path).graph.node]
            == [n.op_type for n in model.graph.node])


def test_load_checked_accepts_int4_qdq(tmp_path: Path) -> None:
    # (The QDQ quantizer lifts the opset of the opset-17 decoder to 21 without converting its
    # ReduceMean nodes, so this uses the one-matmul model.)
    path = tmp_path / "qdq.onnx"
    onnx.save(_ort_quantize(_matmul_model(80), bits=4, block_size=16, quant_format=QDQ), path)
    layers: dict = {}
    model = load_checked(path, prequantized=layers)
    (layer,) = layers.values()
    assert layer.source == "DequantizeLinear" and layer.node_name == "fc_matmul_Q4"
    assert {t.data_type for t in model.graph.initializer} == {TensorProto.FLOAT}
    assert np.array_equal(dequantize(layer.qw), _ort_weights(onnx.load(path), 80))


def test_compiled_prequantized_decoder_matches_onnxruntime(tmp_path: Path) -> None:
    from sail_compiler import Artifact, CompileOptions, compile_model

    # micro: K = 16 and 24, so the ffn down projection's last block of 16 is padded.
    path = tmp_path / "micro_q4.onnx"
    onnx.save(_ort_quantize(make_decoder(PRESETS["micro"]), bits=4, block_size=16,
                            is_symmetric=False), path)
    imported: dict = {}
    load_checked(path, prequantized=imported)
    result = compile_model(path, tmp_path / "out", CompileOptions(act_bits=16))
    # Every layer keeps onnxruntime's codes instead of being re-quantized.
    assert {q.choice.source for q in result.quantization.layers} == {"prequantized"}
    for q in result.quantization.layers:
        assert np.array_equal(q.qw.q, imported[q.layer.weight_name].qw.q)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, PRESETS["micro"].vocab_size, size=(2, 7)),
             "attention_mask": np.ones((2, 7), np.int64)}
    want = _session(onnx.load(path)).run(None, feeds)[0]
    assert _rel_err(Artifact(tmp_path / "out").run(feeds)["logits"], want) < 1e-4


# ---- what cannot be represented: one error naming the node and the valid choices --------------

def _nbits_model(k: int = 32, bits: int = 4, block: int = 16, extra_inputs: tuple = (),
                 scale_type: int = TensorProto.FLOAT, **attrs: int) -> onnx.ModelProto:
    """A hand-built MatMulNBits ``q_proj`` with random codes."""
    n_blocks, blob = -(-k // block), max(block * bits // 8, 1)
    rng = np.random.default_rng(0)
    b = rng.integers(0, 256, size=(N, n_blocks, blob), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(N, n_blocks)).astype(
        helper.tensor_dtype_to_np_dtype(scale_type))
    inits = [numpy_helper.from_array(b, "B"), numpy_helper.from_array(scales, "scales")]
    inputs = ["x", "B", "scales"]
    for name, array in extra_inputs:
        inputs.append(name)
        if array is not None:
            inits.append(numpy_helper.from_array(array, name))
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="q_proj", domain="com.microsoft",
                            K=k, N=N, bits=bits, block_size=block, **attrs)
    graph = helper.make_graph(
        [node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _problems(model: onnx.ModelProto) -> list[str]:
    before = model.SerializeToString()
    with pytest.raises(ModelCheckError) as info:
        rewrite_prequantized(model)
    assert model.SerializeToString() == before  # nothing is rewritten when anything is wrong
    return info.value.problems


def test_rejects_unsupported_bits() -> None:
    (problem,) = _problems(_nbits_model(bits=3))
    assert "MatMulNBits at node 'q_proj': bits=3" in problem and "2, 4, 8" in problem


def test_rejects_block_size_not_a_power_of_two() -> None:
    (problem,) = _problems(_nbits_model(k=48, block=24))
    assert "'q_proj': block_size=24 is not a power of two >= 16" in problem
    assert "16, 32, 64, 128" in problem


def test_rejects_act_order_g_idx() -> None:
    g_idx = (np.arange(32) % 2).astype(np.int32)  # rows interleaved between the two blocks
    (problem,) = _problems(_nbits_model(extra_inputs=(("", None), ("g_idx", g_idx))))
    assert "'q_proj': g_idx 'g_idx'" in problem and "act-order" in problem
    # The trivial order is accepted.
    trivial = (np.arange(32) // 16).astype(np.int32)
    assert rewrite_prequantized(_nbits_model(extra_inputs=(("", None), ("g_idx", trivial))))


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")  # torch, in HQQ
def test_rejects_float_zero_points_from_hqq() -> None:
    pytest.importorskip("torch")
    quantized = _ort_quantize(_matmul_model(64),
                              algo=HQQWeightOnlyQuantConfig(block_size=32, bits=4))
    (problem,) = _problems(quantized)
    assert "MatMulNBits at node 'fc_Q4': zero_points 'w_zero_points' are float" in problem
    assert "float zero points" in problem and "valid zero-point type: uint8" in problem


def test_rejects_float16_scales() -> None:
    (problem,) = _problems(_nbits_model(scale_type=TensorProto.FLOAT16))
    assert "'q_proj': scales 'scales' are float16" in problem
    assert "valid scale type: float" in problem


def test_rejects_prepacked_weights() -> None:
    (problem,) = _problems(_nbits_model(weight_prepacked=1))
    assert "'q_proj': weight_prepacked=1" in problem


def test_rejects_dequantize_linear_of_a_run_time_value() -> None:
    model = _dq_model(np.zeros((16, N), np.int64), TensorProto.INT8,
                      np.ones(N, np.float32), None, 21)
    model.graph.input.append(helper.make_tensor_value_info("q", TensorProto.INT8, [16, N]))
    del model.graph.initializer[0]
    (problem,) = _problems(model)
    assert "DequantizeLinear at node 'dq' (the weight of MatMul 'fc')" in problem
    assert "its input 'q' is not an initializer (computed at run time)" in problem


@pytest.mark.parametrize("attrs, scale_shape, detail", [
    ({"axis": 0}, (16,), "axis=0 without block_size"),
    ({"axis": 1, "block_size": 8}, (16, 3), "axis=1 with block_size=8 makes blocks along N"),
])
def test_rejects_unsupported_axis(attrs: dict, scale_shape: tuple, detail: str) -> None:
    model = _dq_model(np.zeros((16, N), np.int64), TensorProto.INT8,
                      np.ones(scale_shape, np.float32), None, 21, **attrs)
    (problem,) = _problems(model)
    assert "DequantizeLinear at node 'dq'" in problem and detail in problem
    assert "valid layouts: per tensor" in problem


def test_rejects_matmulnbits_in_a_subgraph() -> None:
    body = _nbits_model().graph
    body.ClearField("input")
    model = _matmul_model(32)
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], name="branch",
                                             then_branch=body, else_branch=body))
    (problem, _) = _problems(model)
    assert "MatMulNBits at node 'q_proj': inside a subgraph" in problem


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    model = _nbits_model(bits=3, block=24, k=48, weight_prepacked=1)
    problems = _problems(model)
    assert len(problems) == 3
    assert all("node 'q_proj'" in p for p in problems)
    path = tmp_path / "bad.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelCheckError) as info:
        load_checked(path)
    assert info.value.problems == problems  # no "unsupported op" line on top of them
