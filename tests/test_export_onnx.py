"""SAIL-quantized weights exported as onnxruntime MatMulNBits: onnxruntime computes
``x @ dequantize(qw)``, and importing the export gives back the same codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import (
    DefaultWeightOnlyQuantConfig,
    MatMulNBitsQuantizer,
)

from sail_compiler.errors import OptionError
from sail_compiler.export_onnx import export_matmulnbits
from sail_compiler.frontend.prequantized import rewrite_prequantized
from sail_compiler.quant import QuantizedWeight, QuantScheme, dequantize, quantize_weights_rtn
from sail_compiler.testing.decoders import PRESETS, make_decoder

N = 24


def _run(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _matmul_model(k: int, seed: int = 0) -> onnx.ModelProto:
    """``y = x @ w`` (MatMul ``fc``), x [batch, seq, k], w float32 [k, N]."""
    w = np.random.default_rng(seed).normal(size=(k, N)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _quantize(model: onnx.ModelProto, name: str, scheme: str) -> QuantizedWeight:
    """RTN quantization of the weight of MatMul ``name``."""
    node = next(n for n in model.graph.node if n.name == name)
    w = next(t for t in model.graph.initializer if t.name == node.input[1])
    return quantize_weights_rtn(numpy_helper.to_array(w), QuantScheme.parse(scheme))


def _assert_same(got: QuantizedWeight, want: QuantizedWeight) -> None:
    assert (got.bits, got.group_size, got.k) == (want.bits, want.group_size, want.k)
    assert np.array_equal(got.q, want.q) and np.array_equal(got.scale, want.scale)
    assert (got.zero is None) == (want.zero is None)
    assert got.zero is None or np.array_equal(got.zero, want.zero)


@pytest.mark.parametrize("scheme, k", [("w2g16", 80), ("w4g32sym", 80), ("w4g128", 64),
                                       ("w8g64sym", 128), ("w8g16", 40), ("w4channelsym", 64)])
def test_onnxruntime_runs_the_export_and_it_imports_back(scheme: str, k: int,
                                                         tmp_path: Path) -> None:
    model = _matmul_model(k)
    qw = _quantize(model, "fc", scheme)
    path = tmp_path / "exported.onnx"
    export_matmulnbits(model, {"fc": qw}, path)

    exported = onnx.load(path)
    (node,) = exported.graph.node
    assert (node.domain, node.op_type, node.name) == ("com.microsoft", "MatMulNBits", "fc")
    assert [t.name for t in exported.graph.initializer if t.name == "w"] == []
    # onnxruntime's dequantized weights (the export applied to the identity) are ours exactly ...
    assert np.array_equal(_run(path, {"x": np.eye(k, dtype=np.float32)[None]})[0],
                          dequantize(qw))
    # ... and it computes x @ dequantize(qw).
    x = np.random.default_rng(1).normal(size=(2, 5, k)).astype(np.float32)
    want = x.astype(np.float64) @ dequantize(qw).astype(np.float64)
    got = _run(path, {"x": x})
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
    # Round trip: importing the export gives back the same codes, scales and zero points.
    (layer,) = rewrite_prequantized(exported).values()
    assert layer.node_name == "fc" and layer.source == "MatMulNBits"
    _assert_same(layer.qw, qw)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k", [96, 80])  # whole blocks; a partial last block
def test_symmetric_rtn_export_is_onnxruntime_quantizers_model(bits: int, k: int,
                                                              tmp_path: Path) -> None:
    # onnxruntime's own symmetric quantizer and SAIL's RTN export write the same MatMulNBits
    model = _matmul_model(k, seed=bits)
    export_matmulnbits(model, {"fc": _quantize(model, "fc", f"w{bits}g32sym")},
                       tmp_path / "sail.onnx")
    quantizer = MatMulNBitsQuantizer(onnx.ModelProto.FromString(model.SerializeToString()),
                                     algo_config=DefaultWeightOnlyQuantConfig(
                                         block_size=32, is_symmetric=True, bits=bits))
    quantizer.process()
    ours, theirs = onnx.load(tmp_path / "sail.onnx"), quantizer.model.model
    (node,), (want,) = ours.graph.node, theirs.graph.node
    assert (node.op_type, node.domain, len(node.input)) == (want.op_type, want.domain, 3)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {a.name: helper.get_attribute_value(a) for a in want.attribute}
    b, scales = (numpy_helper.to_array(t) for t in ours.graph.initializer)
    want_b, want_scales = (numpy_helper.to_array(t) for t in theirs.graph.initializer)
    assert np.array_equal(scales.view(np.uint32), want_scales.view(np.uint32))
    assert (scales < 0).any() and (scales > 0).any()
    # codes equal for every k < K; padding codes (never read) are SAIL's zero point, 0 in theirs
    whole, valid_bytes = k // 32, k % 32 * bits // 8
    assert np.array_equal(b[:, :whole], want_b[:, :whole])
    assert np.array_equal(b[:, whole:, :valid_bytes], want_b[:, whole:, :valid_bytes])
    x = np.random.default_rng(3).normal(size=(2, 4, k)).astype(np.float32)
    assert np.array_equal(_run(tmp_path / "sail.onnx", {"x": x}), _run(theirs, {"x": x}))


def test_decoder_export_matches_its_dequantized_float_model(tmp_path: Path) -> None:
    model = make_decoder(PRESETS["tiny"])
    weights = {t.name for t in model.graph.initializer}
    names = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    layers = {name: _quantize(model, name, "w4g32" if i % 2 else "w8g64sym")
              for i, name in enumerate(names)}
    path = tmp_path / "decoder_q.onnx"
    export_matmulnbits(model, layers, path)

    # The float model with every weight replaced by dequantize(qw) is what onnxruntime must run.
    dequantized = onnx.ModelProto()
    dequantized.CopyFrom(model)
    by_node = {n.name: n.input[1] for n in model.graph.node if n.name in layers}
    for tensor in dequantized.graph.initializer:
        for name, qw in layers.items():
            if by_node[name] == tensor.name:
                tensor.CopyFrom(numpy_helper.from_array(dequantize(qw), tensor.name))
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, PRESETS["tiny"].vocab_size, size=(2, 9)),
             "attention_mask": np.ones((2, 9), np.int64)}
    want, got = _run(dequantized, feeds), _run(path, feeds)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5

    imported = rewrite_prequantized(onnx.load(path))
    assert sorted(layer.node_name for layer in imported.values()) == sorted(names)
    for layer in imported.values():
        _assert_same(layer.qw, layers[layer.node_name])


def test_external_data_and_re_export(tmp_path: Path) -> None:
    model = _matmul_model(512)
    qw = _quantize(model, "fc", "w4g32")
    path = tmp_path / "exported.onnx"
    x = np.random.default_rng(2).normal(size=(1, 3, 512)).astype(np.float32)
    for _ in range(2):  # a second export replaces the data file instead of appending to it
        export_matmulnbits(model, {"fc": qw}, path, external_data=True)
        data_bytes = (tmp_path / "exported.onnx.data").stat().st_size
        assert qw.packed().nbytes <= data_bytes < qw.packed().nbytes + qw.scale.nbytes * 3
        assert path.stat().st_size < 1024
    want = x @ dequantize(qw)
    assert np.abs(_run(path, {"x": x}) - want).max() / np.abs(want).max() < 1e-5


def test_accuracy_level_is_written(tmp_path: Path) -> None:
    model = _matmul_model(64)
    export_matmulnbits(model, {"fc": _quantize(model, "fc", "w4g32")}, tmp_path / "q.onnx",
                       accuracy_level=4)
    (node,) = onnx.load(tmp_path / "q.onnx").graph.node
    assert helper.get_node_attr_value(node, "accuracy_level") == 4


@pytest.mark.parametrize("scheme, k, message", [
    ("w3g32", 64, "3-bit weights cannot be written as MatMulNBits, which onnxruntime runs with "
                  "bits 2, 4 or 8 only; other widths stay in SAIL artifacts"),
    ("w4g24", 48, "group size 24 cannot be written as MatMulNBits, whose block_size must be a "
                  "power of two >= 16"),
    ("w4g8", 64, "group size 8 cannot be written"),
    ("w4channel", 80, "one group per column (channel) with K=80 cannot be written"),
])
def test_rejects_what_onnxruntime_cannot_run(scheme: str, k: int, message: str,
                                             tmp_path: Path) -> None:
    model = _matmul_model(k)
    with pytest.raises(OptionError, match="cannot export as MatMulNBits") as info:
        export_matmulnbits(model, {"fc": _quantize(model, "fc", scheme)}, tmp_path / "q.onnx")
    assert f"MatMul 'fc': {message}" in str(info.value)
    assert not (tmp_path / "q.onnx").exists()


def test_rejects_unknown_nodes_and_mismatched_weights(tmp_path: Path) -> None:
    model = _matmul_model(64)
    qw = _quantize(model, "fc", "w4g32")
    with pytest.raises(OptionError, match="not a MatMul node of the model: fc2, lm_head; valid "
                                          "names include: fc"):
        export_matmulnbits(model, {"lm_head": qw, "fc2": qw}, tmp_path / "q.onnx")
    other = _quantize(_matmul_model(32), "fc", "w4g32")
    with pytest.raises(OptionError, match=r"weight 'w' is float \[64, 24\], the quantized weight "
                                          r"is float \[32, 24\]"):
        export_matmulnbits(model, {"fc": other}, tmp_path / "q.onnx")


def test_never_overwrites_the_source_model(tmp_path: Path) -> None:
    model = _matmul_model(64)
    source = tmp_path / "model.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    qw = _quantize(model, "fc", "w4g32")
    for args in [(source, {"fc": qw}, source),
                 (model, {"fc": qw}, tmp_path / "." / "model.onnx")]:
        with pytest.raises(OptionError, match="refusing to overwrite"):
            export_matmulnbits(*args, source_path=None if args[0] is source else source)
    assert source.read_bytes() == before
    export_matmulnbits(source, {"fc": qw}, tmp_path / "model_q4.onnx")  # another path is fine
    assert source.read_bytes() == before
