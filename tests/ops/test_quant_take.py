"""sail.quant_take: type inference, printing, operand checks, and bit-exact numerics."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from sail_compiler.errors import OptionError
from sail_compiler.ops.quant_take import is_quant_take, quant_take
from sail_compiler.quant.reference import QuantizedWeight, dequantize, quantize_weights_rtn
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(5)
V, D = 37, 40  # D = 40: groups of 16 pad the last group, groups of 8 divide it

# Every width with zero points, two symmetric widths; groups dividing D, not dividing it, channel.
SCHEMES = [QuantScheme(b, 16) for b in range(1, 9)] \
    + [QuantScheme(b, 8) for b in (3, 4)] \
    + [QuantScheme(4, 16, True), QuantScheme(8, 8, True), QuantScheme(5, None),
       QuantScheme(2, None, True)]


def _quantized_table(scheme: QuantScheme) -> QuantizedWeight:
    """A random ``[V, D]`` table quantized as ``T^T``."""
    return quantize_weights_rtn(RNG.standard_normal((V, D)).astype(np.float32).T, scheme)


def _call(qw: QuantizedWeight, indices: relax.Expr, zero_dtype: str = "int32",
          group_size: int | None = None) -> relax.Call:
    return quant_take(relax.const(qw.packed()), relax.const(qw.scale),
                      relax.const(qw.zero_points(), zero_dtype), indices, bits=qw.bits,
                      group_size=group_size or qw.group_size, k=qw.k, layer="embed")


def _module(tables: list[QuantizedWeight]) -> tvm.IRModule:
    """``main(ids: int64[b, s], pos: int32[n])``: two lookups per table, returned as a tuple."""
    b, s, n = (tirx.Var(name, "int64") for name in ("b", "s", "n"))
    ids = relax.Var("ids", relax.TensorType([b, s], "int64"))
    pos = relax.Var("pos", relax.TensorType([n], "int32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids, pos]):
        with bb.dataflow():
            outs = [bb.emit(_call(qw, idx)) for qw in tables for idx in (ids, pos)]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


def _infer(indices_ty: relax.TensorType) -> relax.TensorType:
    indices = relax.Var("i", indices_ty)
    bb = relax.BlockBuilder()
    with bb.function("f", [indices]):
        out = bb.emit(_call(_quantized_table(QuantScheme(4, 16)), indices))
        bb.emit_func_output(out)
    return out.ty


def test_type_inference() -> None:
    ty = _module([_quantized_table(QuantScheme(4, 16))])["main"].ret_ty.fields
    b, s, d = ty[0].shape
    assert (str(b), str(s), int(d), str(ty[0].dtype)) == ("b", "s", D, "float32")
    n, d = ty[1].shape
    assert (str(n), int(d)) == ("n", D)
    assert [int(d) for d in _infer(relax.TensorType([], "int64")).shape] == [D]
    unknown = _infer(relax.TensorType(dtype="int32", ndim=3))
    assert unknown.shape is None and unknown.ndim == 4


def test_prints_name_and_attributes() -> None:
    mod = _module([_quantized_table(QuantScheme(3, 16))])
    text = mod.script()
    assert '"sail.quant_take"' in text
    assert f'attrs={{"bits": 3, "group_size": 16, "k": {D}, "layer": "embed"}}' in text
    call = mod["main"].body.blocks[0].bindings[0].value
    assert is_quant_take(call)


@pytest.mark.parametrize(("indices_dtype", "zero_dtype", "group_size", "message"), [
    ("int64", "int64", None, r"zero must be int32, got int64"),
    ("float32", "int32", None, r"indices must be int32 or int64, got float32"),
    ("int32", "int32", 8, r"scale has 3 rows, expected 5 .*; zero has 3 rows, expected 5"),
])
def test_rejects_inconsistent_operands(indices_dtype: str, zero_dtype: str,
                                       group_size: int | None, message: str) -> None:
    indices = relax.Var("i", relax.TensorType([4], indices_dtype))
    bad = _call(_quantized_table(QuantScheme(4, 16)), indices, zero_dtype, group_size)
    bb = relax.BlockBuilder()
    with pytest.raises(ValueError, match=message), bb.function("f", [indices]):
        bb.emit(bad)


def test_rejects_bad_attributes() -> None:
    qw = _quantized_table(QuantScheme(4, 16))
    with pytest.raises(OptionError, match="table bits must be an integer in 1..8"):
        quant_take(relax.const(qw.packed()), relax.const(qw.scale),
                   relax.const(qw.zero_points(), "int32"), relax.const(np.zeros(1, "int64")),
                   bits=9, group_size=16, k=D)


def test_matches_dequantized_rows_bit_exactly() -> None:
    tables = [_quantized_table(s) for s in SCHEMES]
    vm = relax.VirtualMachine(relax.build(_module(tables),
                                          target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    # In range, negative (counting from the end) and far out of range: all wrap modulo V.
    ids = np.array([[0, 5, V - 1], [-1, -V, V], [3 * V + 2, -5 * V - 4, 17]], dtype=np.int64)
    for lead in [(1, 1), (3, 3)]:
        ids_in = ids[: lead[0], : lead[1]]
        pos = np.array([2, V + 1, -2, 0, 9][: lead[0] + 1], dtype=np.int32)
        outs = vm["main"](tvm.runtime.tensor(ids_in), tvm.runtime.tensor(pos))
        for j, (scheme, qw) in enumerate(zip(SCHEMES, tables, strict=True)):
            rows = dequantize(qw).T  # row v of the table = column v of dequantize(T^T)
            np.testing.assert_array_equal(outs[2 * j].numpy(), rows[ids_in % V],
                                          err_msg=f"{scheme} ids{lead}")
            np.testing.assert_array_equal(outs[2 * j + 1].numpy(), rows[pos % V],
                                          err_msg=f"{scheme} pos{lead}")
