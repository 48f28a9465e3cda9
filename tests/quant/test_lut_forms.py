"""The two LUT-GEMV reference forms (quant/lut.py) equal the exact integer group sums."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail_compiler.errors import OptionError
from sail_compiler.quant.lut import (
    activation_patterns,
    activation_tables,
    chunk_layout,
    lut_gemv_sail,
    lut_gemv_tmac,
    sail_sums,
    sail_tables,
    tmac_sums,
    weight_patterns,
)
from sail_compiler.quant.reference import QuantizedWeight, group_sums


def exact_sums(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, group_size: int) -> np.ndarray:
    """int64 ``sum_{k in grp} (q[k, n] - z[grp, n]) * xq[t, k]``, straight from DESIGN.md."""
    k_pad, n = q.shape
    x = np.zeros((xq.shape[0], k_pad), np.int64)
    x[:, : xq.shape[1]] = xq
    w = q.astype(np.int64).reshape(-1, group_size, n) - zero.astype(np.int64)[:, None, :]
    return np.einsum("tgk,gkn->tgn", x.reshape(x.shape[0], -1, group_size), w)


NARROW_ACT_BITS = st.integers(2, 8)


@st.composite
def lut_cases(draw: st.DrawFn, act_bits: st.SearchStrategy[int] = NARROW_ACT_BITS
              ) -> tuple[np.ndarray, QuantizedWeight, int, int]:
    """(xq [T, K], weight, NBW, b_a): any widths, K and g unrelated to NBW, extreme values."""
    bits, b_a, nbw = draw(st.integers(1, 8)), draw(act_bits), draw(st.integers(1, 8))
    g, k, n, t = draw(st.integers(1, 20)), draw(st.integers(1, 50)), draw(st.integers(1, 4)), \
        draw(st.integers(1, 4))
    symmetric = bits >= 2 and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_groups = -(-k // g)
    lo, hi = -(1 << (b_a - 1)), (1 << (b_a - 1)) - 1
    if draw(st.booleans()):
        xq = rng.integers(lo, hi + 1, size=(t, k))
    else:  # the extremes: the most negative two's-complement value, +-qmax and 0
        xq = rng.choice([lo, lo + 1, 0, hi], size=(t, k))
    if symmetric:
        zero, zero_points = None, np.full((n_groups, n), 1 << (bits - 1))
    else:
        zero = rng.integers(0, 1 << bits, size=(n_groups, n)).astype(np.uint8)
        zero_points = zero
    q = rng.integers(0, 1 << bits, size=(n_groups * g, n))
    if draw(st.booleans()):  # all codes at an end of their range
        q = rng.choice([0, (1 << bits) - 1], size=q.shape)
    q[k:] = zero_points[-1]
    qw = QuantizedWeight(q.astype(np.uint8), np.ones((n_groups, n), np.float32), zero, bits, g, k)
    return xq, qw, nbw, b_a


def check_all_forms(xq: np.ndarray, qw: QuantizedWeight, nbw: int, act_bits: int) -> None:
    want = exact_sums(xq, qw.q, qw.zero_points(), qw.group_size)
    np.testing.assert_array_equal(group_sums(xq, qw), want)
    zero, g = qw.zero_points(), qw.group_size
    for unsigned in (False, True):
        got = lut_gemv_sail(xq, qw.q, zero, group_size=g, nbw=nbw, act_bits=act_bits,
                            unsigned_tables=unsigned)
        np.testing.assert_array_equal(got, want)
        sums = sail_sums(xq, qw, nbw=nbw, act_bits=act_bits, unsigned_tables=unsigned)
        assert sums.dtype == np.int32
        np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(
        lut_gemv_tmac(xq, qw.q, zero, group_size=g, nbw=nbw, bits=qw.bits), want)
    sums = tmac_sums(xq, qw, nbw=nbw)
    assert sums.dtype == np.int32
    np.testing.assert_array_equal(sums, want)


@settings(max_examples=400, deadline=None)
@given(lut_cases())
def test_forms_equal_exact_group_sums(case: tuple[np.ndarray, QuantizedWeight, int, int]) -> None:
    check_all_forms(*case)


@settings(max_examples=60, deadline=None)
@given(lut_cases(act_bits=st.integers(9, 16)))
def test_forms_exact_with_wide_activations(
        case: tuple[np.ndarray, QuantizedWeight, int, int]) -> None:
    check_all_forms(*case)


def test_design_example() -> None:
    # DESIGN.md section 1: weights [3, -2, 5], activations [5, 3, 6], NBW = 3 -> 39. The weights
    # are 4-bit symmetric codes (zero point 8); 4-bit unsigned activations need 5-bit two's
    # complement, whose sign plane is then all zero (pattern 0).
    qw = QuantizedWeight(np.array([[11], [6], [13]], np.uint8), np.ones((1, 1), np.float32),
                         None, 4, 3, 3)
    xq = np.array([[5, 3, 6]])
    tables = sail_tables(qw.q, qw.zero_points(), group_size=3, nbw=3)
    assert tables[0, :, 0].tolist() == [0, 3, -2, 1, 5, 8, 3, 6]
    patterns = activation_patterns(xq, group_size=3, nbw=3, act_bits=5)
    assert patterns[0, 0].tolist() == [3, 6, 5, 0, 0]
    assert sail_sums(xq, qw, nbw=3, act_bits=5)[0, 0, 0] == 39
    assert sail_sums(xq, qw, nbw=3, act_bits=5, unsigned_tables=True)[0, 0, 0] == 39
    assert tmac_sums(xq, qw, nbw=3)[0, 0, 0] == 39
    assert group_sums(xq, qw)[0, 0, 0] == 39


def test_chunks_never_straddle_groups() -> None:
    # g = 3, NBW = 2, K = 5: groups {0, 1, 2} {3, 4, pad}; chunks {0, 1} {2, -} {3, 4} {pad, -}.
    assert chunk_layout(5, 3, 2) == (2, 2, 4)
    assert chunk_layout(50, 20, 8) == (3, 3, 9)
    xq = np.array([[1, 1, 1, 1, 1]])
    patterns = activation_patterns(xq, group_size=3, nbw=2, act_bits=2)
    assert patterns[0, :, 0].tolist() == [3, 1, 3, 0]
    assert patterns[0, :, 1].tolist() == [0, 0, 0, 0]
    # -1 is all ones in two's complement: every plane of a full chunk reads pattern 3.
    patterns = activation_patterns(-xq, group_size=3, nbw=2, act_bits=3)
    assert patterns[0].tolist() == [[3, 3, 3], [1, 1, 1], [3, 3, 3], [0, 0, 0]]
    tables = activation_tables(xq * np.array([1, 2, 3, 4, 5]), group_size=3, nbw=2)
    assert tables[0].tolist() == [[0, 1, 2, 3], [0, 3, 0, 3], [0, 4, 5, 9], [0, 0, 0, 0]]


def test_weight_patterns_are_bit_planes() -> None:
    q = np.array([[5], [3], [6]], np.uint8)  # NBW = 3, one chunk
    widx = weight_patterns(q, group_size=3, nbw=3, bits=3)
    # plane 0: bits 1, 1, 0 -> 3; plane 1: 0, 1, 1 -> 6; plane 2: 1, 0, 1 -> 5
    assert widx[0, :, 0].tolist() == [3, 6, 5]


def small_weight() -> QuantizedWeight:
    return QuantizedWeight(np.full((8, 2), 4, np.uint8), np.ones((2, 2), np.float32), None, 3, 4,
                           7)


@pytest.mark.parametrize("nbw", [0, 9, True, 2.0])
def test_bad_nbw(nbw: object) -> None:
    xq = np.zeros((1, 7), np.int32)
    for call in (lambda: sail_sums(xq, small_weight(), nbw=nbw, act_bits=8),
                 lambda: tmac_sums(xq, small_weight(), nbw=nbw),
                 lambda: chunk_layout(7, 4, nbw)):
        with pytest.raises(OptionError, match=r"NBW .* 1\.\.8"):
            call()


@pytest.mark.parametrize("act_bits", [1, 17])
def test_bad_act_bits(act_bits: int) -> None:
    with pytest.raises(OptionError, match=r"activation bits .* 2\.\.16"):
        sail_sums(np.zeros((1, 7), np.int32), small_weight(), nbw=4, act_bits=act_bits)


@pytest.mark.parametrize("bits", [0, 9])
def test_bad_weight_bits(bits: int) -> None:
    with pytest.raises(OptionError, match=r"weight bits .* 1\.\.8"):
        lut_gemv_tmac(np.zeros((1, 4), np.int32), np.zeros((4, 1), np.uint8),
                      np.zeros((1, 1), np.int32), group_size=4, nbw=2, bits=bits)


@pytest.mark.parametrize("value", [8, -9])
def test_activation_outside_act_bits(value: int) -> None:
    xq = np.zeros((2, 7), np.int32)
    xq[1, 3] = value
    with pytest.raises(ValueError, match=r"1 quantized activations lie outside the 4-bit range "
                                         r"-8\.\.7"):
        sail_sums(xq, small_weight(), nbw=4, act_bits=4)


def test_bad_shapes_and_codes() -> None:
    q, zero, xq = np.full((8, 2), 3), np.full((2, 2), 4), np.zeros((1, 7), np.int64)
    with pytest.raises(ValueError, match="2-D integer"):
        lut_gemv_sail(xq.astype(np.float32), q, zero, group_size=4, nbw=2, act_bits=8)
    with pytest.raises(ValueError, match="not a positive multiple of the group size 3"):
        lut_gemv_sail(xq, q, zero, group_size=3, nbw=2, act_bits=8)
    with pytest.raises(ValueError, match=r"zero points have shape \(1, 2\)"):
        lut_gemv_sail(xq, q, zero[:1], group_size=4, nbw=2, act_bits=8)
    with pytest.raises(ValueError, match="K = 4 columns, but q has 8 rows"):
        lut_gemv_sail(xq[:, :4], q, zero, group_size=4, nbw=2, act_bits=8)
    with pytest.raises(ValueError, match="q holds -1; codes are unsigned"):
        lut_gemv_sail(xq, q - 4, zero, group_size=4, nbw=2, act_bits=8)
    with pytest.raises(ValueError, match="does not fit in 1 bits"):
        lut_gemv_tmac(xq, q, zero, group_size=4, nbw=2, bits=1)
    with pytest.raises(ValueError, match=r"\[T, 7\]"):
        tmac_sums(xq[:, :6], small_weight(), nbw=2)
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        chunk_layout(7, 0, 2)


def test_int32_overflow_is_reported() -> None:
    # 300 * 255 * 32767 > 2**31 - 1: the sums are exact in int64 but do not fit the contract.
    qw = QuantizedWeight(np.full((300, 1), 255, np.uint8), np.ones((1, 1), np.float32),
                         np.zeros((1, 1), np.uint8), 8, 300, 300)
    xq = np.full((1, 300), 32767)
    assert lut_gemv_tmac(xq, qw.q, qw.zero_points(), group_size=300, nbw=8, bits=8)[0, 0, 0] \
        == 300 * 255 * 32767
    with pytest.raises(OptionError, match="beyond int32"):
        sail_sums(xq, qw, nbw=8, act_bits=16)
    with pytest.raises(OptionError, match="beyond int32"):
        tmac_sums(xq, qw, nbw=8)
