"""Bit packing: the documented layout, round trips at every width, sizes and bad inputs."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sail_compiler.errors import OptionError
from sail_compiler.quant.packing import pack_bits, packed_length, unpack_bits

ALL_BITS = list(range(1, 9))


def pack_reference(q: np.ndarray, bits: int) -> np.ndarray:
    """The layout spelled out bit by bit: stream bit k*b + i of column n is bit i of q[k, n]."""
    k, n = q.shape
    packed = np.zeros((-(-k * bits // 8), n), dtype=np.uint8)
    for col in range(n):
        for row in range(k):
            for i in range(bits):
                j = row * bits + i
                packed[j // 8, col] |= ((int(q[row, col]) >> i) & 1) << (j % 8)
    return packed


def random_codes(shape: tuple[int, ...], bits: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1 << bits, shape, dtype=np.uint8)


def test_docstring_worked_example() -> None:
    q = np.array([[5, 7], [3, 0], [6, 2], [1, 4]], dtype=np.uint8)
    packed = pack_bits(q, 3)
    assert packed.dtype == np.uint8
    assert packed.tolist() == [[0x9D, 0x87], [0x03, 0x08]]
    np.testing.assert_array_equal(unpack_bits(packed, 3, 4), q)


def test_four_bits_low_nibble_first_and_eight_bits_identity() -> None:
    assert pack_bits(np.array([[1], [2], [15]], dtype=np.uint8), 4).tolist() == [[0x21], [0x0F]]
    q = random_codes((5, 3), 8)
    np.testing.assert_array_equal(pack_bits(q, 8), q)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (8, 3), (13, 5), (64, 2), (129, 4)])
def test_matches_bitwise_reference_and_round_trips(bits: int, shape: tuple[int, int]) -> None:
    q = random_codes(shape, bits, seed=bits)
    packed = pack_bits(q, bits)
    assert packed.shape == (packed_length(shape[0], bits), shape[1])
    np.testing.assert_array_equal(packed, pack_reference(q, bits))
    np.testing.assert_array_equal(unpack_bits(packed, bits, shape[0]), q)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), bits=st.integers(1, 8), ndim=st.integers(1, 3))
def test_round_trip_any_shape_and_axis(data: st.DataObject, bits: int, ndim: int) -> None:
    shape = data.draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=19))
    q = data.draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, (1 << bits) - 1)))
    axis = data.draw(st.integers(-ndim, ndim - 1))
    packed = pack_bits(q, bits, axis=axis)
    expected = list(shape)
    expected[axis] = packed_length(shape[axis], bits)
    assert packed.shape == tuple(expected)
    assert packed.flags.c_contiguous
    np.testing.assert_array_equal(unpack_bits(packed, bits, shape[axis], axis=axis), q)
    # packing along an axis is packing each line along it: compare with the 2-D form
    moved = np.moveaxis(q, axis, 0).reshape(shape[axis], -1)
    np.testing.assert_array_equal(np.moveaxis(packed, axis, 0).reshape(expected[axis], -1),
                                  pack_bits(moved, bits))


@pytest.mark.parametrize("bits", ALL_BITS)
def test_packed_length_formula(bits: int) -> None:
    for length in [0, 1, 2, 7, 8, 9, 127, 128, 4096, 11008]:
        assert packed_length(length, bits) == (length * bits + 7) // 8
        assert pack_bits(np.zeros((length, 2), np.uint8), bits).shape[0] == (length * bits + 7) // 8
    assert packed_length(8, bits) == bits  # 8 codes fill exactly b bytes


@pytest.mark.parametrize("bits", [1, 3, 5, 6, 7])
def test_unpack_ignores_padding_bits(bits: int) -> None:
    q = random_codes((3, 4), bits)  # 3*b bits: the last byte is partial for these widths
    packed = pack_bits(q, bits)
    used = (3 * bits) % 8
    packed[-1] |= np.uint8((0xFF << used) & 0xFF)
    np.testing.assert_array_equal(unpack_bits(packed, bits, 3), q)


def test_weight_sized_matrix_round_trips() -> None:
    # Speed is measured in benchmarks, not asserted here: this checks a Llama-sized matrix.
    q = random_codes((4096, 11008), 4)
    packed = pack_bits(q, 4)
    assert packed.shape == (2048, 11008)
    np.testing.assert_array_equal(unpack_bits(packed, 4, 4096), q)


@pytest.mark.parametrize("bits", [0, 9, -1, 16, 2.0, True, "4"])
def test_bad_bits_raise_option_error(bits: object) -> None:
    q = np.zeros((4, 2), np.uint8)
    with pytest.raises(OptionError, match=r"1\.\.8"):
        pack_bits(q, bits)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"1\.\.8"):
        unpack_bits(q, bits, 4)  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=r"1\.\.8"):
        packed_length(4, bits)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", ALL_BITS[:-1])
def test_code_out_of_range(bits: int) -> None:
    q = np.zeros((5, 3), np.uint8)
    q[2, 1] = 1 << bits
    with pytest.raises(ValueError, match=rf"does not fit in {bits} bits"):
        pack_bits(q, bits)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint16, np.float32, np.bool_])
def test_wrong_dtype(dtype: type) -> None:
    with pytest.raises(ValueError, match="must be uint8"):
        pack_bits(np.zeros((4, 2), dtype), 4)
    with pytest.raises(ValueError, match="must be uint8"):
        unpack_bits(np.zeros((2, 2), dtype), 4, 4)


def test_other_bad_inputs() -> None:
    with pytest.raises(ValueError, match="0-d"):
        pack_bits(np.uint8(3), 4)
    with pytest.raises(ValueError, match="0-d"):
        unpack_bits(np.uint8(3), 4, 1)
    with pytest.raises(ValueError, match="take 3 bytes"):
        unpack_bits(np.zeros((2, 4), np.uint8), 3, 8)
    with pytest.raises(ValueError, match="take 3 bytes"):
        unpack_bits(np.zeros((4, 4), np.uint8), 3, 8)
    with pytest.raises(ValueError, match="length must be >= 0"):
        unpack_bits(np.zeros((2, 4), np.uint8), 3, -1)
    with pytest.raises(np.exceptions.AxisError):
        pack_bits(np.zeros((4, 2), np.uint8), 4, axis=2)
