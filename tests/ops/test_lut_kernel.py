"""The LUT-GEMV kernel (TE + CPU schedule): exact group sums and the fused float output.

Every kernel is built once with symbolic leading dims and run on several batches; the integer
sums are checked against an int64 einsum written here, independent of the package.
"""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te, tirx

from sail_compiler.lowering import host_target
from sail_compiler.ops.lut_kernel import (
    is_lut_gemv_func,
    lut_gemv_te,
    lut_layout,
    schedule_lut_gemv,
)
from sail_compiler.ops.quant_matmul import group_sums_te
from sail_compiler.ops.sail_ops import act_dtype
from sail_compiler.quant.packing import pack_bits, packed_length
from sail_compiler.quant.reference import (
    ActBlocks,
    block_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme

RNG = np.random.default_rng(11)
TARGET = host_target()
BATCHES = (1, 3, 16)


def _i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


def _kernel(lead: list, k: int, n: int, *, bits: int, group_size: int, act_bits: int, nbw: int,
            fused: bool, target: tvm.target.Target = TARGET,
            act_group: int | None = None) -> tvm.runtime.Module:
    """Build the scheduled kernel for ``xq[*lead, k]`` (the dims of ``lead`` may be Vars); with
    ``act_group``, ``sx`` is ``[*lead, ceil(k / act_group)]``, else ``[*lead]``."""
    n_groups = -(-k // group_size)
    dims = [_i64(d) if isinstance(d, int) else d for d in lead]
    xq = te.placeholder([*dims, _i64(k)], act_dtype(act_bits), "xq")
    packed = te.placeholder([_i64(packed_length(n_groups * group_size, bits)), _i64(n)],
                            "uint8", "packed")
    zero = te.placeholder([_i64(n_groups), _i64(n)], "int32", "zero")
    attrs = {"bits": bits, "group_size": group_size, "k": k, "act_bits": act_bits, "nbw": nbw,
             "act_group": act_group}
    if fused:
        blocks = [] if act_group is None else [_i64(-(-k // min(act_group, k)))]
        sx = te.placeholder([*dims, *blocks], "float32", "sx")
        scale = te.placeholder([_i64(n_groups), _i64(n)], "float32", "scale")
        out = lut_gemv_te(xq, packed, zero, sx=sx, scale=scale, **attrs)
        func = te.create_prim_func([xq, packed, zero, sx, scale, out])
    else:
        func = te.create_prim_func([xq, packed, zero, lut_gemv_te(xq, packed, zero, **attrs)])
    assert is_lut_gemv_func(func)
    sch = schedule_lut_gemv(func, target)
    assert sch is not None
    return tvm.tirx.build(sch.mod["main"], target=target)


def _weights(k: int, n: int, bits: int, group_size: int,
             symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random codes ``q[K_pad, N]`` (padding rows = the last zero point) and zero points."""
    n_groups = -(-k // group_size)
    if symmetric:
        zero = np.full((n_groups, n), 1 << (bits - 1), np.int32)
    else:
        zero = RNG.integers(0, 1 << bits, (n_groups, n)).astype(np.int32)
    q = RNG.integers(0, 1 << bits, (n_groups * group_size, n)).astype(np.uint8)
    q[k:] = zero[-1]
    return q, zero


def _activations(rows: int, k: int, act_bits: int) -> np.ndarray:
    """Random ``xq`` in the symmetric range; row 0 at the extremes (+-qmax and 0)."""
    qmax = (1 << (act_bits - 1)) - 1
    xq = RNG.integers(-qmax, qmax + 1, (rows, k))
    xq[0] = RNG.choice([-qmax, 0, qmax], k)
    return xq.astype(act_dtype(act_bits))


def _exact_sums(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, group_size: int) -> np.ndarray:
    """int64 ``S[..., grp, n] = sum_{k in grp} (q[k, n] - z[grp, n]) * xq[..., k]``."""
    lead, k = xq.shape[:-1], xq.shape[-1]
    n_groups, n = zero.shape
    x = np.zeros((int(np.prod(lead, dtype=np.int64)), n_groups * group_size), np.int64)
    x[:, :k] = xq.reshape(-1, k)
    w = q.astype(np.int64).reshape(n_groups, group_size, n) - zero.astype(np.int64)[:, None]
    sums = np.einsum("tgk,gkn->tgn", x.reshape(-1, n_groups, group_size), w)
    return sums.reshape(*lead, n_groups, n)


def _run(kernel: tvm.runtime.Module, out_shape: tuple[int, ...], out_dtype: str,
         *args: np.ndarray) -> np.ndarray:
    out = tvm.runtime.empty(out_shape, out_dtype)
    kernel(*[tvm.runtime.tensor(np.array(a, order="C")) for a in args], out)
    return out.numpy()


# (bits, act_bits, nbw, group_size, K, N, symmetric): every weight width, every activation width
# 2..8 and two wider ones, every NBW; g % NBW != 0 and g < NBW; K % g != 0; a group with a
# padding chunk (g=130, NBW=8: 17 chunks in 9 blocks of 2); N not a multiple of 16.
CASES = [
    (1, 2, 1, 5, 23, 16, False),
    (2, 3, 2, 7, 30, 32, True),
    (3, 4, 3, 8, 50, 16, False),
    (4, 5, 4, 32, 100, 48, True),
    (5, 6, 5, 12, 40, 16, False),
    (6, 7, 6, 4, 18, 24, False),
    (7, 8, 7, 20, 61, 16, True),
    (8, 8, 8, 130, 300, 32, False),
    (4, 12, 4, 128, 256, 32, False),
    (8, 16, 3, 64, 64, 16, True),
]


@pytest.mark.parametrize(("bits", "act_bits", "nbw", "group_size", "k", "n", "symmetric"),
                         CASES, ids=[f"b{c[0]}a{c[1]}nbw{c[2]}g{c[3]}k{c[4]}" for c in CASES])
def test_group_sums_exact(bits: int, act_bits: int, nbw: int, group_size: int, k: int, n: int,
                          symmetric: bool) -> None:
    q, zero = _weights(k, n, bits, group_size, symmetric)
    packed = pack_bits(q, bits)
    kernel = _kernel([tirx.Var("t", "int64")], k, n, bits=bits, group_size=group_size,
                     act_bits=act_bits, nbw=nbw, fused=False)
    n_groups = zero.shape[0]
    for rows in BATCHES:
        xq = _activations(rows, k, act_bits)
        got = _run(kernel, (rows, n_groups, n), "int32", xq, packed, zero)
        np.testing.assert_array_equal(got, _exact_sums(xq, q, zero, group_size),
                                      err_msg=f"batch {rows}")


@pytest.mark.parametrize("nbw", [2, 8])
def test_extreme_values_do_not_overflow(nbw: int) -> None:
    """Largest |q - z| and |xq| everywhere: the int16 plane sums reach their bound.

    With NBW = 2 the bound sets the block size (64 chunks of 2 rows: 64 * 2 * 255 = 32640),
    with NBW = 8 the table size does (2 chunks).
    """
    bits, act_bits, group_size, k, n = 8, 8, 256, 512, 16
    layout = lut_layout(bits, group_size, nbw)
    assert layout.chunks_per_block == {2: 64, 8: 2}[nbw]
    zero = np.zeros((2, n), np.int32)
    zero[:, ::2] = 255  # q - z = -255 in even columns, +255 in odd ones
    q = np.where(np.arange(n) % 2, 255, 0).astype(np.uint8)[None].repeat(k, axis=0)
    kernel = _kernel([tirx.Var("t", "int64")], k, n, bits=bits, group_size=group_size,
                     act_bits=act_bits, nbw=nbw, fused=False)
    xq = np.stack([np.full(k, 127), np.full(k, -127), np.resize([127, -127], k)]).astype(np.int8)
    got = _run(kernel, (3, 2, n), "int32", xq, pack_bits(q, bits), zero)
    np.testing.assert_array_equal(got, _exact_sums(xq, q, zero, group_size))
    assert np.abs(got).max() == group_size * 255 * 127


@pytest.mark.parametrize("lead", [[], [5], [2, 3]], ids=["no-lead", "static-1d", "static-2d"])
def test_static_leading_dims(lead: list[int]) -> None:
    bits, act_bits, nbw, group_size, k, n = 3, 6, 4, 16, 45, 32
    q, zero = _weights(k, n, bits, group_size, False)
    packed = pack_bits(q, bits)
    xq = _activations(int(np.prod(lead, dtype=np.int64)), k, act_bits).reshape(*lead, k)
    want = _exact_sums(xq, q, zero, group_size)
    kernel = _kernel(lead, k, n, bits=bits, group_size=group_size, act_bits=act_bits, nbw=nbw,
                     fused=False)
    np.testing.assert_array_equal(_run(kernel, want.shape, "int32", xq, packed, zero), want)
    sx = RNG.random(lead, np.float32) + np.float32(0.5)
    scale = RNG.random(zero.shape, np.float32)
    kernel = _kernel(lead, k, n, bits=bits, group_size=group_size, act_bits=act_bits, nbw=nbw,
                     fused=True)
    got = _run(kernel, (*lead, n), "float32", xq, packed, zero, sx, scale)
    terms = (scale * np.asarray(sx)[..., None, None]) * want.astype(np.float32)
    np.testing.assert_array_equal(got, terms.sum(axis=-2, dtype=np.float32))


def test_super_tiles() -> None:
    """One core and N = 512: each parallel task walks 16 column tiles per group."""
    bits, act_bits, nbw, group_size, k, n = 4, 8, 4, 32, 70, 512
    q, zero = _weights(k, n, bits, group_size, False)
    xq = _activations(3, k, act_bits)
    kernel = _kernel([tirx.Var("t", "int64")], k, n, bits=bits, group_size=group_size,
                     act_bits=act_bits, nbw=nbw, fused=False, target=host_target(1))
    got = _run(kernel, (3, zero.shape[0], n), "int32", xq, pack_bits(q, bits), zero)
    np.testing.assert_array_equal(got, _exact_sums(xq, q, zero, group_size))


# (scheme, act_bits, nbw): with zero points and symmetric, grouped and per channel.
FLOAT_CASES = [(QuantScheme(4, 32), 8, 4), (QuantScheme(2, 16, True), 8, 3),
               (QuantScheme(8, 64), 6, 5), (QuantScheme(3, None), 8, 4)]


@pytest.mark.parametrize(("scheme", "act_bits", "nbw"), FLOAT_CASES,
                         ids=[f"{c[0]}-a{c[1]}-nbw{c[2]}" for c in FLOAT_CASES])
def test_fused_output_matches_reference(scheme: QuantScheme, act_bits: int, nbw: int) -> None:
    """``[1, seq, K]`` with a symbolic seq: bit-identical to ``quantized_matmul``."""
    k, n = 100, 32
    qw = quantize_weights_rtn(RNG.standard_normal((k, n)).astype(np.float32), scheme)
    kernel = _kernel([1, tirx.Var("seq", "int64")], k, n, bits=qw.bits,
                     group_size=qw.group_size, act_bits=act_bits, nbw=nbw, fused=True)
    for seq in BATCHES:
        x = RNG.standard_normal((1, seq, k)).astype(np.float32)
        x[0, 0] = 0  # an all-zero row: sx = 1, output exactly 0
        xq, sx = quantize_activations(x.reshape(seq, k), act_bits)
        got = _run(kernel, (1, seq, n), "float32", xq.astype(act_dtype(act_bits))[None],
                   qw.packed(), qw.zero_points(), sx[None], qw.scale)
        want = quantized_matmul(x, qw, act_bits)
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)
        np.testing.assert_array_equal(got, want, err_msg=f"seq {seq}")
        assert not got[0, 0].any()


def test_schedule_ignores_other_kernels() -> None:
    xq = te.placeholder([_i64(2), _i64(64)], "int32", "xq")
    packed = te.placeholder([_i64(32), _i64(16)], "uint8", "packed")
    zero = te.placeholder([_i64(2), _i64(16)], "int32", "zero")
    sums = group_sums_te(xq, packed, zero, 4, ActBlocks(64, 32, 64))
    func = te.create_prim_func([xq, packed, zero, sums])
    assert not is_lut_gemv_func(func)
    assert schedule_lut_gemv(func, TARGET) is None


# (scheme, K, act_group): blocks equal to, dividing and spanning the weight groups, a partial last
# block, one group split by blocks that do not divide it, blocks below the kernel's chunks.
BLOCK_CASES = [(QuantScheme(4, 32), 100, 32), (QuantScheme(4, 64), 100, 16),
               (QuantScheme(3, 16, True), 100, 48), (QuantScheme(8, 32), 70, 8),
               (QuantScheme(2, None), 100, 32), (QuantScheme(5, 128), 100, 3)]


@pytest.mark.parametrize(("scheme", "k", "act_group"), BLOCK_CASES,
                         ids=[f"{c[0]}-k{c[1]}-a{c[2]}" for c in BLOCK_CASES])
def test_block_scales_match_reference(scheme: QuantScheme, k: int, act_group: int) -> None:
    """Per-block activation scales: the sums per sum block equal the reference's exactly, the
    fused output is bit-identical to ``quantized_matmul``."""
    n, act_bits, nbw = 32, 8, 4
    qw = quantize_weights_rtn(RNG.standard_normal((k, n)).astype(np.float32), scheme)
    blocks = ActBlocks(k, qw.group_size, act_group)
    seq = tirx.Var("seq", "int64")
    sums_kernel = _kernel([seq], k, n, bits=qw.bits, group_size=qw.group_size,
                          act_bits=act_bits, nbw=nbw, fused=False, act_group=act_group)
    kernel = _kernel([seq], k, n, bits=qw.bits, group_size=qw.group_size, act_bits=act_bits,
                     nbw=nbw, fused=True, act_group=act_group)
    for rows in (1, 5):
        x = RNG.standard_normal((rows, k)).astype(np.float32)
        x[:, 3] *= 40  # an outlier channel
        xq, sx = quantize_activations(x, act_bits, act_group)
        assert sx.shape == (rows, blocks.n_blocks)
        xq8 = xq.astype(act_dtype(act_bits))
        sums = _run(sums_kernel, (rows, blocks.n_sums, n), "int32", xq8, qw.packed(),
                    qw.zero_points())
        np.testing.assert_array_equal(sums, block_sums(xq, qw, blocks))
        got = _run(kernel, (rows, n), "float32", xq8, qw.packed(), qw.zero_points(), sx,
                   qw.scale)
        np.testing.assert_array_equal(got, quantized_matmul(x, qw, act_bits, act_group))
