"""Pattern reuse in SAIL's LUT-GEMV: how many table reads a batch needs (no TVM).

SAIL (DESIGN.md section 1) keeps a small pattern reuse table in each data-feeding module: a
lookup whose pattern was read recently reuses that read and skips the SRAM access. This module
counts how many lookups such tables, and an unbounded one, would save on given activations, and
builds the deduplicated lookup schedule. Definitions (SAIL form, chunking as in :mod:`.lut`):

* **table**: one chunk ``c`` (NBW consecutive rows of K inside one group). It serves all N
  output columns, so nothing here depends on N.
* **lookup**: one (token ``t``, chunk ``c``, bit plane ``i``) triple, ``i = 0 .. b_a-1`` LSB
  first. Its **pattern** is ``p = patterns[t, c, i]`` (:func:`.lut.activation_patterns`, from
  the two's-complement code ``xq & (2**b_a - 1)``). A **call** (one layer invocation on a batch
  of B tokens) makes ``B * C * b_a`` lookups.
* **ideal**: an unbounded reuse table per call. A lookup is saved iff its key ``(c, p)``
  occurred earlier in the same call, so ``ideal_saved = lookups - distinct``, with ``distinct``
  the number of distinct keys. This is exactly the deduplicated schedule of
  :func:`lookup_schedule`: every distinct ``(c, p)`` is read once and fanned out to its
  ``(t, i)`` consumers. Each chunk has at most ``2**NBW`` patterns, so
  ``ideal_saved / lookups >= 1 - 2**NBW / (B * b_a)`` (the pigeonhole bound,
  :func:`pigeonhole_bound`): at large B the ideal figure is mostly this arithmetic, so report
  both.
* **stream**: one data-feeding module. It owns ``chunks_per_stream`` consecutive chunks (the
  last stream may own fewer) and issues its lookups in the order ``for t: for i: for c``. Its
  reuse table (:class:`ReuseConfig`) holds ``size`` entries keyed by ``(c, p)`` and is empty at
  the start of every call. ``ways=None`` makes it fully associative with LRU replacement;
  ``ways=w`` makes it ``size / w`` sets of ``w`` LRU entries, the set chosen by a hash of
  ``(c, p)``: ``"mod"`` is ``(c * 2**NBW + p) % sets``, ``"xor"`` is
  ``(p ^ ((c * 0x9E3779B1) >> 7)) % sets`` (the chunk id scrambled by Knuth's multiplicative
  constant, the product not reduced mod 2**32, then folded onto the pattern bits). A stream
  of a single chunk would make a 32-entry table as good as the ideal (NBW = 4 has only 16
  patterns), so streams must span several chunks for ``size`` to matter. A table hit is a
  repeated key of the same call, so ``table_saved <= ideal_saved``, with equality when the
  table is fully associative and holds every distinct key of its stream.
* **zero patterns** (``p = 0``) read entry 0, which is always 0, so they need no read at all.
  They are counted separately (``zero``) and, when repeated, also inside the saved counts.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

from ..errors import OptionError, valid_choices
from .lut import activation_patterns, check_nbw, chunk_layout

#: Set-index hashes of a set-associative reuse table (see the module docstring).
HASHES = ("mod", "xor")
_XOR_MIX = 0x9E3779B1  # Knuth's multiplicative hash: the prime nearest 2**32 / golden ratio


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ReuseConfig:
    """The pattern reuse table of one data-feeding module.

    Attributes
    ----------
    size
        Entries per table. 32 is the paper's figure (DESIGN.md section 1).
    ways
        None for a fully associative LRU table, else the entries per set (a divisor of
        ``size``; 1 is direct-mapped).
    hash
        Set index of a set-associative table: ``"mod"`` or ``"xor"`` (module docstring).
    chunks_per_stream
        Consecutive chunks each module owns. 8 is our assumption (the paper gives no figure).

    Raises
    ------
    OptionError
        On construction, listing every invalid field and its valid values.
    """

    size: int = 32
    ways: int | None = None
    hash: str = "mod"
    chunks_per_stream: int = 8

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.size) or self.size < 1:
            problems.append(f"size must be a positive integer, got {self.size!r}")
        elif self.ways is not None and (not _is_int(self.ways) or self.ways < 1
                                        or self.size % self.ways):
            divisors = [d for d in range(1, self.size + 1) if self.size % d == 0]
            problems.append(f"ways must be None (fully associative) or a divisor of size "
                            f"{self.size} ({', '.join(map(str, divisors))}), got {self.ways!r}")
        if self.hash not in HASHES:
            problems.append(f"hash {self.hash!r} is unknown; {valid_choices(HASHES)}")
        if not _is_int(self.chunks_per_stream) or self.chunks_per_stream < 1:
            problems.append(f"chunks_per_stream must be a positive integer, got "
                            f"{self.chunks_per_stream!r}")
        if problems:
            raise OptionError("invalid reuse table: " + "; ".join(problems))

    @property
    def sets(self) -> int:
        """Number of sets (1 when fully associative)."""
        return 1 if self.ways is None else self.size // self.ways

    @property
    def entries_per_set(self) -> int:
        """LRU entries in each set (``size`` when fully associative)."""
        return self.size if self.ways is None else self.ways


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


@dataclasses.dataclass(frozen=True)
class ReuseCounts:
    """Lookup counts of one call, or (added with ``+``) of several.

    Attributes
    ----------
    lookups
        ``B * C * b_a`` per call.
    distinct
        Distinct ``(c, p)`` keys per call, summed over calls: the reads of the ideal schedule.
    zero
        Lookups of pattern 0.
    table_saved
        Lookups served by the streams' reuse tables.
    """

    lookups: int
    distinct: int
    zero: int
    table_saved: int

    @property
    def ideal_saved(self) -> int:
        """Lookups an unbounded table per call saves: ``lookups - distinct``."""
        return self.lookups - self.distinct

    @property
    def zero_fraction(self) -> float:
        """``zero / lookups`` (0 without lookups)."""
        return _fraction(self.zero, self.lookups)

    @property
    def ideal_saved_fraction(self) -> float:
        """``ideal_saved / lookups`` (0 without lookups)."""
        return _fraction(self.ideal_saved, self.lookups)

    @property
    def table_saved_fraction(self) -> float:
        """``table_saved / lookups`` (0 without lookups)."""
        return _fraction(self.table_saved, self.lookups)

    def __add__(self, other: ReuseCounts) -> ReuseCounts:
        return ReuseCounts(*(getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)))


def _check_patterns(patterns: np.ndarray, nbw: int | None) -> np.ndarray:
    """``patterns`` as int64 ``[B, C, b_a]``, non-empty, in ``[0, 2**nbw)`` (``[0, inf)``)."""
    pat = np.asarray(patterns)
    if not np.issubdtype(pat.dtype, np.integer) or pat.ndim != 3 or pat.size == 0:
        raise ValueError(f"patterns must be a non-empty 3-D integer array [B, C, b_a], got "
                         f"{pat.dtype} {pat.shape}")
    limit = "" if nbw is None else f"..{(1 << nbw) - 1} for NBW = {nbw}"
    if pat.min() < 0 or (nbw is not None and pat.max() >= 1 << nbw):
        raise ValueError(f"patterns must lie in 0{limit}, got {int(pat.min())}..{int(pat.max())}")
    return pat.astype(np.int64)


def _issue_order(a: np.ndarray, chunks_per_stream: int) -> list[list[int]]:
    """``a[B, C, b_a]`` as one list per stream, in the order ``for t: for i: for c``."""
    b, c_total, b_a = a.shape
    streams = []
    n_full = c_total // chunks_per_stream * chunks_per_stream
    for start, stop, width in ((0, n_full, chunks_per_stream),
                               (n_full, c_total, c_total - n_full)):
        if stop > start:
            part = a[:, start:stop].reshape(b, (stop - start) // width, width, b_a)
            streams += part.transpose(1, 0, 3, 2).reshape((stop - start) // width, -1).tolist()
    return streams


def _lru_hits(keys: list[int], set_ids: list[int], n_sets: int, entries: int) -> int:
    """Hits of ``n_sets`` LRU sets of ``entries`` each, empty at first, on an access sequence."""
    tables: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(n_sets)]
    hits = 0
    for key, set_id in zip(keys, set_ids, strict=True):
        table = tables[set_id]
        if key in table:
            hits += 1
            table.move_to_end(key)
        else:
            table[key] = None
            if len(table) > entries:
                table.popitem(last=False)
    return hits


def count_reuse(patterns: np.ndarray, nbw: int, config: ReuseConfig | None = None) -> ReuseCounts:
    """Count the lookups of one call that the ideal and the streams' reuse tables save.

    Parameters
    ----------
    patterns
        Integer ``[B, C, b_a]`` pattern of every lookup of the call, in ``[0, 2**nbw)``
        (:func:`.lut.activation_patterns`).
    nbw
        NBW (1..8): patterns are NBW-bit; the ``"mod"`` hash depends on it.
    config
        The reuse table of every stream; ``ReuseConfig()`` (32 entries, fully associative LRU,
        8 chunks per stream) if None.

    Returns
    -------
    ReuseCounts
        Lookups, distinct keys, zero patterns and table hits of the call.

    Raises
    ------
    OptionError
        ``nbw`` is outside 1..8.
    ValueError
        ``patterns`` is not 3-D integers in ``[0, 2**nbw)``.
    """
    nbw = check_nbw(nbw)
    config = ReuseConfig() if config is None else config
    pat = _check_patterns(patterns, nbw)
    chunk = np.arange(pat.shape[1], dtype=np.int64)[None, :, None]
    seen = np.zeros((pat.shape[1], 1 << nbw), bool)
    seen[chunk, pat] = True
    keys = (chunk << nbw) | pat
    if config.sets == 1:
        set_ids = np.zeros_like(keys)
    elif config.hash == "mod":
        set_ids = keys % config.sets
    else:
        set_ids = (pat ^ ((chunk * _XOR_MIX) >> 7)) % config.sets
    streams = zip(_issue_order(keys, config.chunks_per_stream),
                  _issue_order(set_ids, config.chunks_per_stream), strict=True)
    hits = sum(_lru_hits(k, s, config.sets, config.entries_per_set) for k, s in streams)
    return ReuseCounts(lookups=int(pat.size), distinct=int(seen.sum()),
                       zero=int(np.count_nonzero(pat == 0)), table_saved=hits)


def pigeonhole_bound(batch: int, nbw: int, act_bits: int) -> float:
    """Lower bound of the ideal saved fraction: ``max(0, 1 - 2**nbw / (batch * act_bits))``.

    A call makes ``batch * act_bits`` lookups per chunk but a chunk has only ``2**nbw``
    patterns, so at most that many of them are distinct.
    """
    lookups_per_chunk = batch * act_bits
    # One correctly rounded division, so comparing it with another fraction is exact.
    return max(0.0, (lookups_per_chunk - (1 << nbw)) / lookups_per_chunk)


@dataclasses.dataclass(frozen=True, eq=False)
class LookupSchedule:
    """The deduplicated lookups of one call: each distinct ``(c, p)`` read once, then fanned out.

    Attributes
    ----------
    read_chunk
        int64 ``[R]``: the chunk (table) of every read, ascending.
    read_pattern
        int64 ``[R]``: the pattern (table row) of every read; within a chunk, in order of first
        use (``(t, i)`` lexicographic, the streams' issue order).
    source
        int64 ``[B, C, b_a]``: for lookup ``(t, c, i)``, the read it takes its value from, so
        ``read_chunk[source[t, c, i]] == c`` and ``read_pattern[source[t, c, i]]`` is its pattern.
    """

    read_chunk: np.ndarray
    read_pattern: np.ndarray
    source: np.ndarray

    @property
    def reads(self) -> int:
        """R, the table reads: the distinct keys, ``lookups - ideal_saved``."""
        return int(self.read_chunk.size)

    @property
    def lookups(self) -> int:
        """``B * C * b_a``, the lookups the reads serve."""
        return int(self.source.size)

    @property
    def n_chunks(self) -> int:
        """C, the number of tables."""
        return self.source.shape[1]

    def chunk_reads(self, chunk: int) -> np.ndarray:
        """int64: the patterns read from table ``chunk``, in order of first use."""
        lo, hi = np.searchsorted(self.read_chunk, [chunk, chunk + 1])
        return self.read_pattern[lo:hi]

    def apply(self, tables: np.ndarray, *, chunks_per_group: int) -> np.ndarray:
        """Group sums from the deduplicated reads of SAIL weight tables.

        Every read fetches one table row ``tables[c, p, :]`` once; each lookup ``(t, c, i)``
        takes its read's row, shifted by ``i`` (the last bit plane, the sign plane, subtracted),
        and the rows are summed over the chunks of each group.

        Parameters
        ----------
        tables
            Integer ``[C, P, N]`` with ``P`` larger than every pattern: the signed tables of
            :func:`.lut.sail_tables`, with which the result equals :func:`.lut.lut_gemv_sail`.
        chunks_per_group
            cpg of :func:`.lut.chunk_layout`; C must be a multiple of it.

        Returns
        -------
        numpy.ndarray
            int64 ``[B, C / cpg, N]``.

        Raises
        ------
        ValueError
            ``tables`` does not match the schedule, or C is not a multiple of cpg.
        """
        tables = np.asarray(tables)
        b, c_total, b_a = self.source.shape
        if not np.issubdtype(tables.dtype, np.integer) or tables.ndim != 3 \
                or tables.shape[0] != c_total \
                or (self.reads and tables.shape[1] <= int(self.read_pattern.max())):
            raise ValueError(f"tables must be 3-D integers [{c_total}, P > max pattern, N], got "
                             f"{tables.dtype} {tables.shape}")
        if not _is_int(chunks_per_group) or chunks_per_group < 1 \
                or c_total % chunks_per_group:
            raise ValueError(f"chunks_per_group must divide the {c_total} chunks, got "
                             f"{chunks_per_group!r}")
        rows = tables[self.read_chunk, self.read_pattern].astype(np.int64)   # [R, N], one read each
        weight = np.int64(1) << np.arange(b_a, dtype=np.int64)
        weight[-1] = -weight[-1]
        sums = np.zeros((b, c_total, tables.shape[2]), np.int64)
        for i in range(b_a):
            sums += weight[i] * rows[self.source[:, :, i]]
        return sums.reshape(b, c_total // chunks_per_group, chunks_per_group, -1).sum(axis=2)


def lookup_schedule(patterns: np.ndarray) -> LookupSchedule:
    """The deduplicated lookup schedule of one call.

    Parameters
    ----------
    patterns
        Non-negative integer ``[B, C, b_a]`` pattern of every lookup.

    Returns
    -------
    LookupSchedule
        One read per distinct ``(c, p)`` (chunk-major, first use first) and the fan-out map.

    Raises
    ------
    ValueError
        ``patterns`` is not 3-D non-negative integers.
    """
    pat = _check_patterns(patterns, None)
    b, c_total, b_a = pat.shape
    # Chunk-major, then the issue order (t, i): first occurrences come out in first-use order.
    per_chunk = pat.transpose(1, 0, 2).reshape(c_total, b * b_a)
    keys = (np.arange(c_total, dtype=np.int64)[:, None] * (int(pat.max()) + 1)
            + per_chunk).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    source = rank[inverse.ravel()].reshape(c_total, b, b_a).transpose(1, 0, 2)
    reads = first[order]
    return LookupSchedule(read_chunk=reads // (b * b_a), read_pattern=per_chunk.ravel()[reads],
                          source=np.ascontiguousarray(source))


def analyze_layer(xq_samples: np.ndarray, *, group_size: int, nbw: int, act_bits: int,
                  batches: Iterable[int] = (1, 4, 16),
                  config: ReuseConfig | None = None) -> dict[int, dict[str, int | float | str]]:
    """Pattern reuse of one layer on calibration activations, per batch size.

    Parameters
    ----------
    xq_samples
        Integer ``[S, L, K]`` quantized activations of the layer's input: S independent samples
        (sequences) of L positions.
    group_size, nbw, act_bits
        g, NBW (1..8) and b_a (2..16) of the layer's LUT-GEMV.
    batches
        Batch sizes B. A call takes B different samples at the same position (batched
        decoding of independent sequences; ``"samples"``) when ``S >= B``, else B consecutive
        positions of one sample (``"positions"``). Batches are disjoint; leftover samples or
        positions that do not fill a batch are not used.
    config
        The streams' reuse table; ``ReuseConfig()`` if None.

    Returns
    -------
    dict
        For each B: ``batching`` ("samples" or "positions"), ``calls``, ``lookups`` and the
        fractions of lookups ``zero_fraction``, ``ideal_saved_fraction``, its
        ``pigeonhole_bound`` and ``table_saved_fraction``, summed over all calls.

    Raises
    ------
    OptionError
        ``nbw`` or ``act_bits`` is out of range, or a batch size is not a positive integer or
        exceeds both S and L (all such sizes are listed).
    ValueError
        ``xq_samples`` is not 3-D integers, or does not fit ``act_bits``.
    """
    xq = np.asarray(xq_samples)
    if not np.issubdtype(xq.dtype, np.integer) or xq.ndim != 3:
        raise ValueError(f"activation samples must be a 3-D integer array [S, L, K], got "
                         f"{xq.ndim}-D {xq.dtype}")
    n_samples, n_positions, k = xq.shape
    batches = list(batches)
    bad = [b for b in batches if not _is_int(b) or b < 1 or b > max(n_samples, n_positions)]
    if bad:
        raise OptionError(f"batch sizes {bad} are not positive integers of at most "
                          f"max(S, L) = {max(n_samples, n_positions)} for {n_samples} samples "
                          f"of {n_positions} positions; use smaller batches or more samples")
    n_chunks = chunk_layout(k, group_size, nbw).n_chunks
    pat = activation_patterns(xq.reshape(-1, k), group_size=group_size, nbw=nbw,
                              act_bits=act_bits)
    pat = pat.reshape(n_samples, n_positions, n_chunks, act_bits)
    config = ReuseConfig() if config is None else config
    result: dict[int, dict[str, int | float | str]] = {}
    for b in batches:
        if n_samples >= b:
            batching, used = "samples", n_samples // b * b
            calls = pat[:used].reshape(used // b, b, n_positions, n_chunks, act_bits)
            calls = calls.transpose(2, 0, 1, 3, 4)
        else:
            batching, used = "positions", n_positions // b * b
            calls = pat[:, :used].reshape(n_samples, used // b, b, n_chunks, act_bits)
        calls = calls.reshape(-1, b, n_chunks, act_bits)
        total = sum((count_reuse(call, nbw, config) for call in calls), ReuseCounts(0, 0, 0, 0))
        result[int(b)] = {
            "batching": batching,
            "calls": len(calls),
            "lookups": total.lookups,
            "zero_fraction": total.zero_fraction,
            "ideal_saved_fraction": total.ideal_saved_fraction,
            "pigeonhole_bound": pigeonhole_bound(b, nbw, act_bits),
            "table_saved_fraction": total.table_saved_fraction,
        }
    return result
