"""sail.quantize / group_sums / lut_gemv / dequantize: types, printing, attribute errors, and
numerics of the llvm lowering against the NumPy reference (integers exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from sail_compiler.errors import OptionError
from sail_compiler.lowering import build_pipeline, host_target, lowering_passes
from sail_compiler.ops import dequantize, group_sums_op, lut_gemv, quantize
from sail_compiler.ops.quant_matmul import weight_constants
from sail_compiler.ops.sail_ops import reference_dequantize, reference_quantize
from sail_compiler.quant.reference import ActBlocks, quantize_weights_rtn, quantized_matmul
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(11)
K, N = 70, 32  # K is a multiple of neither the group sizes nor any NBW > 1 below


def _independent_sums(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, g: int,
                      a: int | None = None) -> np.ndarray:
    """int64 sums written out directly from DESIGN.md section 3: one per weight group, split
    wherever an activation block of ``a`` columns ends inside it."""
    rows = xq.reshape(-1, xq.shape[-1]).astype(np.int64)
    k_total = rows.shape[1]
    a = k_total if a is None else a
    bounds = sorted({0, k_total} | set(range(0, k_total, g)) | set(range(0, k_total, a)))
    out = np.zeros((rows.shape[0], len(bounds) - 1, q.shape[1]), np.int64)
    for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        for k in range(lo, hi):
            out[:, j, :] += rows[:, k, None] * (q[k].astype(np.int64) - zero[lo // g])[None, :]
    return out.reshape(*xq.shape[:-1], len(bounds) - 1, q.shape[1])


def _build(mod: tvm.IRModule) -> relax.VirtualMachine:
    target = host_target()
    with target:
        mod = tvm.transform.Sequential(lowering_passes(target))(mod)
    ex = relax.build(mod, target=target, relax_pipeline=build_pipeline(target))
    return relax.VirtualMachine(ex, tvm.cpu())


# (scheme, act_bits, nbw, act_group): every weight width, activation widths 2..8 and one wider,
# NBW 1..8, one scale per row (None) or per block: equal to, dividing and spanning the groups.
CASES = [(QuantScheme(1, 16, False), 8, 3, None), (QuantScheme(2, 16, True), 2, 5, 16),
         (QuantScheme(3, 32, False), 3, 8, 8), (QuantScheme(4, 32, False), 8, 4, 32),
         (QuantScheme(5, None, False), 5, 2, 32), (QuantScheme(6, 16, True), 6, 1, 48),
         (QuantScheme(7, 32, False), 7, 6, None), (QuantScheme(8, 16, True), 4, 7, 4),
         (QuantScheme(4, 16, False), 12, 4, 32)]


@pytest.fixture(scope="module")
def built() -> tuple[relax.VirtualMachine, list]:
    """One module: for every case, xq and sx, group_sums, lut_gemv sums, lut_gemv fused and
    dequantize, all from one symbolic-batch input."""
    b, s = tirx.Var("b", "int64"), tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([b, s, K], "float32"))
    bb = relax.BlockBuilder()
    weights = []
    with bb.function("main", [x]):
        with bb.dataflow():
            outs = []
            for scheme, act_bits, nbw, act_group in CASES:
                qw = quantize_weights_rtn(RNG.standard_normal((K, N)).astype(np.float32), scheme)
                weights.append(qw)
                packed, scale, zero = weight_constants(qw)
                q = bb.emit(quantize(x, act_bits=act_bits, act_group=act_group or K))
                xq, sx = bb.emit(relax.TupleGetItem(q, 0)), bb.emit(relax.TupleGetItem(q, 1))
                kw = {"bits": qw.bits, "act_bits": act_bits, "group_size": qw.group_size, "k": K,
                      "act_group": act_group}
                sums = bb.emit(group_sums_op(xq, packed, zero, **kw))
                lut = bb.emit(lut_gemv(xq, packed, zero, nbw=nbw, **kw))
                fused = bb.emit(lut_gemv(xq, packed, zero, nbw=nbw, sx=sx, scale=scale, **kw))
                deq = bb.emit(dequantize(lut, sx, scale, group_size=qw.group_size, k=K,
                                         act_group=act_group))
                outs += [xq, sx, sums, lut, fused, deq]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return _build(bb.get()), weights


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (1, 16)], ids=["t1", "b2s3", "t16"])
def test_lowered_ops_match_the_reference(built: tuple, shape: tuple[int, int]) -> None:
    vm, weights = built
    x = RNG.standard_normal((*shape, K)).astype(np.float32) * 3
    x[..., 5] = 40.0  # an outlier: most activations quantize to small codes
    got = [v.numpy() for v in vm["main"](tvm.runtime.tensor(x))]
    for i, ((_, act_bits, nbw, act_group), qw) in enumerate(zip(CASES, weights, strict=True)):
        xq, sx, sums, lut, fused, deq = got[6 * i: 6 * i + 6]
        want_xq, want_sx = reference_quantize(x, act_bits, act_group)
        assert xq.dtype == (np.int8 if act_bits <= 8 else np.int16)
        assert sx.shape == (*shape, -(-K // (act_group or K)))
        np.testing.assert_array_equal(xq, want_xq)
        np.testing.assert_array_equal(sx, want_sx)
        want = _independent_sums(want_xq, qw.q[:K], qw.zero_points(), qw.group_size, act_group)
        np.testing.assert_array_equal(sums, want, err_msg=f"group_sums case {i}")
        np.testing.assert_array_equal(lut, want, err_msg=f"lut_gemv nbw={nbw} case {i}")
        y = quantized_matmul(x, qw, act_bits, act_group)
        blocks = ActBlocks(K, qw.group_size, act_group or K)
        np.testing.assert_array_equal(deq, reference_dequantize(want, want_sx, qw.scale, blocks))
        np.testing.assert_array_equal(fused, y)
        np.testing.assert_array_equal(deq, y)


def _weights() -> tuple:
    qw = quantize_weights_rtn(RNG.standard_normal((K, N)).astype(np.float32),
                              QuantScheme(4, 32, False))
    return qw, weight_constants(qw)


def _dims(ty: relax.TensorType) -> list[str]:
    return [str(d.value) if isinstance(d, tirx.IntImm) else str(d) for d in ty.shape]


def _infer(call: relax.Call) -> relax.Type:
    bb = relax.BlockBuilder()
    return bb.normalize(call).ty


def test_types_are_inferred_with_symbolic_leading_dims() -> None:
    s = tirx.Var("s", "int64")
    x = relax.Var("x", relax.TensorType([1, s, K], "float32"))
    q = _infer(quantize(x, act_bits=4, act_group=K))
    assert str(q.fields[0].dtype) == "int8" and len(q.fields[0].shape) == 3
    assert _dims(q.fields[1]) == ["1", "s", "1"]
    assert _dims(_infer(quantize(x, act_bits=4, act_group=16)).fields[1]) == ["1", "s", "5"]
    assert str(_infer(quantize(x, act_bits=9, act_group=K)).fields[0].dtype) == "int16"
    xq = relax.Var("xq", relax.TensorType([1, s, K], "int8"))
    sx = relax.Var("sx", relax.TensorType([1, s, 1], "float32"))
    qw, (packed, scale, zero) = _weights()
    kw = {"bits": 4, "act_bits": 8, "group_size": 32, "k": K}
    sums = _infer(lut_gemv(xq, packed, zero, **kw))
    assert _dims(sums) == ["1", "s", str(qw.n_groups), str(N)]
    assert str(sums.dtype) == "int32"
    fused = _infer(lut_gemv(xq, packed, zero, sx=sx, scale=scale, **kw))
    assert _dims(fused) == ["1", "s", str(N)] and str(fused.dtype) == "float32"
    S = relax.Var("S", relax.TensorType([1, s, qw.n_groups, N], "int32"))
    assert _dims(_infer(dequantize(S, sx, scale, group_size=32, k=K))) == ["1", "s", str(N)]
    # blocks of 16 split each group of 32 in two: 5 sums per row and column, 5 scales per row
    assert _dims(_infer(lut_gemv(xq, packed, zero, act_group=16, **kw))) == ["1", "s", "5",
                                                                              str(N)]
    sx16 = relax.Var("sx", relax.TensorType([1, s, 5], "float32"))
    S16 = relax.Var("S", relax.TensorType([1, s, 5, N], "int32"))
    assert _dims(_infer(dequantize(S16, sx16, scale, group_size=32, k=K, act_group=16))) == \
        ["1", "s", str(N)]


def test_mismatched_operands_are_rejected() -> None:
    qw, (packed, scale, zero) = _weights()
    kw = {"bits": 4, "act_bits": 8, "group_size": 32, "k": K}
    wrong_dtype = relax.Var("xq", relax.TensorType([1, K], "int32"))
    with pytest.raises(Exception, match="xq must be int8"):
        _infer(lut_gemv(wrong_dtype, packed, zero, **kw))
    wrong_k = relax.Var("xq", relax.TensorType([1, K + 1], "int8"))
    with pytest.raises(Exception, match=f"xq ends in {K + 1}, expected k={K}"):
        _infer(group_sums_op(wrong_k, packed, zero, **kw))
    with pytest.raises(Exception, match="packed has .* rows"):
        _infer(lut_gemv(relax.Var("xq", relax.TensorType([1, K], "int8")), packed, zero,
                        **{**kw, "bits": 3}))
    S = relax.Var("S", relax.TensorType([1, qw.n_groups + 1, N], "int32"))
    sx = relax.Var("sx", relax.TensorType([1, 1], "float32"))
    with pytest.raises(Exception, match="sums has 4 groups, expected 3"):
        _infer(dequantize(S, sx, scale, group_size=32, k=K))
    S = relax.Var("S", relax.TensorType([1, qw.n_groups, N], "int32"))
    with pytest.raises(Exception, match="sx ends in 1, expected 2 scales per row"):
        _infer(dequantize(S, sx, scale, group_size=32, k=K, act_group=64))
    xq = relax.Var("xq", relax.TensorType([1, K], "int8"))
    with pytest.raises(Exception, match="sx must have 2 axes"):
        _infer(lut_gemv(xq, packed, zero, sx=relax.Var("sx", relax.TensorType([1], "float32")),
                        scale=scale, **kw))
    with pytest.raises(OptionError, match="does not fit weight groups of 32"):
        lut_gemv(xq, packed, zero, act_group=24, **kw)


@pytest.mark.parametrize("nbw", [0, 9, 2.5, True])
def test_nbw_out_of_range_names_the_valid_values(nbw: object) -> None:
    _, (packed, _, zero) = _weights()
    xq = relax.Var("xq", relax.TensorType([1, K], "int8"))
    with pytest.raises(OptionError, match=r"NBW .* 1\.\.8"):
        lut_gemv(xq, packed, zero, bits=4, act_bits=8, group_size=32, k=K, nbw=nbw)


def test_bad_act_bits_and_placement() -> None:
    x = relax.Var("x", relax.TensorType([1, K], "float32"))
    with pytest.raises(OptionError, match="2..16"):
        quantize(x, act_bits=1, act_group=K)
    with pytest.raises(OptionError, match="valid choices are: host, pim"):
        quantize(x, placement="gpu", act_group=K)
    with pytest.raises(OptionError, match="act_group must be a positive integer"):
        quantize(x, act_group=0)


def test_tvmscript_shows_the_operators_and_their_attributes() -> None:
    x = relax.Var("x", relax.TensorType([1, K], "float32"))
    _, (packed, scale, zero) = _weights()
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        q = bb.emit(quantize(x, act_bits=8, act_group=32, placement="pim"))
        xq, sx = bb.emit(relax.TupleGetItem(q, 0)), bb.emit(relax.TupleGetItem(q, 1))
        s = bb.emit(lut_gemv(xq, packed, zero, bits=4, act_bits=8, group_size=32, k=K, nbw=5,
                             act_group=32, layer="model.proj"))
        bb.emit_func_output(bb.emit(dequantize(s, sx, scale, group_size=32, k=K, act_group=32,
                                               placement="host")))
    text = bb.get().script()
    assert '"sail.quantize"' in text and '"sail.lut_gemv"' in text and '"sail.dequantize"' in text
    for attr in ('"nbw": 5', '"placement": "pim"', '"output": "sums"', '"layer": "model.proj"',
                 '"placement": "host"', '"bits": 4', '"group_size": 32', '"act_group": 32'):
        assert attr in text
