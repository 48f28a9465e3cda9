"""sail.quant_matmul: type inference, printing, and numerics against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, te, tirx

from sail_compiler.errors import SailError
from sail_compiler.ops import quant_matmul
from sail_compiler.ops.quant_matmul import (
    constant_name,
    group_sums_te,
    name_constant,
    quantize_activations_te,
    weight_constants,
)
from sail_compiler.quant.reference import (
    ActBlocks,
    block_sums,
    group_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(7)
K, N = 100, 24  # K is not a multiple of 32 or 64: the last group is padded

# Every width with zero points, every valid symmetric width; groups 32, 64 and channel.
SCHEMES = [QuantScheme(b, 32, False) for b in range(1, 9)] \
    + [QuantScheme(b, 32, True) for b in range(2, 9)] \
    + [QuantScheme(4, 64, False), QuantScheme(3, None, False), QuantScheme(8, None, True)]


def _call(x: relax.Expr, w: np.ndarray, scheme: QuantScheme, act_bits: int = 8,
          act_group: int | None = None) -> relax.Call:
    qw = quantize_weights_rtn(w, scheme)
    return quant_matmul(x, relax.const(qw.packed()), relax.const(qw.scale),
                        relax.const(qw.zero_points(), "int32"), bits=qw.bits,
                        group_size=qw.group_size, k=qw.k, act_bits=act_bits, act_group=act_group)


def _module(weights: list[tuple]) -> tvm.IRModule:
    """``main(x: [b, s, K]) -> tuple`` of one quant_matmul per (weight, scheme, act_bits[,
    act_group])."""
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([b, s, K], "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            outs = [bb.emit(_call(x, *case)) for case in weights]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


def _activations(*lead: int) -> np.ndarray:
    x = RNG.standard_normal((*lead, K)).astype(np.float32)
    x.reshape(-1, K)[0] = 0  # an all-zero row: sx = 1, output exactly 0
    return x


def test_type_inference_keeps_symbolic_dims() -> None:
    mod = _module([(RNG.standard_normal((K, N)).astype(np.float32), QuantScheme(4, 32), 8)])
    ty = mod["main"].ret_ty.fields[0]
    assert str(ty.dtype) == "float32" and ty.ndim == 3
    b, s, n = ty.shape
    assert (str(b), str(s), int(n)) == ("b", "s", N)


def test_prints_name_and_attributes() -> None:
    mod = _module([(RNG.standard_normal((K, N)).astype(np.float32), QuantScheme(3, 32), 6)])
    text = mod.script()
    assert '"sail.quant_matmul"' in text
    assert 'attrs={"act_bits": 6, "act_group": 100, "bits": 3, "group_size": 32, "k": 100}' \
        in text


def test_weight_constants_carry_their_layer_in_the_ir() -> None:
    """The names ride on the constants (their spans): the same data, printed and compared as
    before, read back exactly, also for layer names with dots; other constants have none."""
    qw = quantize_weights_rtn(RNG.standard_normal((K, N)).astype(np.float32), QuantScheme(4, 32))
    unnamed = weight_constants(qw)
    named = weight_constants(qw, "model.layers.3.mlp.up_proj")
    assert [constant_name(c) for c in named] == [
        ("model.layers.3.mlp.up_proj", role) for role in ("packed", "scale", "zero")]
    assert [constant_name(c) for c in unnamed] == [None] * 3
    for a, b in zip(unnamed, named, strict=True):
        np.testing.assert_array_equal(a.value.numpy(), b.value.numpy())
        tvm.ir.assert_structural_equal(a, b)
        assert a.script() == b.script()
    foreign = tvm.ir.GenericConst(unnamed[0].value, unnamed[0].ty,
                                  tvm.ir.Span(tvm.ir.SourceName("model.onnx"), 1, 1, 1, 1))
    assert constant_name(foreign) is None
    for layer, operand in (("", "packed"), ("fc", ""), ("fc", "lut.planes")):
        with pytest.raises(SailError, match="needs a layer name and an operand name"):
            name_constant(unnamed[0], layer, operand)


@pytest.mark.parametrize(("zero_dtype", "group_size", "message"), [
    ("int64", 32, r"zero must be int32, got int64"),
    ("int32", 64, r"scale has 4 rows, expected 2 .*; zero has 4 rows, expected 2"),
])
def test_rejects_inconsistent_operands(zero_dtype: str, group_size: int, message: str) -> None:
    qw = quantize_weights_rtn(RNG.standard_normal((K, N)).astype(np.float32), QuantScheme(4, 32))
    x = relax.Var("x", relax.TensorType([2, K], "float32"))
    bb = relax.BlockBuilder()
    bad = quant_matmul(x, relax.const(qw.packed()), relax.const(qw.scale),
                       relax.const(qw.zero_points(), zero_dtype), bits=4,
                       group_size=group_size, k=K)
    with pytest.raises(ValueError, match=message), bb.function("f", [x]):
        bb.emit(bad)


def test_matches_reference_every_width_and_shape() -> None:
    cases = [(RNG.standard_normal((K, N)).astype(np.float32), s, 8) for s in SCHEMES]
    cases.append((RNG.standard_normal((K, N)).astype(np.float32), QuantScheme(4, 32), 4))
    # per-block activation scales: blocks equal to, inside and across the groups, per channel
    cases += [(RNG.standard_normal((K, N)).astype(np.float32), s, 8, a)
              for s, a in ((QuantScheme(4, 32), 32), (QuantScheme(3, 32, True), 8),
                           (QuantScheme(2, 16), 64), (QuantScheme(5, None), 32))]
    ex = relax.build(_module(cases), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    for lead in [(2, 3), (1, 1)]:
        x = _activations(*lead)
        outs = vm["main"](tvm.runtime.tensor(x))
        for (w, scheme, act_bits, *act_group), out in zip(cases, outs, strict=True):
            want = quantized_matmul(x, quantize_weights_rtn(w, scheme), act_bits, *act_group)
            got = out.numpy()
            assert got.shape == (*lead, N)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=0,
                                       err_msg=f"{scheme} act_bits={act_bits} x{lead}")
            # Same operations in the same order: bit-identical.
            np.testing.assert_array_equal(got, want, err_msg=f"{scheme} x{lead}")
            assert not got.reshape(-1, N)[0].any()


@pytest.mark.parametrize(("scheme", "act_group"), [
    (QuantScheme(3, 32), None), (QuantScheme(5, 64, True), None), (QuantScheme(8, None), None),
    (QuantScheme(4, 32), 16), (QuantScheme(4, 32), 64), (QuantScheme(2, None), 48)],
    ids=lambda v: str(v))
def test_group_sums_are_exact(scheme: QuantScheme, act_group: int | None) -> None:
    rows = 5
    qw = quantize_weights_rtn(RNG.standard_normal((K, N)).astype(np.float32), scheme)
    blocks = ActBlocks(K, qw.group_size, act_group or K)
    x = te.placeholder((tirx.const(rows, "int64"), tirx.const(K, "int64")), "float32", "x")
    packed = te.placeholder([tirx.const(d, "int64") for d in qw.packed().shape], "uint8", "p")
    zero = te.placeholder([tirx.const(d, "int64") for d in qw.scale.shape], "int32", "z")
    width = max(qw.k_padded, blocks.n_sums * blocks.sum_size)
    xq, sx = quantize_activations_te(x, width, 8, act_group=act_group)
    sums = group_sums_te(xq, packed, zero, qw.bits, blocks)
    func = tvm.tirx.build(te.create_prim_func([x, packed, zero, sx, sums]),
                          target=tvm.target.Target({"kind": "llvm"}))
    xs = _activations(rows)
    xs[1, 7] = 60.0  # an outlier in one block
    bufs = [tvm.runtime.tensor(a) for a in (xs, qw.packed(), qw.zero_points())]
    bufs += [tvm.runtime.empty((rows, blocks.n_blocks), "float32"), tvm.runtime.empty(
        (rows, blocks.n_sums, N), "int32")]
    func(*bufs)
    want_xq, want_sx = quantize_activations(xs, 8, blocks.act_group)
    np.testing.assert_array_equal(bufs[3].numpy(), want_sx)
    np.testing.assert_array_equal(bufs[4].numpy(), block_sums(want_xq, qw, blocks))
    if act_group is None:
        np.testing.assert_array_equal(bufs[4].numpy(), group_sums(want_xq, qw))
