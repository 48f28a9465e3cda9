"""SAIL's timing and energy model: pure functions of an op's shape and a :class:`MachineConfig`.

Notation: a LUT-GEMV layer ``y[B, N] = x[B, K] @ W[K, N]`` with b-bit weights in groups of g,
b_a-bit activations with one scale per token and block of A consecutive k, NBW weights per
table, batch B. The sums are taken per *sum block* of ``g_s`` rows
(:class:`~...quant.reference.ActBlocks`: ``g_s = g`` when A is a multiple of g or A = K, else
``g_s = A``, a weight group split at activation-block boundaries). Chunking follows
:mod:`..quant.lut` over the sum blocks: ``G = ceil(K / g_s)`` sums, ``cpg = ceil(g_s / NBW)``
chunks per sum, ``C = G * cpg`` chunks (below, "group" is a sum block).
The machine has ``S`` slices of ``a`` arrays of ``R`` rows x ``Cb`` columns at ``f`` GHz
(``A = S * a`` arrays), ``F_s`` data-feeding modules per slice.

Tiling (where the work goes)
----------------------------
* **Table entry**: ``e = b + 1 + ceil(log2 NBW)`` bits, the signed range of a sum of NBW
  values ``q - z`` (:func:`table_entry_bits`). Entries sit in lanes of ``s >= e`` bits (the
  carry chain of the bit-line adder is cut every ``s`` bits; the high bits sign-extend), so a
  row holds ``epr = Cb // s`` entries.
* **Table block**: chunk ``c`` x column tile ``j``: ``2**NBW`` rows, row ``p`` holding
  ``LUT[c, p, n]`` for the ``epr`` columns ``n`` of tile ``j``. One row read serves them all.
  ``T = ceil(N / epr)`` column tiles, ``T * C`` blocks.
* **Unit**: what one array holds at a time: ``bpu = min(R // 2**NBW, C)`` consecutive chunks of
  one column tile. Tile ``j`` has ``u = ceil(C / bpu)`` units; ``U = T * u`` units in all, on
  ``A_u = min(A, U)`` busy arrays.
* **Placement**: units in column-tile-major order fill the machine ``A`` at a time: ``W = ceil(U
  / A)`` waves. A wave of ``U_w`` units gives each slice ``q_w = ceil(U_w / S)`` consecutive
  units (``q_w = a`` for a full wave), so unit ``x`` lands in slice ``(x mod A) // q_w``:
  consecutive units of a tile share a slice, and a partial wave spreads over every slice.
  Within a slice, arrays are dealt to the feeders round-robin, so a feeder serves ``apf =
  ceil(max_w q_w / F_s)`` busy arrays.
* **Reduction**: a unit produces partial float32 outputs for its tile's columns. The ``m_js``
  partials of tile ``j`` in slice ``s`` are summed on the slice bus (``m_js - 1`` vectors move);
  the ``s_j`` slices holding tile ``j`` then send ``s_j - 1`` vectors over the NoC to the
  tile's home slice. A tree of ``ceil(log2 m)`` float adds follows each stage.
* **Layout choice**: :func:`lut_gemv_cost` costs every lane width ``s`` from ``e`` to
  ``e_max = 8 + 1 + ceil(log2 NBW)`` (the entry of 8-bit weights; at most ``Cb``) and keeps the
  fastest, the narrowest on ties, as the lowering would (``lane_bits`` pins one).

Per-component formulas (cycles are array cycles unless named otherwise)
-----------------------------------------------------------------------
* **weight_fetch** (DRAM -> LLC): bytes ``K_pad * N * b / 8 + G * N * (scale_bits + b) / 8``
  (zero points at weight width); ``latency + bytes / (peak * efficiency)``.
* **table_construction**, busiest array: ``T * C / A_u`` blocks, each ``2**NBW - 1`` bit-line
  adds of ``s * add_cycles_per_bit + add_overhead_cycles`` (the NBW singletons ``q - z`` and
  every other entry as an earlier entry plus a singleton) and ``NBW + 1`` row writes (the
  NBW weight rows and the zero-point row).
* **lookups**: ``L = T * C * B * b_a`` lookups (token x chunk x bit plane x column tile). A
  fraction ``h`` hits the feeder's reuse table (from :mod:`..quant.patterns`); the ``L * (1 -
  h)`` others read a row: ``row_read_cycles`` each, ``apf / A_u`` of them on the busiest
  feeder.
* **shift_accumulate**: every lookup, hit or not, is shifted by its bit plane and added
  (subtracted for the sign plane) into its token's group accumulators: ``L *
  shift_accumulate_cycles``, ``apf / A_u`` of them on the busiest feeder. A feeder issues one
  lookup at a time and waits for its read (assumption: an in-order module), so the lookups and
  accumulates of its arrays are serial.
* **type_conversion**, in the arrays, bit-serial and lane-parallel over the ``Cb`` bit-lines of
  an array (transposed layout, one value per bit-line; m = 24 mantissa bits). Values are spread
  evenly over the arrays doing the work; a pass costs its full cycles even when partly filled,
  so the model charges ``max(1, values / lanes)`` passes: at least one, and the fractional
  count beyond it (the error is under one pass per op).

  - quantize ``float32 -> b_a``-bit integers (:func:`quantize_pass_cycles`): write the 32 bit
    rows; max search of ``|x|`` MSB first over 31 bits (one masked read per bit; the sense
    amplifiers' wired-OR says whether a candidate has the bit); the host turns the maximum into
    the factor ``r = (2**(b_a-1) - 1) / max``; multiply each mantissa by the (b_a + 1)-bit
    ``r``: ``(b_a + 1) * (m + 1)``; align by the exponent difference through a 5-stage log
    shifter: ``5 * (b_a + 1)``; round half to even, clamp and apply the sign: ``3 * (b_a +
    1)``; read the ``b_a`` bit planes out to the feeders. ``B * K`` values on all ``A * Cb``
    lanes; the maxima of the ``ceil(min(A, K) / Cb)`` arrays holding one activation block
    combine in a tree of NoC hops. Per-block maxima (A < K) take one wired-OR per block of
    bit-lines (assumption: the sense amplifiers' OR is segmented at power-of-two boundaries, as
    the columns of a block are adjacent), so they cost the same passes as one per row.
  - dequantize the int32 partial group sums (:func:`dequantize_pass_cycles`): write the 32
    rows; int -> float (leading-one search ``32`` + normalising shift ``5 * 32``); multiply by
    the group scale ``s[grp, n]``: ``m * (m + 1)``; float add into the output (align ``5m``, add
    ``m + 1``, normalise ``5m``). ``B * N * sum_u groups(u)`` sums (one per unit and group it
    touches) on the ``A_u * Cb`` lanes of the busy arrays. With per-block activation scales
    (A < K) each sum is also multiplied by its token's block scale ``sx[t, blk]`` before the
    add (one more ``m * (m + 1)`` per pass): the in-memory, per-group dequantization of
    DESIGN.md section 3.
  - final scaling by the token scale ``sx[t]`` after the reduction, in the tiles' home arrays:
    ``B * N`` values on ``min(A, T) * Cb`` lanes, ``m * (m + 1)`` cycles a pass. Only with one
    scale per row; per-block scales were applied per group.

  ``placement="host"`` runs the dequantization on the cores instead (:func:`host_op_cost`).
* **activation_broadcast**: the ``B * K * b_a / 8`` bytes of quantized activations are multicast
  over a spanning tree of the used slices: ``bytes / link_bw + diameter * hop`` on a square
  mesh.
* **reduction**: ``bytes_busiest_slice / slice_bus_bw + levels * float_add`` inside slices,
  then ``cross_bytes / (slices_used * link_bw) + levels * (hop + float_add)`` across them; a
  float add takes ``max(1, B * epr / Cb)`` passes of :func:`fp_add_cycles`.
* **host**: ops on the CPU cores (:func:`host_op_cost`): ``sync + max(flops / (cores * clock *
  flops_per_cycle * efficiency), dram_bytes / dram_bw, llc_bytes / llc_bw)``.

Critical path of a LUT-GEMV: ``launch + broadcast + pipeline(F, P, n) + D + reduction + final
scaling``, with ``F`` the weight fetch, ``P`` the table work of the busiest array and feeder
(construction + lookups + accumulates), ``D`` the dequantization (not overlapped: assumption)
and ``pipeline(F, P, n) = max(F, P) + min(F, P) / n`` over ``n = T * C / A_u`` stages (blocks
per busy array): DRAM streams the weights block-interleaved (block 0 of every busy array, then
block 1, ...) and an array builds and probes each block's table as soon as it arrives, so
either the fetch hides all but one block of work or the work hides all but one block of fetch.

Invariants that hold by construction: every batch-dependent term is ``a + c * max(1, x B)``
(``a, c, x >= 0``) or the pipeline of two such terms, so the time per token never grows with
B; weight bits only add fetched bytes and remove narrow lane widths from the choice, so the
time never falls when they grow; activation bits only add lookups and conversion work.

Energy: DRAM bytes x pJ/byte; row reads and writes x columns x pJ/bit; bit-serial cycles x
active bit-lines x pJ per bit-line cycle; accumulates x lanes x pJ; NoC and slice-bus bytes x
hops x pJ (one hop each: partial sums go to neighbouring slices, assumption); busy cores x W;
static power x the op's time. An op's energy is exactly the sum of its components.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import numpy as np

from ...errors import OptionError, valid_choices
from ...ops.sail_ops import PLACEMENTS
from ...quant.patterns import LookupSchedule, ReuseConfig, ReuseCounts, count_reuse
from ...quant.reference import ActBlocks
from .config import MachineConfig

__all__ = [
    "BYTES",
    "COMPONENTS",
    "EVENTS",
    "PIM_COMPUTE",
    "Cost",
    "Reuse",
    "Tiling",
    "best_lane_bits",
    "dequantize_pass_cycles",
    "fp_add_cycles",
    "fp_mul_cycles",
    "host_op_cost",
    "lut_gemv_cost",
    "max_entry_bits",
    "plan_tiling",
    "quantize_cost",
    "quantize_pass_cycles",
    "reuse_saved_fraction",
    "table_entry_bits",
    "weight_bytes",
]

#: Time components of SAIL ops, in report order. ``static`` is an energy-only component.
COMPONENTS = ("weight_fetch", "table_construction", "lookups", "shift_accumulate",
              "type_conversion", "activation_broadcast", "reduction", "host")
#: Components of the PIM arrays' own work (the "compute cycles" pattern reuse saves).
PIM_COMPUTE = ("table_construction", "lookups", "shift_accumulate", "type_conversion")
#: Counted events.
EVENTS = ("lookups", "reuse_hits", "row_reads", "row_writes", "bitline_adds",
          "converted_values", "table_blocks")
#: Bytes moved, by where.
BYTES = ("dram", "noc", "slice_bus", "llc")

MANTISSA_BITS = 24
ACC_BITS = 32
FLOAT_BITS = 32
_LOG_SHIFTER_STAGES = 5  # shifts by 1, 2, 4, 8, 16 cover a 32-bit word
_PJ_PER_W_NS = 1000.0     # 1 W for 1 ns = 1 nJ = 1000 pJ


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _log2_levels(n: int) -> int:
    """Levels of a binary reduction tree over ``n >= 1`` inputs: ``ceil(log2 n)``."""
    return (n - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class Cost:
    """Time, energy, traffic and events of one op, or (added with ``+``) of a sequence of ops.

    Attributes
    ----------
    total_ns
        Critical-path time; ops in a sequence run one after another, so totals add.
    time_ns
        Busy time per component (they may overlap, so they need not sum to ``total_ns``).
    energy_pj
        Energy per component, ``static`` included; :attr:`energy_total_pj` is their sum.
    bytes
        Bytes moved per place (:data:`BYTES`).
    events
        Counted events (:data:`EVENTS`); ``reuse_hits + row_reads == lookups``.
    """

    total_ns: float
    time_ns: Mapping[str, float] = dataclasses.field(default_factory=dict)
    energy_pj: Mapping[str, float] = dataclasses.field(default_factory=dict)
    bytes: Mapping[str, float] = dataclasses.field(default_factory=dict)
    events: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def energy_total_pj(self) -> float:
        """Sum of the components' energy."""
        return float(sum(self.energy_pj.values()))

    def cycles(self, clock_ghz: float) -> float:
        """``total_ns`` in cycles of a ``clock_ghz`` clock."""
        return self.total_ns * clock_ghz

    def __add__(self, other: Cost) -> Cost:
        def merged(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
            return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in dict.fromkeys([*a, *b])}

        return Cost(self.total_ns + other.total_ns, merged(self.time_ns, other.time_ns),
                    merged(self.energy_pj, other.energy_pj), merged(self.bytes, other.bytes),
                    merged(self.events, other.events))

    def scaled(self, factor: float) -> Cost:
        """Every figure times ``factor`` (``factor`` repetitions of the op)."""
        return Cost(self.total_ns * factor, *({k: v * factor for k, v in d.items()} for d in (
            self.time_ns, self.energy_pj, self.bytes, self.events)))

    def to_dict(self, clock_ghz: float) -> dict[str, object]:
        """JSON-able figures; cycles in ``clock_ghz`` cycles."""
        return {"total_ns": self.total_ns, "cycles": self.cycles(clock_ghz),
                "energy_pj": self.energy_total_pj,
                "components": {k: {"time_ns": self.time_ns.get(k, 0.0),
                                   "cycles": self.time_ns.get(k, 0.0) * clock_ghz,
                                   "energy_pj": self.energy_pj.get(k, 0.0)}
                               for k in dict.fromkeys([*self.time_ns, *self.energy_pj])},
                "bytes": dict(self.bytes), "events": dict(self.events)}


def _sail_cost(total_ns: float, config: MachineConfig, time_ns: dict[str, float],
               energy_pj: dict[str, float], bytes_: dict[str, float] | None = None,
               events: dict[str, float] | None = None) -> Cost:
    """A SAIL op's cost with every component, event and byte key present and static energy."""
    energy = {k: energy_pj.get(k, 0.0) for k in COMPONENTS}
    energy["static"] = config.energy.static_w * total_ns * _PJ_PER_W_NS
    return Cost(total_ns, {k: time_ns.get(k, 0.0) for k in COMPONENTS}, energy,
                {k: (bytes_ or {}).get(k, 0.0) for k in BYTES},
                {k: (events or {}).get(k, 0.0) for k in EVENTS})


# ---------------------------------------------------------------------------------------------
# Checks


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) \
        and value >= lo and (hi is None or value <= hi)
    if not ok:
        valid = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise OptionError(f"{name} must be an integer {valid}, got {value!r}")
    return int(value)


def _check_placement(placement: str) -> str:
    if placement not in PLACEMENTS:
        raise OptionError(f"unknown placement {placement!r}; {valid_choices(PLACEMENTS)}")
    return placement


# ---------------------------------------------------------------------------------------------
# Bit-serial building blocks (array cycles)


def table_entry_bits(bits: int, nbw: int) -> int:
    """Bits of a signed table entry: a sum of NBW values ``q - z`` of ``bits``-bit codes.

    ``|q - z| <= 2**bits - 1``, so ``|entry| <= NBW * (2**bits - 1) < 2**(bits +
    ceil(log2 NBW))`` and ``bits + 1 + ceil(log2 NBW)`` bits hold it in two's complement.
    """
    return bits + 1 + (nbw - 1).bit_length()


def fp_mul_cycles() -> int:
    """float32 multiply of two per-lane operands: m shift-and-add steps of m + 1 cycles."""
    return MANTISSA_BITS * (MANTISSA_BITS + 1)


def fp_add_cycles() -> int:
    """float32 add: align (log shifter over m bits), (m + 1)-cycle add, normalise."""
    return 2 * _LOG_SHIFTER_STAGES * MANTISSA_BITS + MANTISSA_BITS + 1


def quantize_pass_cycles(act_bits: int, config: MachineConfig) -> int:
    """Array cycles to quantize one pass of ``columns`` float32 values to ``act_bits``."""
    cs = config.csram
    work = act_bits + 1
    return (FLOAT_BITS * cs.row_write_cycles + (FLOAT_BITS - 1)
            + work * (MANTISSA_BITS + 1) + _LOG_SHIFTER_STAGES * work + 3 * work
            + act_bits * cs.row_read_cycles)


def dequantize_pass_cycles(config: MachineConfig, per_block: bool = False) -> int:
    """Array cycles to turn one pass of ``columns`` int32 group sums into scaled float32 and add
    them into the outputs; ``per_block`` adds the multiply by the block's activation scale."""
    int_to_float = ACC_BITS + _LOG_SHIFTER_STAGES * ACC_BITS
    return (ACC_BITS * config.csram.row_write_cycles + int_to_float
            + (2 if per_block else 1) * fp_mul_cycles() + fp_add_cycles())


# ---------------------------------------------------------------------------------------------
# Tiling


@dataclasses.dataclass(frozen=True)
class Tiling:
    """Where a layer's tables go on the machine (module docstring, "Tiling")."""

    n_groups: int
    chunks_per_group: int
    n_chunks: int
    lane_bits: int
    """Bits of a table-entry lane, ``s >= e``."""
    entries_per_row: int
    col_tiles: int
    blocks_per_unit: int
    units_per_tile: int
    units: int
    arrays_busy: int
    waves: int
    slices_used: int
    arrays_per_feeder: int
    """Busy arrays per data-feeding module in the busiest slice."""
    unit_groups: int
    """Sum over one tile's units of the groups each touches (a sum is per unit and group)."""
    intra_columns_busiest_slice: int
    """Columns of the partial-output vectors moved on the busiest slice's bus."""
    intra_columns_total: int
    cross_columns: int
    """Columns of the partial-output vectors sent between slices."""
    intra_levels: int
    cross_levels: int

    @property
    def blocks(self) -> int:
        """Table blocks: chunks x column tiles."""
        return self.n_chunks * self.col_tiles


def max_entry_bits(nbw: int) -> int:
    """The widest lane the layout choice considers: the entry of 8-bit weights."""
    return table_entry_bits(8, nbw)


def plan_tiling(k: int, n: int, *, bits: int, group_size: int, nbw: int, config: MachineConfig,
                lane_bits: int | None = None) -> Tiling:
    """The tiling of a ``K x N`` layer with table lanes of ``lane_bits`` (default: the entry
    width ``e``) bits (module docstring).

    Raises
    ------
    OptionError
        A shape or width is out of range, a lane is narrower than the entry or wider than a row,
        or a table does not fit the machine: NBW above the ``csram.nbw`` index bits of the
        data-feeding modules (whose tables of ``2**csram.nbw`` rows fit an array).
    """
    k, n = _check_int("k", k, 1), _check_int("n", n, 1)
    bits = _check_int("weight bits", bits, 1, 8)
    group_size = _check_int("group_size", group_size, 1)
    nbw = _check_int("nbw", nbw, 1, 8)
    cs = config.csram
    if nbw > cs.nbw:
        raise OptionError(f"NBW {nbw} needs tables of {1 << nbw} rows indexed by {nbw} bits, but "
                          f"the data-feeding modules index csram.nbw = {cs.nbw} bits; valid nbw: "
                          f"1..{cs.nbw} (compile with a smaller --nbw or raise csram.nbw)")
    entry = table_entry_bits(bits, nbw)  # <= 12 <= csram.columns (the config's minimum)
    lane = entry if lane_bits is None else _check_int("lane_bits", lane_bits, entry, cs.columns)
    return _plan(k, n, group_size, nbw, lane, config)


@functools.lru_cache(maxsize=4096)
def _plan(k: int, n: int, group_size: int, nbw: int, lane: int, config: MachineConfig) -> Tiling:
    cs, slices = config.csram, config.llc.slices
    n_groups, cpg = _ceil_div(k, group_size), _ceil_div(group_size, nbw)
    n_chunks = n_groups * cpg
    epr = cs.columns // lane
    col_tiles = _ceil_div(n, epr)
    bpu = min(cs.rows >> nbw, n_chunks)
    upt = _ceil_div(n_chunks, bpu)
    units = col_tiles * upt
    n_arrays = config.arrays

    first = np.arange(upt) * bpu
    last = np.minimum(first + bpu, n_chunks) - 1
    groups = last // cpg - first // cpg + 1

    waves = _ceil_div(units, n_arrays)
    per_slice_last = _ceil_div(units - (waves - 1) * n_arrays, slices)
    x = np.arange(units, dtype=np.int64)
    tile = x // upt
    per_slice = np.where(x // n_arrays < waves - 1, cs.arrays_per_slice, per_slice_last)
    slice_of_unit = (x % n_arrays) // per_slice
    pair, per_pair = np.unique(tile * slices + slice_of_unit, return_counts=True)
    pair_tile, pair_slice = pair // slices, pair % slices
    tile_cols = np.minimum(epr, n - np.arange(col_tiles) * epr)
    slices_per_tile = np.bincount(pair_tile, minlength=col_tiles)
    intra = (per_pair - 1) * tile_cols[pair_tile]
    intra_per_slice = np.bincount(pair_slice, weights=intra, minlength=slices)
    busy = cs.arrays_per_slice if waves > 1 else per_slice_last
    return Tiling(
        n_groups=n_groups, chunks_per_group=cpg, n_chunks=n_chunks, lane_bits=lane,
        entries_per_row=epr, col_tiles=col_tiles, blocks_per_unit=bpu, units_per_tile=upt,
        units=units, arrays_busy=min(units, n_arrays), waves=waves,
        slices_used=int(np.unique(slice_of_unit).size),
        arrays_per_feeder=_ceil_div(busy, cs.feeders_per_slice),
        unit_groups=int(groups.sum()),
        intra_columns_busiest_slice=int(intra_per_slice.max()),
        intra_columns_total=int(intra.sum()),
        cross_columns=int(((slices_per_tile - 1) * tile_cols).sum()),
        intra_levels=_log2_levels(int(per_pair.max())),
        cross_levels=_log2_levels(int(slices_per_tile.max())))


def weight_bytes(k: int, n: int, *, bits: int, group_size: int, config: MachineConfig) -> float:
    """DRAM bytes of a quantized ``K x N`` weight: codes, group scales and zero points."""
    n_groups = _ceil_div(k, group_size)
    return (n_groups * group_size * n * bits + n_groups * n * (config.data.scale_bits + bits)) / 8


# ---------------------------------------------------------------------------------------------
# Reuse

#: What :func:`lut_gemv_cost` accepts as pattern reuse: the saved fraction of lookups, the
#: counts of :func:`..quant.patterns.count_reuse`, a deduplicated :class:`LookupSchedule`, or
#: the ``[B, C, b_a]`` patterns of the call (counted with the machine's reuse tables).
Reuse = float | ReuseCounts | LookupSchedule | np.ndarray


def reuse_saved_fraction(reuse: Reuse, *, batch: int, n_chunks: int, act_bits: int, nbw: int,
                         config: MachineConfig) -> float:
    """The fraction of lookups that skip their row read.

    Raises
    ------
    OptionError
        A float outside [0, 1].
    ValueError
        A schedule or pattern array whose shape is not ``[batch, n_chunks, act_bits]``.
    """
    expected = (batch, n_chunks, act_bits)
    if isinstance(reuse, ReuseCounts):
        return reuse.table_saved_fraction
    if isinstance(reuse, LookupSchedule | np.ndarray):
        shape = reuse.source.shape if isinstance(reuse, LookupSchedule) else reuse.shape
        if tuple(shape) != expected:
            raise ValueError(f"the lookup schedule or patterns have shape {tuple(shape)}, but "
                             f"this call makes [B, C, b_a] = {list(expected)} lookups")
        if isinstance(reuse, LookupSchedule):
            return 1.0 - reuse.reads / reuse.lookups
        cs = config.csram
        table = ReuseConfig(size=cs.reuse_table_entries, chunks_per_stream=cs.chunks_per_stream)
        return count_reuse(reuse, nbw, table).table_saved_fraction
    if isinstance(reuse, bool) or not isinstance(reuse, int | float) or not 0 <= reuse <= 1:
        raise OptionError(f"the saved fraction of lookups must be in [0, 1], got {reuse!r}")
    return float(reuse)


# ---------------------------------------------------------------------------------------------
# Host (CPU) ops


def host_op_cost(config: MachineConfig, *, flops: float = 0.0, dram_bytes: float = 0.0,
                 llc_bytes: float = 0.0) -> Cost:
    """An op on all host cores: ``sync + max(compute, DRAM, LLC)``, all cores busy.

    Parameters
    ----------
    flops
        FP32 operations (a fused multiply-add counts 2).
    dram_bytes, llc_bytes
        Bytes read or written in DRAM (KV cache, embeddings) and in the LLC (activations).
    """
    host, dram = config.host, config.dram
    compute_ns = flops / (host.cores * host.clock_ghz * host.fp32_flops_per_cycle
                          * host.vector_efficiency)
    dram_ns = (dram.latency_ns + dram_bytes / dram.effective_gbps) if dram_bytes else 0.0
    llc_ns = llc_bytes / (config.llc.slices * config.llc.read_bytes_per_cycle * host.clock_ghz)
    total = host.sync_ns + max(compute_ns, dram_ns, llc_ns)
    energy = (host.cores * config.energy.core_active_w * total * _PJ_PER_W_NS
              + dram_bytes * config.energy.dram_pj_per_byte)
    return _sail_cost(total, config, {"host": total}, {"host": energy},
                      {"dram": dram_bytes, "llc": llc_bytes})


# ---------------------------------------------------------------------------------------------
# SAIL ops


def _passes(values: float, lanes: int) -> float:
    """Bit-serial passes charged for ``values`` spread over ``lanes``: at least one, then the
    fractional count (module docstring, type_conversion)."""
    return max(1.0, values / lanes)


def quantize_cost(k: int, *, act_bits: int, batch: int, config: MachineConfig,
                  placement: str = "pim", act_group: int | None = None) -> Cost:
    """``sail.quantize`` of ``B`` rows of ``K`` float32 values to ``act_bits`` integers, one
    scale per row and block of ``act_group`` values (None: per row).

    In the arrays (``placement="pim"``): ``launch + max(1, B * K / (A * Cb)) *
    quantize_pass_cycles / f + levels * hop``, the levels of a max-combining tree over the
    ``ceil(min(act_group, K) / Cb)`` arrays of an activation block. On the host: 5 flops per
    value (abs-max, scale, round, convert, clamp) and its bytes through the LLC.
    """
    k, batch = _check_int("k", k, 1), _check_int("batch", batch, 1)
    act_bits = _check_int("act_bits", act_bits, 2, 16)
    block = k if act_group is None else min(_check_int("act_group", act_group, 1), k)
    values = batch * k
    if _check_placement(placement) == "host":
        return host_op_cost(config, flops=5.0 * values,
                            llc_bytes=values * (config.data.activation_bits + act_bits) / 8)
    cs, noc = config.csram, config.noc
    cycles = quantize_pass_cycles(act_bits, config)
    convert_ns = _passes(values, config.arrays * cs.columns) * cycles / cs.clock_ghz
    combine_ns = _log2_levels(_ceil_div(block, cs.columns)) * noc.hop_cycles / noc.clock_ghz
    total = cs.launch_ns + convert_ns + combine_ns
    energy = values * cycles * config.energy.bitline_op_pj_per_bit
    return _sail_cost(total, config, {"type_conversion": convert_ns + combine_ns},
                      {"type_conversion": energy}, events={"converted_values": values})


def _pipeline_ns(fetch_ns: float, compute_ns: float, stages: float) -> float:
    """Weight fetch and table work overlapped block by block (module docstring)."""
    return max(fetch_ns, compute_ns) + min(fetch_ns, compute_ns) / stages


def lut_gemv_cost(k: int, n: int, *, bits: int, act_bits: int, group_size: int, nbw: int,
                  batch: int, config: MachineConfig, reuse: Reuse = 0.0,
                  placement: str = "pim", lane_bits: int | None = None,
                  act_group: int | None = None) -> Cost:
    """``sail.lut_gemv`` with its dequantization: ``y[B, N] = x[B, K] @ W[K, N]`` on SAIL.

    Parameters
    ----------
    k, n
        The layer's K (reduction) and N (outputs).
    bits, act_bits, group_size, nbw
        The op's attributes: weight bits (1..8), activation bits (2..16), g, NBW (at most the
        machine's ``csram.nbw``).
    batch
        B, tokens per call (every token probes the same tables).
    config
        The machine.
    reuse
        Pattern reuse (:data:`Reuse`): a saved fraction, :class:`ReuseCounts`, a
        :class:`LookupSchedule` or patterns ``[B, C, b_a]``.
    placement
        Where the dequantization runs: ``"pim"`` (in the arrays) or ``"host"``.
    lane_bits
        Bits of a table-entry lane (``e .. csram.columns``); None costs every lane width from
        ``e`` to :func:`max_entry_bits` and returns the fastest (:func:`best_lane_bits`).
    act_group
        Columns A per activation scale (None: one per row); sets the sum blocks and the
        per-group dequantization (module docstring).

    Returns
    -------
    Cost
        Per component (module docstring), with ``lookups``, ``reuse_hits``, ``row_reads``,
        ``bitline_adds``, ``row_writes``, ``converted_values`` and ``table_blocks`` events.

    Raises
    ------
    OptionError
        A width or shape is out of range or a tile does not fit the machine
        (:func:`plan_tiling`).
    """
    kw = {"bits": bits, "act_bits": act_bits, "group_size": group_size, "nbw": nbw,
          "batch": batch, "config": config, "placement": placement, "act_group": act_group}
    if lane_bits is not None:
        return _lut_gemv_cost(k, n, reuse=reuse, lane_bits=lane_bits, **kw)
    return min(_lane_costs(k, n, reuse, kw).values(), key=lambda c: c.total_ns)


def best_lane_bits(k: int, n: int, *, bits: int, act_bits: int, group_size: int, nbw: int,
                   batch: int, config: MachineConfig, reuse: Reuse = 0.0,
                   placement: str = "pim", act_group: int | None = None) -> int:
    """The lane width :func:`lut_gemv_cost` chooses (the fastest, the narrowest on ties)."""
    kw = {"bits": bits, "act_bits": act_bits, "group_size": group_size, "nbw": nbw,
          "batch": batch, "config": config, "placement": placement, "act_group": act_group}
    costs = _lane_costs(k, n, reuse, kw)
    return min(costs, key=lambda lane: costs[lane].total_ns)


def _lane_costs(k: int, n: int, reuse: Reuse, kw: dict) -> dict[int, Cost]:
    """``{lane width: cost}`` for every lane from the entry width to :func:`max_entry_bits`,
    narrowest first; the reuse (a pattern count, perhaps) is resolved once."""
    first = _lut_gemv_cost(k, n, reuse=reuse, lane_bits=None, **kw)
    entry = table_entry_bits(kw["bits"], kw["nbw"])
    saved = first.events["reuse_hits"] / first.events["lookups"]
    last = min(max_entry_bits(kw["nbw"]), kw["config"].csram.columns)
    return {entry: first, **{lane: _lut_gemv_cost(k, n, reuse=saved, lane_bits=lane, **kw)
                             for lane in range(entry + 1, last + 1)}}


def _lut_gemv_cost(k: int, n: int, *, bits: int, act_bits: int, group_size: int, nbw: int,
                   batch: int, config: MachineConfig, reuse: Reuse, placement: str,
                   lane_bits: int | None, act_group: int | None) -> Cost:
    group_size = _check_int("group_size", group_size, 1)
    blocks = ActBlocks(_check_int("k", k, 1), group_size, k if act_group is None else act_group)
    per_block = not blocks.per_row
    t = plan_tiling(k, n, bits=bits, group_size=blocks.sum_size, nbw=nbw, config=config,
                    lane_bits=lane_bits)
    batch = _check_int("batch", batch, 1)
    act_bits = _check_int("act_bits", act_bits, 2, 16)
    host_dequant = _check_placement(placement) == "host"
    h = reuse_saved_fraction(reuse, batch=batch, n_chunks=t.n_chunks, act_bits=act_bits,
                             nbw=nbw, config=config)
    cs, noc, en = config.csram, config.noc, config.energy
    f = cs.clock_ghz
    table_rows = 1 << nbw

    # Whole-layer counts.
    blocks = t.blocks
    lookups = blocks * batch * act_bits
    hits = lookups * h
    adds = blocks * (table_rows - 1)
    writes = blocks * (nbw + 1)
    add_cycles = t.lane_bits * cs.add_cycles_per_bit + cs.add_overhead_cycles
    sums = batch * t.unit_groups * n

    # The busiest array and feeder (array cycles -> ns).
    per_array = 1 / t.arrays_busy
    per_feeder = t.arrays_per_feeder / t.arrays_busy
    construct_ns = (adds * add_cycles + writes * cs.row_write_cycles) * per_array / f
    read_ns = (lookups - hits) * cs.row_read_cycles * per_feeder / f
    accumulate_ns = lookups * cs.shift_accumulate_cycles * per_feeder / f
    compute_ns = construct_ns + read_ns + accumulate_ns
    dequant_cycles = dequantize_pass_cycles(config, per_block)
    dequant_ns = 0.0 if host_dequant else (
        _passes(sums, t.arrays_busy * cs.columns) * dequant_cycles / f)

    fetch_bytes = weight_bytes(k, n, bits=bits, group_size=group_size, config=config)
    fetch_ns = config.dram.latency_ns + fetch_bytes / config.dram.effective_gbps

    act_bytes = batch * k * act_bits / 8
    side = math.ceil(math.sqrt(t.slices_used))
    link_bw = noc.link_bytes_per_cycle * noc.clock_ghz
    hop_ns = noc.hop_cycles / noc.clock_ghz
    broadcast_ns = act_bytes / link_bw + 2 * (side - 1) * hop_ns

    # Sums leave the arrays: float partial outputs (pim) or int32 group sums (host).
    if host_dequant:
        bus_bytes, cross_bytes = sums * ACC_BITS / 8, 0.0
        reduction_ns = bus_bytes / (t.slices_used * cs.slice_bus_bytes_per_cycle * f)
        reduce_lanes = 0
        final_ns = final_energy = 0.0
        host = host_op_cost(config, flops=(4.0 if per_block else 3.0) * sums,
                            llc_bytes=bus_bytes)
    else:
        word = FLOAT_BITS / 8 * batch
        bus_bytes = t.intra_columns_total * word
        cross_bytes = t.cross_columns * word
        add_ns = _passes(batch * t.entries_per_row, cs.columns) * fp_add_cycles() / f
        reduction_ns = (t.intra_columns_busiest_slice * word / (cs.slice_bus_bytes_per_cycle * f)
                        + t.intra_levels * add_ns
                        + cross_bytes / (t.slices_used * link_bw)
                        + t.cross_levels * (hop_ns + add_ns))
        reduce_lanes = (t.intra_columns_total + t.cross_columns) * batch
        if per_block:  # every sum was scaled by its block's sx already
            final_ns = final_energy = 0.0
        else:
            final_ns = (_passes(batch * n, min(config.arrays, t.col_tiles) * cs.columns)
                        * fp_mul_cycles() / f)
            final_energy = batch * n * fp_mul_cycles() * en.bitline_op_pj_per_bit
        host = None

    stages = blocks / t.arrays_busy
    total = (cs.launch_ns + broadcast_ns + _pipeline_ns(fetch_ns, compute_ns, stages)
             + dequant_ns + reduction_ns + final_ns + (host.total_ns if host else 0.0))
    time_ns = {
        "weight_fetch": fetch_ns,
        "table_construction": construct_ns,
        "lookups": read_ns,
        "shift_accumulate": accumulate_ns,
        "type_conversion": dequant_ns + final_ns,
        "activation_broadcast": broadcast_ns,
        "reduction": reduction_ns,
        "host": host.total_ns if host else 0.0,
    }
    energy = {
        "weight_fetch": fetch_bytes * en.dram_pj_per_byte,
        "table_construction": cs.columns * (adds * add_cycles * en.bitline_op_pj_per_bit
                                            + writes * en.sram_write_pj_per_bit),
        "lookups": (lookups - hits) * cs.columns * en.sram_read_pj_per_bit,
        "shift_accumulate": lookups * t.entries_per_row * en.accumulate_pj_per_lane,
        "type_conversion": (0.0 if host_dequant else
                            sums * dequant_cycles * en.bitline_op_pj_per_bit)
                           + final_energy,
        "activation_broadcast": act_bytes * t.slices_used * en.noc_pj_per_byte_hop,
        "reduction": ((bus_bytes + cross_bytes) * en.noc_pj_per_byte_hop
                      + reduce_lanes * fp_add_cycles() * en.bitline_op_pj_per_bit),
        "host": host.energy_pj["host"] if host else 0.0,
    }
    moved = {"dram": fetch_bytes, "noc": act_bytes * t.slices_used + cross_bytes,
             "slice_bus": bus_bytes, "llc": host.bytes["llc"] if host else 0.0}
    events = {"lookups": lookups, "reuse_hits": hits, "row_reads": lookups - hits,
              "row_writes": writes, "bitline_adds": adds, "table_blocks": blocks,
              "converted_values": 0 if host_dequant else sums}
    return _sail_cost(total, config, time_ns, energy, moved, events)
