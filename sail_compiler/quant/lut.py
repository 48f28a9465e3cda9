"""The two NumPy reference forms of LUT-GEMV (DESIGN.md sections 1 and 3).

Both forms compute the exact group sums of :func:`.reference.group_sums`,
``S[t, grp, n] = sum_{k in grp} (q[k, n] - z[grp, n]) * xq[t, k]``, with table lookups and
shifts instead of multiplications. Both are exact in int64 for every input they accept; the
targets implement them with narrow integers (the widths are given below).

Chunking (shared by both forms and by :mod:`.patterns`)
--------------------------------------------------------
K is padded to ``K_pad = n_groups * g`` as in :mod:`.reference` (padding rows: ``xq = 0``,
``q = z``). Each group of g rows is cut into ``cpg = ceil(g / NBW)`` **chunks** of NBW rows;
the last chunk of a group is padded to NBW rows with ``xq = 0`` and ``w = q - z = 0``. Chunks
never straddle groups, so every chunk belongs to one group and the group sums stay separable.
Chunk ``c = grp * cpg + cc`` (``cc`` the chunk within its group), ``C = n_groups * cpg``
(:func:`chunk_layout`); row ``j`` of chunk ``c`` is ``k = grp * g + cc * NBW + j``.

SAIL form (:func:`lut_gemv_sail`): weight tables, activation bit-plane indices
-------------------------------------------------------------------------------
* Table ``LUT[c, p, n] = sum_{j : bit j of p} w[c, j, n]`` with ``w = q - z`` (signed tables),
  ``2**NBW`` entries per chunk and column (:func:`sail_tables`). ``|entry| <= NBW * (2**b - 1)
  <= 2040``: int16 holds it.
* Activations are read as ``b_a``-bit two's complement: ``u = xq & (2**b_a - 1)``, so
  ``xq = sum_{i < b_a-1} bit_i(u) 2**i - bit_{b_a-1}(u) 2**(b_a-1)``.
* Index ("pattern") of bit plane ``i`` (LSB first): ``p[t, c, i] = sum_j bit_i(u[t, c, j]) << j``
  (:func:`activation_patterns`). It does not depend on n: one table row serves every column.
* ``S = sum_{c in grp} ( sum_{i < b_a-1} LUT[c, p_i] << i  -  LUT[c, p_{b_a-1}] << (b_a-1) )``:
  the sign plane is subtracted.
* ``unsigned_tables=True``: tables of the raw codes q (entries in ``[0, NBW * (2**b - 1)]``),
  and the zero point enters once per token and group as ``- z[grp, n] * sum_{k in grp} xq[t, k]``.

CPU / T-MAC form (:func:`lut_gemv_tmac`): activation tables, weight bit-plane indices
--------------------------------------------------------------------------------------
* Table ``A[t, c, p] = sum_{j : bit j of p} xq[t, c, j]`` (:func:`activation_tables`).
  ``|entry| <= NBW * 2**(b_a-1)``: int16 holds it while that is at most ``2**15``.
* Weights are unsigned codes ``q = sum_{i < b} bit_i(q) 2**i``; the index of weight bit plane
  ``i`` is ``widx[c, i, n] = sum_j bit_i(q[c, j, n]) << j`` (:func:`weight_patterns`), known
  offline: it is the bit-plane weight layout of the C runtime.
* ``S = sum_{c in grp} sum_{i < b} A[t, c, widx_i] << i  -  z[grp, n] * sum_{k in grp} xq[t, k]``,
  where the activation sum is the all-ones entries: ``sum_{c in grp} A[t, c, 2**NBW - 1]``.
  Padding rows have ``xq = 0``, so their code bits never contribute. Symmetric weights are the
  same formula with ``z = 2**(b-1)``.

Widths accepted: NBW 1..8 (:func:`check_nbw`), weight bits 1..8, activation bits 2..16 (the same
range as :func:`.reference.quantize_activations`; both forms are exact over all of it).
Activations may use the whole two's-complement range ``[-2**(b_a-1), 2**(b_a-1) - 1]``, one
more negative value than the quantizer produces.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from ..errors import OptionError
from .packing import check_bits
from .reference import QuantizedWeight, check_act_bits

#: Valid NBW (weights per table, so 2**NBW entries per table).
MIN_NBW, MAX_NBW = 1, 8
_INT32_MAX = np.iinfo(np.int32).max


class ChunkLayout(NamedTuple):
    """How K is cut into chunks of NBW rows (see the module docstring)."""

    n_groups: int
    """``ceil(K / g)``."""
    chunks_per_group: int
    """``cpg = ceil(g / NBW)``."""
    n_chunks: int
    """``C = n_groups * cpg``."""


def check_nbw(nbw: int) -> int:
    """Validate NBW (weights per lookup table) and return it as an ``int``.

    Raises
    ------
    OptionError
        ``nbw`` is not an integer in 1..8.
    """
    if isinstance(nbw, bool) or not isinstance(nbw, int | np.integer) \
            or not MIN_NBW <= nbw <= MAX_NBW:
        raise OptionError(f"NBW (weights per lookup table) must be an integer in "
                          f"{MIN_NBW}..{MAX_NBW}, got {nbw!r}")
    return int(nbw)


def _check_positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def chunk_layout(k: int, group_size: int, nbw: int) -> ChunkLayout:
    """Groups, chunks per group and chunks of a K-row reduction in groups of ``group_size``.

    Raises
    ------
    ValueError
        ``k`` or ``group_size`` is not a positive integer.
    OptionError
        ``nbw`` is outside 1..8.
    """
    nbw = check_nbw(nbw)
    k, group_size = _check_positive(k, "k"), _check_positive(group_size, "group_size")
    n_groups, cpg = -(-k // group_size), -(-group_size // nbw)
    return ChunkLayout(n_groups, cpg, n_groups * cpg)


def _integer_array(a: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """``a`` as an int64 array of ``ndim`` dimensions, or ValueError."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer) or a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D integer array, got {a.ndim}-D {a.dtype}")
    return a.astype(np.int64)


def _check_activations(xq: np.ndarray, act_bits: int | None) -> np.ndarray:
    """``xq`` as int64 ``[T, K]``, K >= 1, checked to fit ``act_bits``-bit two's complement."""
    x = _integer_array(xq, "quantized activations", 2)
    if x.shape[1] < 1:
        raise ValueError(f"quantized activations must have K >= 1 columns, got shape {x.shape}")
    if act_bits is not None and x.size:
        lo, hi = -(1 << (act_bits - 1)), (1 << (act_bits - 1)) - 1
        bad = (x < lo) | (x > hi)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} quantized activations lie outside the "
                             f"{act_bits}-bit range {lo}..{hi} (min {int(x.min())}, max "
                             f"{int(x.max())}); quantize with the same activation bits")
    return x


def _to_chunks(a: np.ndarray, group_size: int, layout: ChunkLayout, nbw: int) -> np.ndarray:
    """int64 ``a[K, ...]`` (K <= K_pad) as ``[C, NBW, ...]``: zero-padded to K_pad, then each
    group zero-padded from ``group_size`` to ``cpg * NBW`` rows."""
    rest = a.shape[1:]
    padded = np.zeros((layout.n_groups * group_size, *rest), np.int64)
    padded[: a.shape[0]] = a
    out = np.zeros((layout.n_groups, layout.chunks_per_group * nbw, *rest), np.int64)
    out[:, :group_size] = padded.reshape(layout.n_groups, group_size, *rest)
    return out.reshape(layout.n_chunks, nbw, *rest)


def _plane_indices(codes: np.ndarray, n_planes: int) -> np.ndarray:
    """int64 ``codes[..., NBW]`` -> ``[..., n_planes]``: ``sum_j bit_i(codes[..., j]) << j``."""
    planes = (codes[..., None] >> np.arange(n_planes)) & 1
    return np.einsum("...ji,j->...i", planes, 1 << np.arange(codes.shape[-1], dtype=np.int64))


def _subset_matrix(nbw: int) -> np.ndarray:
    """int64 ``M[p, j]`` = bit j of p, so table entry ``p = sum_j M[p, j] * v[j]``."""
    return (np.arange(1 << nbw)[:, None] >> np.arange(nbw)[None, :]) & 1


def activation_patterns(xq: np.ndarray, *, group_size: int, nbw: int,
                        act_bits: int) -> np.ndarray:
    """The SAIL-form index of every lookup.

    Parameters
    ----------
    xq
        Integer ``[T, K]`` quantized activations in ``[-2**(b_a-1), 2**(b_a-1) - 1]``.
    group_size, nbw, act_bits
        g, NBW (1..8) and b_a (2..16).

    Returns
    -------
    numpy.ndarray
        int32 ``[T, C, b_a]``: ``p[t, c, i] = sum_j bit_i(u[t, c, j]) << j`` with the
        two's-complement code ``u = xq & (2**b_a - 1)``, bit planes ``i`` LSB first (the last is
        the sign plane), chunks as in :func:`chunk_layout`; padding rows are 0.

    Raises
    ------
    OptionError
        ``nbw`` or ``act_bits`` is out of range.
    ValueError
        ``xq`` is not a 2-D integer array, or holds values outside the ``act_bits`` range.
    """
    act_bits = check_act_bits(act_bits)
    x = _check_activations(xq, act_bits)
    layout = chunk_layout(x.shape[1], group_size, nbw)
    u = _to_chunks(x.T, group_size, layout, nbw) & ((1 << act_bits) - 1)    # [C, NBW, T]
    return _plane_indices(u.transpose(2, 0, 1), act_bits).astype(np.int32)



def activation_tables(xq: np.ndarray, *, group_size: int, nbw: int) -> np.ndarray:
    """T-MAC-form tables ``A[t, c, p] = sum_{j : bit j of p} xq[t, c, j]``.

    Parameters
    ----------
    xq
        Integer ``[T, K]`` quantized activations.
    group_size, nbw
        g and NBW (1..8).

    Returns
    -------
    numpy.ndarray
        int64 ``[T, C, 2**NBW]``.

    Raises
    ------
    OptionError
        ``nbw`` is outside 1..8.
    ValueError
        ``xq`` is not a 2-D integer array with K >= 1.
    """
    x = _check_activations(xq, None)
    layout = chunk_layout(x.shape[1], group_size, nbw)
    x_c = _to_chunks(x.T, group_size, layout, nbw)                             # [C, NBW, T]
    return np.einsum("pj,cjt->tcp", _subset_matrix(nbw), x_c)


def _check_weights(q: np.ndarray, zero: np.ndarray | None, group_size: int,
                   bits: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """int64 codes ``q[K_pad, N]`` (in ``[0, 2**bits - 1]`` if ``bits``) and ``zero[G, N]``."""
    group_size = _check_positive(group_size, "group_size")
    q = _integer_array(q, "weight codes q", 2)
    problems = []
    if q.shape[0] < 1 or q.shape[0] % group_size:
        problems.append(f"q has {q.shape[0]} rows, not a positive multiple of the group size "
                        f"{group_size}")
    elif zero is not None:
        zero = _integer_array(zero, "zero points", 2)
        if zero.shape != (q.shape[0] // group_size, q.shape[1]):
            problems.append(f"zero points have shape {zero.shape}, expected "
                            f"{(q.shape[0] // group_size, q.shape[1])} for q {q.shape}")
    if q.size and q.min() < 0:
        problems.append(f"q holds {int(q.min())}; codes are unsigned")
    if bits is not None and q.size and q.max() >= 1 << bits:
        problems.append(f"q holds {int(q.max())}, which does not fit in {bits} bits")
    if problems:
        raise ValueError("invalid LUT-GEMV weights: " + "; ".join(problems))
    return q, zero


def _check_operands(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, group_size: int,
                    bits: int | None, act_bits: int | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int64 ``xq[T, K]``, ``q[K_pad, N]`` and ``zero[G, N]`` of one LUT-GEMV, checked."""
    q, zero = _check_weights(q, zero, group_size, bits)
    x = _check_activations(xq, act_bits)
    if not q.shape[0] - group_size < x.shape[1] <= q.shape[0]:
        raise ValueError(f"quantized activations have K = {x.shape[1]} columns, but q has "
                         f"{q.shape[0]} rows: K_pad must be ceil(K / {group_size}) * {group_size}")
    return x, q, zero


def _chunked_weights(q: np.ndarray, zero: np.ndarray | None, group_size: int,
                     nbw: int) -> np.ndarray:
    """int64 ``[C, NBW, N]`` of ``q - z``, or of ``q`` if ``zero`` is None; padding rows 0."""
    layout = chunk_layout(q.shape[0], group_size, nbw)
    if zero is not None:
        q = q - np.repeat(zero, group_size, axis=0)
    return _to_chunks(q, group_size, layout, nbw)


def sail_tables(q: np.ndarray, zero: np.ndarray, *, group_size: int, nbw: int,
                unsigned_tables: bool = False) -> np.ndarray:
    """SAIL-form tables ``LUT[c, p, n] = sum_{j : bit j of p} w[c, j, n]``.

    Parameters
    ----------
    q
        Integer ``[K_pad, N]`` unsigned weight codes, ``K_pad`` a multiple of ``group_size``.
    zero
        Integer ``[K_pad / g, N]`` zero points (``QuantizedWeight.zero_points()``).
    group_size, nbw
        g and NBW (1..8).
    unsigned_tables
        Tabulate ``w = q`` instead of the signed ``w = q - z``.

    Returns
    -------
    numpy.ndarray
        int32 ``[C, 2**NBW, N]`` (entries fit int16 for codes of up to 8 bits).

    Raises
    ------
    OptionError
        ``nbw`` is outside 1..8.
    ValueError
        The shapes disagree, or a code is negative.
    """
    q, zero = _check_weights(q, zero, group_size, None)
    nbw = check_nbw(nbw)
    w_c = _chunked_weights(q, None if unsigned_tables else zero, group_size, nbw)
    return np.einsum("pj,cjn->cpn", _subset_matrix(nbw), w_c).astype(np.int32)


def weight_patterns(q: np.ndarray, *, group_size: int, nbw: int, bits: int) -> np.ndarray:
    """T-MAC-form indices ``widx[c, i, n] = sum_j bit_i(q[c, j, n]) << j`` (weight bit planes).

    Parameters
    ----------
    q
        Integer ``[K_pad, N]`` codes in ``[0, 2**bits - 1]``, ``K_pad`` a multiple of g.
    group_size, nbw, bits
        g, NBW (1..8) and the code width b (1..8).

    Returns
    -------
    numpy.ndarray
        int32 ``[C, b, N]``, bit planes LSB first; chunk padding rows contribute 0 bits.

    Raises
    ------
    OptionError
        ``nbw`` or ``bits`` is outside 1..8.
    ValueError
        ``q`` is not 2-D integers, its rows are not a multiple of g, or a code does not fit.
    """
    bits, nbw = check_bits(bits, "weight bits"), check_nbw(nbw)
    q, _ = _check_weights(q, None, group_size, bits)
    q_c = _chunked_weights(q, None, group_size, nbw)                          # [C, NBW, N]
    return _plane_indices(q_c.transpose(0, 2, 1), bits).transpose(0, 2, 1).astype(np.int32)


def _plane_weights(n_planes: int, sign_plane: bool) -> np.ndarray:
    """int64 ``2**i`` for ``i < n_planes``, the last negated for a two's-complement sign plane."""
    weight = np.int64(1) << np.arange(n_planes, dtype=np.int64)
    if sign_plane:
        weight[-1] = -weight[-1]
    return weight


def _shift_add(looked: Iterator[np.ndarray], weight: np.ndarray) -> np.ndarray:
    """int64 ``[T, G, N]``: ``sum_i weight[i] * rows[t, g, i, n]`` summed over the ``rows``
    ``[T, G, planes, N]`` that ``looked`` yields, one per chunk position in the groups."""
    return sum(np.einsum("tgin,i->tgn", rows, weight) for rows in looked)


def _group_activation_sums(x: np.ndarray, k_pad: int, group_size: int) -> np.ndarray:
    """int64 ``[T, G]``: ``sum_{k in grp} xq[t, k]`` (padding rows are 0)."""
    padded = np.zeros((x.shape[0], k_pad), np.int64)
    padded[:, : x.shape[1]] = x
    return padded.reshape(x.shape[0], k_pad // group_size, group_size).sum(axis=2)


def lut_gemv_sail(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, *, group_size: int,
                  nbw: int, act_bits: int, unsigned_tables: bool = False) -> np.ndarray:
    """Group sums by the SAIL form: weight tables indexed by activation bit planes.

    Parameters
    ----------
    xq
        Integer ``[T, K]`` quantized activations in ``[-2**(b_a-1), 2**(b_a-1) - 1]``.
    q
        Integer ``[K_pad, N]`` unsigned weight codes, ``K_pad = ceil(K / g) * g``.
    zero
        Integer ``[K_pad / g, N]`` zero points (``2**(b-1)`` for symmetric weights).
    group_size, nbw, act_bits
        g, NBW (1..8) and b_a (2..16; exact over the whole range).
    unsigned_tables
        Tabulate the raw codes and subtract ``z * sum_{k in grp} xq`` once per token and group
        (see the module docstring); the result is the same.

    Returns
    -------
    numpy.ndarray
        int64 ``[T, K_pad / g, N]``, equal to :func:`.reference.group_sums`.

    Raises
    ------
    OptionError
        ``nbw`` or ``act_bits`` is out of range.
    ValueError
        The shapes disagree, a code is negative, or an activation does not fit ``act_bits``.
    """
    act_bits = check_act_bits(act_bits)
    x, q, zero = _check_operands(xq, q, zero, group_size, None, act_bits)
    patterns = activation_patterns(x, group_size=group_size, nbw=nbw, act_bits=act_bits)
    w_c = _chunked_weights(q, None if unsigned_tables else zero, group_size, nbw)
    n_groups = zero.shape[0]
    cpg = w_c.shape[0] // n_groups
    grp = np.arange(n_groups)[:, None]
    # One chunk position of every group at a time: [G, 2**NBW, N] tables instead of [C, ...].
    tables = (np.einsum("pj,gjn->gpn", _subset_matrix(nbw), w_c[cc::cpg]) for cc in range(cpg))
    sums = _shift_add((t[grp, patterns[:, cc::cpg]] for cc, t in enumerate(tables)),
                      _plane_weights(act_bits, sign_plane=True))
    if unsigned_tables:
        sums -= zero[None] * _group_activation_sums(x, q.shape[0], group_size)[:, :, None]
    return sums


def lut_gemv_tmac(xq: np.ndarray, q: np.ndarray, zero: np.ndarray, *, group_size: int,
                  nbw: int, bits: int) -> np.ndarray:
    """Group sums by the CPU / T-MAC form: activation tables indexed by weight bit planes.

    Parameters
    ----------
    xq
        Integer ``[T, K]`` quantized activations (any values whose sums fit int64).
    q
        Integer ``[K_pad, N]`` weight codes in ``[0, 2**bits - 1]``, ``K_pad = ceil(K / g) * g``.
    zero
        Integer ``[K_pad / g, N]`` zero points (``2**(b-1)`` for symmetric weights).
    group_size, nbw, bits
        g, NBW (1..8) and the code width b (1..8).

    Returns
    -------
    numpy.ndarray
        int64 ``[T, K_pad / g, N]``, equal to :func:`.reference.group_sums`.

    Raises
    ------
    OptionError
        ``nbw`` or ``bits`` is outside 1..8.
    ValueError
        The shapes disagree, or a code does not fit in ``bits``.
    """
    bits = check_bits(bits, "weight bits")
    x, q, zero = _check_operands(xq, q, zero, group_size, bits, None)
    tables = activation_tables(x, group_size=group_size, nbw=nbw)            # [T, C, 2**NBW]
    widx = weight_patterns(q, group_size=group_size, nbw=nbw, bits=bits)      # [C, b, N]
    n_groups = zero.shape[0]
    cpg = widx.shape[0] // n_groups
    grp = np.arange(n_groups)[:, None, None]
    sums = _shift_add((tables[:, cc::cpg][:, grp, widx[cc::cpg]] for cc in range(cpg)),
                      _plane_weights(bits, sign_plane=False))
    act_sums = tables[:, :, -1].reshape(x.shape[0], n_groups, cpg).sum(axis=2)  # all-ones entry
    return sums - zero[None] * act_sums[:, :, None]


def _int32_sums(sums: np.ndarray, group_size: int) -> np.ndarray:
    if sums.size and int(np.abs(sums).max()) > _INT32_MAX:
        raise OptionError(f"a group sum reaches {int(np.abs(sums).max())}, beyond int32; use a "
                          f"smaller group size than {group_size} or fewer activation bits")
    return sums.astype(np.int32)


def _check_xq_for(xq: np.ndarray, qw: QuantizedWeight) -> None:
    xq = np.asarray(xq)
    if not np.issubdtype(xq.dtype, np.integer) or xq.ndim != 2 or xq.shape[1] != qw.k:
        raise ValueError(f"quantized activations must be 2-D integers [T, {qw.k}], got "
                         f"{xq.dtype} {xq.shape}")


def sail_sums(xq: np.ndarray, qw: QuantizedWeight, *, nbw: int, act_bits: int,
              unsigned_tables: bool = False) -> np.ndarray:
    """:func:`lut_gemv_sail` on a :class:`.reference.QuantizedWeight`.

    Returns
    -------
    numpy.ndarray
        int32 ``[T, n_groups, N]``, equal to :func:`.reference.group_sums` ``(xq, qw)``.

    Raises
    ------
    ValueError
        ``xq`` is not 2-D integers ``[T, qw.k]`` or does not fit ``act_bits``.
    OptionError
        ``nbw`` or ``act_bits`` is out of range, or a sum does not fit int32.
    """
    _check_xq_for(xq, qw)
    sums = lut_gemv_sail(xq, qw.q, qw.zero_points(), group_size=qw.group_size, nbw=nbw,
                         act_bits=act_bits, unsigned_tables=unsigned_tables)
    return _int32_sums(sums, qw.group_size)


def tmac_sums(xq: np.ndarray, qw: QuantizedWeight, *, nbw: int) -> np.ndarray:
    """:func:`lut_gemv_tmac` on a :class:`.reference.QuantizedWeight`.

    Returns
    -------
    numpy.ndarray
        int32 ``[T, n_groups, N]``, equal to :func:`.reference.group_sums` ``(xq, qw)``.

    Raises
    ------
    ValueError
        ``xq`` is not 2-D integers ``[T, qw.k]``.
    OptionError
        ``nbw`` is outside 1..8, or a sum does not fit int32.
    """
    _check_xq_for(xq, qw)
    sums = lut_gemv_tmac(xq, qw.q, qw.zero_points(), group_size=qw.group_size, nbw=nbw,
                         bits=qw.bits)
    return _int32_sums(sums, qw.group_size)
