"""Pack b-bit unsigned integer codes into bytes, and back: the one bit layout of SAIL weights.

Layout
------
Codes are packed along one axis (for weights ``q[K, N]``: along ``K``, the reduction axis), each
line along that axis independently. The codes of one line form a contiguous **little-endian bit
stream**:

* code ``k`` occupies stream bits ``k*b .. k*b + b - 1``, its least significant bit first;
* stream bit ``j`` is bit ``j % 8`` (bit 0 = least significant) of byte ``j // 8``;
* the stream is padded with zero bits up to a whole byte, so ``length`` codes take
  ``ceil(length * b / 8)`` bytes (:func:`packed_length`).

A weight matrix ``q[K, N]`` therefore becomes ``packed[ceil(K*b/8), N]`` (uint8): column ``n`` of
``packed`` is the bit stream of column ``n`` of ``q``. Codes may straddle byte boundaries when
``b`` does not divide 8 (b = 3, 5, 6, 7); every 8 codes fill exactly ``b`` bytes. For b = 4 this
is "low nibble first", for b = 8 it is the identity.

Worked example (b = 3, K = 4, N = 2)::

    q = [[5, 7],        column 0: 5 | 3<<3 | 6<<6 | 1<<9 = 0x39D -> bytes 0x9D, 0x03
         [3, 0],        column 1: 7 | 0<<3 | 2<<6 | 4<<9 = 0x887 -> bytes 0x87, 0x08
         [6, 2],
         [1, 4]]        packed = [[0x9D, 0x87],
                                  [0x03, 0x08]]     (ceil(4*3/8) = 2 rows)

Stream bits 0..11 of column 0, from bit 0: ``101 110 011 100`` (codes 5, 3, 6, 1, each LSB
first); byte 0 holds bits 0..7 (``10111001`` LSB first = 0x9D), byte 1 holds bits 8..11 and four
zero padding bits (0x03).
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError

#: Valid code widths in bits.
MIN_BITS, MAX_BITS = 1, 8


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate a code width and return it as an ``int``.

    Raises
    ------
    OptionError
        ``bits`` is not an integer in ``1..8``.
    """
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) \
            or not MIN_BITS <= bits <= MAX_BITS:
        raise OptionError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


def packed_length(length: int, bits: int) -> int:
    """Bytes taken by ``length`` codes of ``bits`` bits: ``ceil(length * bits / 8)``."""
    bits = check_bits(bits)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return -(-length * bits // 8)


def _lines_first(a: np.ndarray, axis: int) -> tuple[np.ndarray, tuple[int, ...], int]:
    """``a`` with ``axis`` moved first and the other axes flattened: ``[len(axis), M]``."""
    axis = np.lib.array_utils.normalize_axis_index(axis, a.ndim)
    moved = np.moveaxis(a, axis, 0)
    rest = moved.shape[1:]
    return moved.reshape(moved.shape[0], int(np.prod(rest, dtype=np.int64))), rest, axis


def _lines_back(lines: np.ndarray, rest: tuple[int, ...], axis: int) -> np.ndarray:
    """Inverse of :func:`_lines_first` for an array whose first axis has a new length."""
    return np.ascontiguousarray(np.moveaxis(lines.reshape(lines.shape[0], *rest), 0, axis))


def _overlaps(bits: int) -> list[tuple[int, int, int]]:
    """The (byte j, code i, shift) triples of one 8-code block: code i overlaps byte j of the
    block, and its bit 0 sits at bit ``shift = i*bits - 8*j`` of that byte (negative: below it)."""
    return [(j, i, i * bits - 8 * j) for j in range(bits) for i in range(8)
            if -bits < i * bits - 8 * j < 8]


def pack_bits(q: np.ndarray, bits: int, axis: int = 0) -> np.ndarray:
    """Pack ``bits``-bit codes along ``axis`` into little-endian bit streams (module docstring).

    Parameters
    ----------
    q
        uint8 codes in ``[0, 2**bits - 1]``, any shape with at least one axis; for weights
        ``[K, N]``.
    bits
        Code width, 1..8.
    axis
        The axis the codes are packed along (for weights: 0, the reduction axis K).

    Returns
    -------
    numpy.ndarray
        uint8, the shape of ``q`` with ``axis`` of length ``ceil(q.shape[axis] * bits / 8)``;
        C-contiguous.

    Raises
    ------
    OptionError
        ``bits`` is outside 1..8.
    ValueError
        ``q`` is not uint8, is 0-d, or holds a code above ``2**bits - 1``.
    """
    bits = check_bits(bits)
    q = np.asarray(q)
    if q.dtype != np.uint8:
        raise ValueError(f"codes must be uint8, got {q.dtype}; check the range and cast with "
                         "q.astype(np.uint8)")
    if q.ndim == 0:
        raise ValueError("codes must have at least one axis to pack along, got a 0-d array")
    if q.size and int(q.max()) >= 1 << bits:
        raise ValueError(f"code {int(q.max())} does not fit in {bits} bits "
                         f"(valid codes are 0..{(1 << bits) - 1})")
    lines, rest, axis = _lines_first(q, axis)
    length, m = lines.shape
    # 8 codes of b bits fill exactly b bytes. Pad the line with zero codes to a multiple of 8
    # (the extra bytes are dropped at the end) and build each byte of a block from the codes
    # that overlap it; uint8 shifts drop the bits that belong to the neighbouring bytes.
    n_blocks = -(-length // 8)
    blocks = np.zeros((n_blocks * 8, m), dtype=np.uint8)
    blocks[:length] = lines
    blocks = blocks.reshape(n_blocks, 8, m)
    out = np.zeros((n_blocks, bits, m), dtype=np.uint8)
    for j, i, shift in _overlaps(bits):
        out[:, j] |= blocks[:, i] << shift if shift >= 0 else blocks[:, i] >> -shift
    out = out.reshape(n_blocks * bits, m)[: packed_length(length, bits)]
    return _lines_back(out, rest, axis)


def unpack_bits(packed: np.ndarray, bits: int, length: int, axis: int = 0) -> np.ndarray:
    """Unpack ``length`` codes of ``bits`` bits per line along ``axis``: undoes :func:`pack_bits`.

    Parameters
    ----------
    packed
        uint8 bit streams laid out as :func:`pack_bits` writes them; ``packed.shape[axis]``
        must equal ``ceil(length * bits / 8)``.
    bits
        Code width, 1..8.
    length
        Number of codes per line (for weights: K); needed because the last byte may be partial.
    axis
        The packed axis.

    Returns
    -------
    numpy.ndarray
        uint8 codes in ``[0, 2**bits - 1]``, the shape of ``packed`` with ``axis`` of length
        ``length``; C-contiguous. Padding bits in the last byte are ignored.

    Raises
    ------
    OptionError
        ``bits`` is outside 1..8.
    ValueError
        ``packed`` is not uint8 or is 0-d, ``length`` is negative, or the packed axis does not
        have ``ceil(length * bits / 8)`` bytes.
    """
    bits = check_bits(bits)
    packed = np.asarray(packed)
    if packed.dtype != np.uint8:
        raise ValueError(f"packed codes must be uint8, got {packed.dtype}")
    if packed.ndim == 0:
        raise ValueError("packed codes must have at least one axis, got a 0-d array")
    n_bytes = packed_length(length, bits)
    lines, rest, axis = _lines_first(packed, axis)
    if lines.shape[0] != n_bytes:
        raise ValueError(f"{length} codes of {bits} bits take {n_bytes} bytes along axis {axis}, "
                         f"but the packed array has {lines.shape[0]} (shape {packed.shape})")
    m = lines.shape[1]
    n_blocks = -(-length // 8)
    padded = np.zeros((n_blocks * bits, m), dtype=np.uint8)
    padded[:n_bytes] = lines
    padded = padded.reshape(n_blocks, bits, m)
    out = np.zeros((n_blocks, 8, m), dtype=np.uint8)
    for j, i, shift in _overlaps(bits):
        out[:, i] |= padded[:, j] >> shift if shift >= 0 else padded[:, j] << -shift
    out &= np.uint8((1 << bits) - 1)
    return _lines_back(out.reshape(n_blocks * 8, m)[:length], rest, axis)
