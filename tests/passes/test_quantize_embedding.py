"""QuantizeEmbedding: structural rewrite, guards, errors, and numerics (exact and end to end)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import numpy_helper
from tvm import relax, tirx

from sail_compiler import lowering
from sail_compiler.errors import OptionError, SailError
from sail_compiler.frontend import import_onnx, load_checked
from sail_compiler.ops.quant_matmul import constant_name, name_weight_ref
from sail_compiler.ops.quant_take import quant_take
from sail_compiler.passes import WrapGatherIndices
from sail_compiler.passes.quantize_embedding import QuantizeEmbedding
from sail_compiler.quant.methods import quantize_weight
from sail_compiler.quant.plan import weight_ref
from sail_compiler.quant.reference import dequantize
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(23)
V, D = 50, 24
W4G16 = QuantScheme(4, 16)


def _table(vocab: int = V, dim: int = D) -> np.ndarray:
    return RNG.standard_normal((vocab, dim)).astype(np.float32)


def _take_module(*tables: np.ndarray | relax.Var, axis: int = 0, mode: str = "wrap",
                 indices_dtype: str = "int64") -> tvm.IRModule:
    """``main(ids: [b, s])`` (plus any table given as a Var): a tuple of ``take(table, ids)``;
    the i-th table constant is named as the initializer ``t<i>`` would be at import."""
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    ids = relax.Var("ids", relax.TensorType([b, s], indices_dtype))
    params = [ids, *(t for t in tables if isinstance(t, relax.Var))]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = [bb.emit(relax.op.take(
                t if isinstance(t, relax.Var) else name_weight_ref(relax.const(t),
                                                                   weight_ref(f"t{i}")),
                ids, axis=axis, mode=mode)) for i, t in enumerate(tables)]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


@pytest.mark.parametrize("mode", ["wrap", "fast"])
def test_constant_table_becomes_quant_take(mode: str) -> None:
    table = _table()
    qw = quantize_weight(table.T, W4G16, "rtn")
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    ids = relax.Var("ids", relax.TensorType([b, s], "int64"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids]):
        with bb.dataflow():
            y = bb.emit(quant_take(relax.const(qw.packed()), relax.const(qw.scale),
                                   relax.const(qw.zero_points(), "int32"), ids, bits=4,
                                   group_size=16, k=D, layer="embedding.0"))
            result = bb.emit_output(relax.Tuple([y]))
        bb.emit_func_output(result)
    pass_ = QuantizeEmbedding(W4G16)
    tvm.ir.assert_structural_equal(pass_(_take_module(table, mode=mode)), bb.get())
    assert pass_.applied == [{"layer": "embedding.0", "bits": 4, "group_size": 16,
                              "symmetric": False, "k": D, "n": V}]


@pytest.mark.parametrize("case", ["parameter table", "axis 1", "clip mode", "float16 table",
                                  "1-D table", "int16 indices"])
def test_does_not_fire(case: str) -> None:
    if case == "parameter table":
        mod = _take_module(relax.Var("table", relax.TensorType([V, D], "float32")))
    elif case == "axis 1":
        mod = _take_module(_table(), axis=1)
    elif case == "clip mode":
        mod = _take_module(_table(), mode="clip")
    elif case == "float16 table":
        mod = _take_module(_table().astype(np.float16))
    elif case == "1-D table":
        mod = _take_module(_table()[:, 0].copy())
    else:
        mod = _take_module(_table(), indices_dtype="int16")
    pass_ = QuantizeEmbedding(W4G16)
    tvm.ir.assert_structural_equal(pass_(mod), mod)
    assert pass_.applied == []


def test_layer_table_names_tables_supplies_codes_and_keeps_float() -> None:
    t0, t1, t2 = _table(), _table(), _table(V, 8)
    q0 = quantize_weight(t0.T, QuantScheme(3, 8), "rtn")
    layers = {weight_ref("t0"): ("model.embed_tokens", q0), weight_ref("t1"): ("rope_cos", None)}
    pass_ = QuantizeEmbedding(layers=layers)  # t2 is not in the table: stays float
    mod = pass_(_take_module(t0, t1, t2))
    text = mod.script()
    assert text.count('"sail.quant_take"') == 1 and text.count("R.take(") == 2
    # the codes, scales and zero points are named after the table in the IR itself
    names: list[tuple[str, str] | None] = []
    relax.analysis.post_order_visit(mod["main"], lambda e: names.append(constant_name(e)) if
                                    isinstance(e, tvm.ir.GenericConst) else None)
    assert sorted(n for n in names if n is not None) == [
        ("model.embed_tokens", role) for role in ("packed", "scale", "zero")]
    assert '"bits": 3, "group_size": 8, "k": 24, "layer": "model.embed_tokens"' in text
    assert [a["layer"] for a in pass_.applied] == ["model.embed_tokens"]
    pass_ = QuantizeEmbedding(W4G16, layers=layers)  # now t2 falls back to the scheme
    text = pass_(_take_module(t0, t1, t2)).script()
    assert text.count('"sail.quant_take"') == 2 and '"layer": "embedding.2"' in text


def test_bad_inputs_are_reported() -> None:
    with pytest.raises(OptionError, match="needs a scheme"):
        QuantizeEmbedding()
    with pytest.raises(OptionError, match="must be a QuantScheme, got str"):
        QuantizeEmbedding("w4g32")
    bad, other = _table(), _table()
    bad[3, 4] = np.inf
    wrong = quantize_weight(other[:20].T, W4G16, "rtn")
    with pytest.raises(SailError, match=r"2 lookup tables:\n.*embedding.0 \(table \[50, 24\]\)"
                                        r".*non-finite.*\n.*other \(table \[50, 24\]\).* is "
                                        r"\[24, 20\], expected its transpose \[24, 50\]"):
        QuantizeEmbedding(W4G16, layers={weight_ref("t1"): ("other", wrong)})(
            _take_module(bad, other))


def _run(mod: tvm.IRModule, ids: np.ndarray) -> list[np.ndarray]:
    vm = relax.VirtualMachine(relax.build(mod, target=tvm.target.Target({"kind": "llvm"})),
                              tvm.cpu())
    return [out.numpy() for out in vm["main"](tvm.runtime.tensor(ids))]


@pytest.mark.parametrize("indices_dtype", ["int64", "int32"])
def test_same_as_float_take_of_dequantized_table(indices_dtype: str) -> None:
    """Quantizing changes the table, never the lookup: identical to ``take(mode="wrap")`` of
    the dequantized table for valid, negative and out-of-range indices, bit for bit."""
    schemes = [QuantScheme(1, 16), QuantScheme(5, 16), QuantScheme(6, 8, True),
               QuantScheme(8, None)]
    tables = [_table() for _ in schemes]
    layers = {weight_ref(f"t{i}"): (str(s), quantize_weight(t.T, s, "rtn"))
              for i, (t, s) in enumerate(zip(tables, schemes, strict=True))}
    quantized = QuantizeEmbedding(layers=layers)(_take_module(*tables,
                                                              indices_dtype=indices_dtype))
    assert quantized.script().count('"sail.quant_take"') == len(schemes)
    dequantized = _take_module(*(dequantize(qw).T.copy() for _, qw in layers.values()),
                               indices_dtype=indices_dtype)
    ids = np.array([[0, V - 1, -1], [-V, V, 7 * V + 3]], dtype=indices_dtype)
    for got, want in zip(_run(quantized, ids), _run(dequantized, ids), strict=True):
        np.testing.assert_array_equal(got, want)


def test_decoder_logits_match_onnxruntime_with_dequantized_tables(tiny_decoder: Path) -> None:
    """The example decoder end to end through the llvm target's lowering: quantizing its lookup
    tables (token embedding and rotary cos/sin) computes what onnxruntime computes on the same
    model with those initializers replaced by their dequantized values."""
    scheme = QuantScheme(4, 32)
    mod, _ = import_onnx(load_checked(tiny_decoder))
    pass_ = QuantizeEmbedding(scheme)
    mod = pass_(relax.transform.FoldConstant()(WrapGatherIndices()(mod)))
    assert [(a["k"], a["n"]) for a in pass_.applied] == [(128, 1024), (16, 512), (16, 512)]
    target = lowering.host_target()
    for p in lowering.lowering_passes(target):
        mod = p(mod)
    ex = relax.build(mod, target=target, relax_pipeline=lowering.build_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())

    model = onnx.load(tiny_decoder)
    float_session = ort.InferenceSession(model.SerializeToString(),
                                         providers=["CPUExecutionProvider"])
    gathered = {node.input[0] for node in model.graph.node if node.op_type == "Gather"}
    replaced = []
    for init in model.graph.initializer:
        table = numpy_helper.to_array(init)
        if init.name in gathered and table.ndim == 2 and table.dtype == np.float32:
            rows = dequantize(quantize_weight(table.T, scheme, "rtn")).T
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(rows), init.name))
            replaced.append(init.name)
    assert sorted(replaced) == ["model.embed_tokens.weight", "rope_cos", "rope_sin"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 1), (2, 7)]:
        feeds = {"input_ids": RNG.integers(0, 1024, (batch, seq)).astype(np.int64),
                 "attention_mask": np.ones((batch, seq), dtype=np.int64)}
        want = session.run(None, feeds)[0]
        got = vm["main"](*(tvm.runtime.tensor(v) for v in feeds.values())).numpy()
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
        # The comparison can tell: 4-bit tables move the logits far more than that.
        assert np.abs(float_session.run(None, feeds)[0] - want).max() > 1e-3 * scale
