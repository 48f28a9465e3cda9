"""The NumPy reference semantics (DESIGN.md section 3) against straightforward loops."""

from __future__ import annotations

import math

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail_compiler.errors import OptionError
from sail_compiler.quant.packing import unpack_bits
from sail_compiler.quant.reference import (
    ActBlocks,
    PackedWeight,
    QuantizedWeight,
    block_sums,
    check_act_group_size,
    dequantize,
    group_sums,
    quantize_activations,
    quantize_weights_rtn,
    quantized_matmul,
)
from sail_compiler.quant.scheme import QuantScheme

f32 = np.float32


def rtn_loop(w: np.ndarray, scheme: QuantScheme) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DESIGN.md section 3 element by element: returns (unsigned codes, scales, zero points)."""
    k, n = w.shape
    b, g = scheme.bits, scheme.group_size or k
    n_groups = -(-k // g)
    q = np.zeros((n_groups * g, n), np.uint8)
    scale = np.zeros((n_groups, n), np.float32)
    zero = np.zeros((n_groups, n), np.int64)
    for col in range(n):
        for grp in range(n_groups):
            rows = range(grp * g, (grp + 1) * g)
            vals = [f32(w[r, col]) if r < k else f32(0) for r in rows]
            if scheme.symmetric:
                # full range, as onnxruntime: the largest |w| (the negative one on a tie) maps
                # to -2**(b-1); codes roundf(w * (1 / s) + z) (halves away from 0) in float32
                z, qmax = 2 ** (b - 1), 2 ** b - 1
                peak = max(vals, key=lambda v: (abs(v), v < 0))
                s = -peak / f32(z)
                s = f32(1) if s == 0 else s
                with np.errstate(over="ignore"):
                    r = f32(1) / s
                scaled = [v * r if np.isfinite(r) else v / s for v in vals]  # (s subnormal)
                codes = [min(max(math.floor(float(f32(x + f32(z))) + 0.5), 0), qmax)
                         for x in scaled]
            else:
                qmax = 2 ** b - 1
                lo, hi = min(min(vals), f32(0)), max(max(vals), f32(0))
                s = (f32(hi) - f32(lo)) / f32(qmax)
                s = f32(1) if s == 0 else s
                z = min(max(round(float(-f32(lo) / s)), 0), qmax)
                codes = [min(max(round(float(v / s)) + z, 0), qmax) for v in vals]
            scale[grp, col], zero[grp, col] = s, z
            for r, c in zip(rows, codes, strict=True):
                q[r, col] = c
    return q, scale, zero


def activations_loop(x: np.ndarray, act_bits: int,
                     act_group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """DESIGN.md section 3 element by element: one scale per row and block of act_group."""
    qmax = 2 ** (act_bits - 1) - 1
    t_rows, k = x.shape
    a = k if act_group is None else min(act_group, k)
    n_blocks = -(-k // a)
    xq = np.zeros(x.shape, np.int32)
    sx = np.zeros((t_rows, n_blocks), np.float32)
    for t in range(t_rows):
        for blk in range(n_blocks):
            cols = range(blk * a, min((blk + 1) * a, k))
            s = f32(max(abs(f32(x[t, i])) for i in cols)) / f32(qmax)
            s = f32(1) if s == 0 else s
            sx[t, blk] = s
            for i in cols:
                xq[t, i] = min(max(round(float(f32(x[t, i]) / s)), -qmax), qmax)
    return xq, sx


def direct_group_sums(xq: np.ndarray, qw: QuantizedWeight) -> np.ndarray:
    """Integers of the dequantized weights (q - z, padding dropped) times xq, per group, int64."""
    ints = qw.q[: qw.k].astype(np.int64) - np.repeat(qw.zero_points(), qw.group_size, 0)[: qw.k]
    groups = np.arange(qw.k) // qw.group_size
    onehot = (groups[:, None] == np.arange(qw.n_groups)[None, :]).astype(np.int64)
    return np.einsum("tk,kn,kg->tgn", xq.astype(np.int64), ints, onehot)


def grid_weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Random weights on a coarse grid so that round-half-to-even ties happen often."""
    return (rng.integers(-16, 17, shape) / 8).astype(np.float32)


SCHEMES = [QuantScheme(b, g, s) for b in range(1, 9) for g in (1, 4, 8, None)
           for s in (False, True) if not (s and b == 1)]


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_matches_loop(scheme: QuantScheme) -> None:
    rng = np.random.default_rng(scheme.bits)
    for w in [rng.standard_normal((13, 3)).astype(np.float32), grid_weights(rng, (13, 3))]:
        qw = quantize_weights_rtn(w, scheme)
        q, scale, zero = rtn_loop(w, scheme)
        np.testing.assert_array_equal(qw.q, q)
        np.testing.assert_array_equal(qw.scale, scale)
        np.testing.assert_array_equal(qw.zero_points(), zero)
        assert qw.q.dtype == np.uint8 and qw.scale.dtype == np.float32
        assert (qw.zero is None) == scheme.symmetric
        assert qw.k == 13 and qw.group_size == (scheme.group_size or 13)


@settings(max_examples=60, deadline=None)
@given(w=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=12),
                    elements=st.floats(-1e3, 1e3, width=32)),
       bits=st.integers(1, 8), group=st.sampled_from([1, 2, 3, 5, 8, None]),
       symmetric=st.booleans())
def test_rtn_matches_loop_property(w: np.ndarray, bits: int, group: int | None,
                                   symmetric: bool) -> None:
    scheme = QuantScheme(bits, group, symmetric and bits > 1)
    qw = quantize_weights_rtn(w, scheme)
    q, scale, zero = rtn_loop(w, scheme)
    np.testing.assert_array_equal(qw.q, q)
    np.testing.assert_array_equal(qw.scale, scale)
    np.testing.assert_array_equal(qw.zero_points(), zero)


def test_rounding_of_ties() -> None:
    # symmetric 4-bit, w* = -4 -> scale 0.5 exactly: w / s hits exact .5 ties, which round up
    # (onnxruntime's roundf(w / s + 8)); with zero points they round half to even
    w = np.array([[-4.0], [0.25], [0.75], [1.25], [-0.25], [-0.75], [-1.25], [0.0]], np.float32)
    qw = quantize_weights_rtn(w, QuantScheme(4, None, True))
    assert qw.scale.tolist() == [[0.5]]
    assert (qw.q[:, 0].astype(int) - 8).tolist() == [-8, 1, 2, 3, 0, -1, -2, 0]
    qw = quantize_weights_rtn(np.array([[0.0], [0.25], [0.75], [7.5]], np.float32),
                              QuantScheme(4, None, False))
    assert qw.scale.tolist() == [[0.5]] and qw.zero.tolist() == [[0]]
    assert qw.q[:, 0].tolist() == [0, 0, 2, 15]


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_code_range_and_exact_grid(bits: int) -> None:
    half = 2 ** (bits - 1)
    ints = np.arange(-half, half, dtype=np.float32)[:, None]  # all 2**b levels
    for sign in (1, -1):  # w* = -half/4: scale 0.25; w* = +half/4: scale -0.25
        w = sign * ints * f32(0.25)
        qw = quantize_weights_rtn(w, QuantScheme(bits, None, True))
        assert qw.scale.tolist() == [[sign * 0.25]]
        signed = qw.q.astype(int) - half
        np.testing.assert_array_equal(signed, ints.astype(int))  # weights on the grid are exact
        np.testing.assert_array_equal(dequantize(qw), w)


def test_asymmetric_one_bit() -> None:
    w = np.array([[-1.0, 0.0, 2.0], [0.5, 0.0, 2.0], [-0.2, 0.0, 0.0], [0.9, 0.0, 1.1]],
                 np.float32)
    qw = quantize_weights_rtn(w, QuantScheme(1, None, False))
    assert set(np.unique(qw.q)) <= {0, 1} and set(np.unique(qw.zero)) <= {0, 1}
    np.testing.assert_array_equal(dequantize(qw)[:, 2], [2, 2, 0, 2])
    np.testing.assert_array_equal(dequantize(qw)[:, 1], 0)
    q, scale, zero = rtn_loop(w, QuantScheme(1, None, False))
    np.testing.assert_array_equal(qw.q, q)


@pytest.mark.parametrize("symmetric", [False, True])
def test_padding_rows_are_zero_points_and_contribute_nothing(symmetric: bool) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((100, 6)).astype(np.float32)  # 100 = 3 * 32 + 4
    qw = quantize_weights_rtn(w, QuantScheme(3, 32, symmetric))
    assert qw.q.shape == (128, 6) and qw.scale.shape == (4, 6) and qw.k == 100
    np.testing.assert_array_equal(qw.q[100:], np.broadcast_to(qw.zero_points()[3], (28, 6)))
    assert dequantize(qw).shape == (100, 6)
    # the contribution of padding rows is zero whatever the padded activations are
    garbage = rng.integers(-127, 128, (2, 28))
    padded_ints = qw.q[100:].astype(np.int64) - qw.zero_points()[3]
    np.testing.assert_array_equal(garbage @ padded_ints, 0)


def test_zero_groups_get_unit_scale() -> None:
    w = np.zeros((8, 3), np.float32)
    w[4:, 1] = [1, -2, 3, 0.5]
    w[:4, 2] = 1e-45  # smallest subnormal: the scale underflows to 0
    for symmetric in (False, True):
        qw = quantize_weights_rtn(w, QuantScheme(4, 4, symmetric))
        assert qw.scale[0, 0] == 1 and qw.scale[1, 0] == 1 and qw.scale[0, 2] == 1
        np.testing.assert_array_equal(qw.q[:, 0], qw.zero_points()[0, 0])
        assert np.all(np.isfinite(dequantize(qw)))
        np.testing.assert_array_equal(dequantize(qw)[:, 0], 0)


@pytest.mark.parametrize(
    "scheme", [QuantScheme(b, 16, s) for b in (2, 4, 8) for s in (False, True)], ids=str)
def test_dequantize_error_bound(scheme: QuantScheme) -> None:
    w = np.random.default_rng(2).standard_normal((40, 7)).astype(np.float32)
    qw = quantize_weights_rtn(w, scheme)
    err = np.abs(dequantize(qw) - w)
    per_row_scale = np.abs(np.repeat(qw.scale, 16, axis=0)[:40])
    # half a step, or up to a step at a clip: where the rounded zero point pushes the range edge,
    # or (symmetric) on the side opposite w*, whose top code is 2**(b-1) - 1
    top = qw.q[:40] == 2 ** scheme.bits - 1
    steps = np.where(top, 1.0, 0.5) if scheme.symmetric else 1.0
    bound = steps * per_row_scale * (1 + 1e-5)
    assert np.all(err <= bound)


def test_activations_match_loop() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 37)).astype(np.float32) * 10
    x[1] = 0
    x[2, 5] = 1e-44
    x[2, 6:] = 0
    for act_bits in (2, 4, 8, 16):
        xq, sx = quantize_activations(x, act_bits)
        xq_loop, sx_loop = activations_loop(x, act_bits)
        assert xq.dtype == np.int32 and sx.dtype == np.float32
        np.testing.assert_array_equal(xq, xq_loop)
        np.testing.assert_array_equal(sx, sx_loop[:, 0])
        assert sx.shape == (5,)
        np.testing.assert_array_equal(quantize_activations(x, act_bits, 37)[1], sx_loop)
        assert np.all(np.abs(xq) <= 2 ** (act_bits - 1) - 1)


def test_zero_and_tiny_rows_do_not_divide_by_zero() -> None:
    x = np.zeros((3, 4), np.float32)
    x[1, 2] = 1e-45  # smallest subnormal: max|x| / 127 underflows to 0
    x[2, 0] = -3e-39  # subnormal scale: x / sx overshoots 127, the clip holds it
    with np.errstate(divide="raise", invalid="raise"):
        xq, sx = quantize_activations(x)
    assert sx[0] == 1 and sx[1] == 1
    np.testing.assert_array_equal(xq[:2], 0)
    assert -127 <= xq[2, 0] < 0


def test_activation_errors() -> None:
    with pytest.raises(OptionError, match=r"2\.\.16"):
        quantize_activations(np.ones((1, 4), np.float32), 1)
    with pytest.raises(OptionError, match=r"2\.\.16"):
        quantize_activations(np.ones((1, 4), np.float32), 17)
    with pytest.raises(ValueError, match="non-finite"):
        quantize_activations(np.array([[1.0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        quantize_activations(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_activations(np.ones((1, 4), np.int32))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), bits=st.integers(1, 8), group=st.sampled_from([1, 3, 8, 16, None]),
       symmetric=st.booleans(), k=st.integers(1, 40), n=st.integers(1, 6), t=st.integers(1, 4))
def test_group_sums_equal_direct_einsum(data: st.DataObject, bits: int, group: int | None,
                                        symmetric: bool, k: int, n: int, t: int) -> None:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    qw = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                              QuantScheme(bits, group, symmetric and bits > 1))
    xq = rng.integers(-127, 128, (t, k)).astype(np.int32)
    sums = group_sums(xq, qw)
    assert sums.dtype == np.int32 and sums.shape == (t, qw.n_groups, n)
    np.testing.assert_array_equal(sums, direct_group_sums(xq, qw))


def test_group_sums_overflow_and_bad_inputs() -> None:
    qw = quantize_weights_rtn(np.ones((300, 2), np.float32), QuantScheme(8, None, False))
    xq, _ = quantize_activations(np.ones((1, 300), np.float32), act_bits=16)
    with pytest.raises(OptionError, match="beyond int32"):
        group_sums(xq, qw)  # 300 * 255 * 32767 > 2**31 - 1
    with pytest.raises(ValueError, match=r"\[T, 300\]"):
        group_sums(xq[:, :299], qw)
    with pytest.raises(ValueError, match=r"\[T, 300\]"):
        group_sums(xq.astype(np.float32), qw)


@pytest.mark.parametrize("scheme", [QuantScheme(4, 32), QuantScheme(3, 32, True),
                                    QuantScheme(8, None), QuantScheme(2, 64)], ids=str)
def test_quantized_matmul_assembles_the_group_sums(scheme: QuantScheme) -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((100, 9)).astype(np.float32)
    x = rng.standard_normal((2, 3, 100)).astype(np.float32)
    qw = quantize_weights_rtn(w, scheme)
    y = quantized_matmul(x, qw)
    assert y.dtype == np.float32 and y.shape == (2, 3, 9)
    xq, sx = quantize_activations(x.reshape(6, 100))
    # exact arithmetic: sum_grp s * sx * S = (sx * xq) @ dequantize(w)
    exact = (xq * sx[:, None].astype(np.float64)) @ dequantize(qw).astype(np.float64)
    np.testing.assert_allclose(y.reshape(6, 9), exact, rtol=1e-5, atol=1e-5 * np.abs(exact).max())
    np.testing.assert_array_equal(quantized_matmul(x[1, 2], qw), y[1, 2])  # 1-D input: [N]


# ---- per-block activation scales -------------------------------------------------------------


def nested_sizes(draw: st.DrawFn, k: int, g: int) -> int:
    """An activation group size that nests with g for this K (ActBlocks' rule)."""
    options = [d for d in range(1, g + 1) if g % d == 0] + [g * m for m in (1, 2, 3)]
    if k <= g:
        options += list(range(1, k + 1))
    return draw(st.sampled_from(options + [k, k + 5]))


@settings(max_examples=60, deadline=None)
@given(data=st.data(), act_bits=st.sampled_from([2, 3, 8, 12]), t=st.integers(1, 3),
       k=st.integers(1, 70), a=st.integers(1, 80))
def test_block_activations_match_loop(data: st.DataObject, act_bits: int, t: int, k: int,
                                      a: int) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = grid_weights(rng, (t, k)) * rng.choice([1, 50], (t, k)).astype(np.float32)
    x[:, rng.integers(0, k)] = 0
    xq, sx = quantize_activations(x, act_bits, a)
    xq_loop, sx_loop = activations_loop(x, act_bits, a)
    assert sx.shape == (t, -(-k // min(a, k)))
    np.testing.assert_array_equal(xq, xq_loop)
    np.testing.assert_array_equal(sx, sx_loop)


def block_sums_loop(xq: np.ndarray, qw: QuantizedWeight, a: int) -> tuple[np.ndarray, list]:
    """Sums split wherever a weight group or an activation block ends, int64, and for each sum
    (weight group, activation block): DESIGN.md section 3 directly."""
    k = qw.k
    bounds = sorted({0, k} | {b for b in range(0, k, qw.group_size)} | {b for b in range(0, k, a)})
    owners = [(lo // qw.group_size, lo // a) for lo in bounds[:-1]]
    ints = qw.q[:k].astype(np.int64) - np.repeat(qw.zero_points(), qw.group_size, 0)[:k]
    sums = np.stack([xq[:, lo:hi].astype(np.int64) @ ints[lo:hi]
                     for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)], axis=1)
    return sums, owners


@settings(max_examples=80, deadline=None)
@given(data=st.data(), bits=st.integers(1, 8), group=st.sampled_from([1, 3, 8, 16, 32, None]),
       k=st.integers(1, 70), n=st.integers(1, 5), t=st.integers(1, 3))
def test_block_sums_split_the_groups_at_block_boundaries(data: st.DataObject, bits: int,
                                                         group: int | None, k: int, n: int,
                                                         t: int) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    qw = quantize_weights_rtn(rng.standard_normal((k, n)).astype(np.float32),
                              QuantScheme(bits, group, bits > 1 and bool(rng.integers(2))))
    a = nested_sizes(data.draw, k, qw.group_size)
    blocks = ActBlocks(k, qw.group_size, a)
    xq = rng.integers(-127, 128, (t, k)).astype(np.int32)
    sums = block_sums(xq, qw, blocks)
    assert sums.dtype == np.int32 and sums.shape == (t, blocks.n_sums, n)
    expected, owners = block_sums_loop(xq, qw, blocks.act_group)
    np.testing.assert_array_equal(sums, expected)
    assert owners == list(zip(blocks.group_of(), blocks.block_of(), strict=True))
    # the pieces of each weight group add up to its group sum
    per_group = np.zeros((t, qw.n_groups, n), np.int64)
    np.add.at(per_group, (slice(None), blocks.group_of()), sums)
    np.testing.assert_array_equal(per_group, group_sums(xq, qw))


@settings(max_examples=40, deadline=None)
@given(data=st.data(), group=st.sampled_from([4, 8, 16, 32]), k=st.integers(1, 70),
       act_bits=st.sampled_from([4, 8]))
def test_block_matmul_is_the_contract(data: st.DataObject, group: int, k: int,
                                      act_bits: int) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    qw = quantize_weights_rtn(rng.standard_normal((k, 5)).astype(np.float32), QuantScheme(4, group))
    a = nested_sizes(data.draw, k, group)
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    y = quantized_matmul(x, qw, act_bits, a)
    xq, sx = activations_loop(x.reshape(6, k), act_bits, a)
    sums, owners = block_sums_loop(xq, qw, min(a, k))
    # y[t, n] = sum_j (s[grp(j), n] * sx[t, blk(j)]) * S[t, j, n], float32, in order of j
    expected = np.zeros((6, 5), np.float32)
    for j, (grp, blk) in enumerate(owners):
        expected += (qw.scale[grp][None, :] * sx[:, blk, None]) * sums[:, j].astype(np.float32)
    np.testing.assert_array_equal(y.reshape(6, 5), expected)


def test_one_block_per_row_is_the_per_row_contract() -> None:
    rng = np.random.default_rng(8)
    qw = quantize_weights_rtn(rng.standard_normal((100, 7)).astype(np.float32), QuantScheme(3, 32))
    x = rng.standard_normal((4, 100)).astype(np.float32)
    y = quantized_matmul(x, qw)
    for a in (100, 101, 4096):
        np.testing.assert_array_equal(quantized_matmul(x, qw, 8, a), y)
    xq, sx = quantize_activations(x, 8)
    expected = (qw.scale[None] * sx[:, None, None] * group_sums(xq, qw).astype(np.float32)).sum(
        axis=1, dtype=np.float32)
    np.testing.assert_array_equal(y, expected)


def test_block_scales_keep_an_outlier_channel_from_crushing_the_rest() -> None:
    rng = np.random.default_rng(9)
    w = rng.standard_normal((256, 32)).astype(np.float32)
    x = rng.standard_normal((8, 256)).astype(np.float32)
    x[:, 7] = 300.0  # one outlier channel, as in real LLM activations
    qw = quantize_weights_rtn(w, QuantScheme(8, 32))
    ref = x.astype(np.float64) @ dequantize(qw).astype(np.float64)

    def err(a: int | None) -> float:
        return float(np.linalg.norm(quantized_matmul(x, qw, 8, a) - ref) / np.linalg.norm(ref))

    assert err(32) < err(None) / 2


@pytest.mark.parametrize(("k", "g", "a", "size", "blocks", "sums"), [
    (640, 128, 128, 128, 5, 5), (640, 128, 32, 32, 20, 20), (640, 128, 256, 128, 3, 5),
    (640, 128, 640, 128, 1, 5), (640, 128, 10**6, 128, 1, 5), (100, 32, 100, 32, 1, 4),
    (100, 100, 32, 32, 4, 4), (100, 128, 48, 48, 3, 3), (70, 16, 8, 8, 9, 9)])
def test_act_blocks_layout(k: int, g: int, a: int, size: int, blocks: int, sums: int) -> None:
    layout = ActBlocks(k, g, a)
    assert (layout.sum_size, layout.n_blocks, layout.n_sums) == (size, blocks, sums)
    assert layout.act_group == min(a, k) and layout.per_row == (a >= k)


def test_act_group_sizes_that_do_not_nest_are_option_errors() -> None:
    with pytest.raises(OptionError, match=r"does not fit weight groups of 96 \(K = 256\).*"
                                          r"divisor of 96 \(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, "
                                          r"96\), a multiple of 96"):
        ActBlocks(256, 96, 64)
    with pytest.raises(ValueError, match=">= 1"):
        ActBlocks(256, 96, 0)
    assert ActBlocks.resolve("row", 256, 96).act_group == 256
    assert ActBlocks.resolve("group", 256, 96).act_group == 96
    assert ActBlocks.resolve("group", 50, 96).per_row
    for bad in (-1, "rows", 1.5, True, None):
        with pytest.raises(OptionError, match="positive integer, 'row'"):
            check_act_group_size(bad)
    assert check_act_group_size(0) == check_act_group_size("0") == "row"
    assert check_act_group_size("32") == 32


def test_quantization_error_shrinks_with_bits() -> None:
    rng = np.random.default_rng(5)
    w = rng.uniform(-1, 1, (512, 64)).astype(np.float32)
    x = rng.uniform(-1, 1, (8, 512)).astype(np.float32)
    ref = x.astype(np.float64) @ w.astype(np.float64)

    def rel_error(scheme: str) -> float:
        y = quantized_matmul(x, quantize_weights_rtn(w, QuantScheme.parse(scheme)))
        return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))

    for kind in ("", "sym"):
        e8, e4, e2 = (rel_error(f"w{b}g128{kind}") for b in (8, 4, 2))
        assert e8 < e4 < e2
        assert e8 < 1e-2
    # weights whose magnitude drifts along K: smaller groups follow it, a channel scale cannot
    drifting = w * np.exp(rng.standard_normal((512, 1))).astype(np.float32)
    errors = [np.linalg.norm(dequantize(quantize_weights_rtn(drifting, QuantScheme.parse(s)))
                             - drifting) for s in ("w4g32", "w4g128", "w4channel")]
    assert errors[0] < 0.8 * errors[1] < 0.8**2 * errors[2]


def test_quantized_weight_validation() -> None:
    qw = quantize_weights_rtn(np.random.default_rng(6).standard_normal((10, 3)).astype("f4"),
                              QuantScheme(4, 4))
    good = dict(q=qw.q, scale=qw.scale, zero=qw.zero, bits=4, group_size=4, k=10)
    QuantizedWeight(**good)
    bad_cases = {
        "q must be 2-D uint8": dict(q=qw.q.astype(np.int32)),
        "scale must be 2-D float32": dict(scale=qw.scale.astype(np.float64)),
        "zero must be 2-D uint8": dict(zero=qw.zero.astype(np.int32)),
        "q has shape": dict(q=qw.q[:8]),
        "scale has shape": dict(scale=qw.scale[:2]),
        "does not fit in 4 bits": dict(zero=qw.zero | 16),
        "padding rows": dict(q=np.where(np.arange(12)[:, None] >= 10, 15 - qw.q, qw.q)),
        "must be >= 1": dict(k=0),
    }
    for message, change in bad_cases.items():
        with pytest.raises(ValueError, match=message):
            QuantizedWeight(**{**good, **change})
    with pytest.raises(OptionError, match=r"1\.\.8"):
        QuantizedWeight(**{**good, "bits": 9})
    with pytest.raises(OptionError, match="symmetric 1-bit"):
        QuantizedWeight(**{**good, "bits": 1, "zero": None})


def test_weight_errors_and_packed_view() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        quantize_weights_rtn(np.array([[np.inf]], np.float32), QuantScheme(4))
    with pytest.raises(ValueError, match="2-D"):
        quantize_weights_rtn(np.ones(4, np.float32), QuantScheme(4))
    with pytest.raises(ValueError, match="K >= 1"):
        quantize_weights_rtn(np.ones((0, 4), np.float32), QuantScheme(4))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_weights_rtn(np.ones((4, 4), np.int8), QuantScheme(4))
    with pytest.raises(ValueError, match="overflowed"):
        quantize_weights_rtn(np.array([[3e38], [-3e38]], np.float32), QuantScheme(4))
    qw = quantize_weights_rtn(np.random.default_rng(7).standard_normal((70, 5)).astype("f4"),
                              QuantScheme(5, 32))
    packed = qw.packed()
    assert packed.shape == ((96 * 5 + 7) // 8, 5)
    np.testing.assert_array_equal(unpack_bits(packed, 5, 96), qw.q)
    with pytest.raises(ValueError, match=r"\[\.\.\., 70\]"):
        quantized_matmul(np.ones((2, 69), np.float32), qw)


@pytest.mark.parametrize("scheme", ["w4g128", "w3g64sym", "w2g32", "w8g32", "w4channel"])
def test_packed_weight_holds_the_same_weight(scheme: str) -> None:
    """A PackedWeight keeps the packed codes (64-byte aligned) and gives back the codes, zero
    points and sizes of the QuantizedWeight it was made of."""
    w = np.random.default_rng(1).standard_normal((300, 70)).astype(np.float32)
    qw = quantize_weights_rtn(w, QuantScheme.parse(scheme))
    packed = PackedWeight.of(qw)
    assert packed.packed().ctypes.data % 64 == 0 and packed.scale.ctypes.data % 64 == 0
    assert np.array_equal(packed.packed(), qw.packed())
    assert np.array_equal(packed.zero_points(), qw.zero_points())
    assert (packed.k, packed.n, packed.n_groups, packed.symmetric, packed.k_padded) == \
        (qw.k, qw.n, qw.n_groups, qw.symmetric, qw.k_padded)
    again = packed.unpack()
    assert np.array_equal(again.q, qw.q) and np.array_equal(again.scale, qw.scale)
    assert np.array_equal(dequantize(again), dequantize(qw))
