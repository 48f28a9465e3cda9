"""The LUT-GEMV kernel of ``sail.lut_gemv`` for CPUs: a TE formulation and its schedule.

The kernel computes exactly the sums of DESIGN.md section 3,
``S[t, j, n] = sum_{k in j} (q[k, n] - z[grp(j), n]) * xq[t, k]`` over the sum blocks j of
:class:`~sail_compiler.quant.reference.ActBlocks` (the weight groups, split at activation-block
boundaries when the activation group A is smaller than g; below, "group" is a sum block of
B rows), by SAIL's method (DESIGN.md section 1): tables of weight sums indexed by activation bit
planes. It never dequantizes a weight and never multiplies a weight by an activation.

Algorithm
---------
* **Chunks.** Each group of ``g`` rows is cut into ``ceil(g / NBW)`` chunks of NBW rows; the
  last chunk of a group is padded with rows that count as ``xq = 0`` (chunks never straddle
  groups). A group's chunks are split into ``blocks_per_group`` blocks of ``chunks_per_block``
  chunks (:func:`lut_layout`); the chunks added to fill the last block are all padding.
* **Tables** (stage ``lut_gemv_table``, int16 ``[C, 2**NBW, N]``): entry ``p`` of chunk ``c``
  is ``sum_{j: bit j of p} (q[c, j, n] - z[grp, n])``, built from ``packed`` inside the
  kernel. ``|entry| <= NBW * (2**b - 1) <= 2040``, so int16 holds every entry.
* **Indices** (stage ``lut_gemv_index``, int16 ``[..., C, b_a]``): activations are b_a-bit
  two's complement, ``u = xq mod 2**b_a``; the index of chunk ``c`` at bit plane ``i`` is
  ``sum_j bit_i(u[c, j]) << j``. It does not depend on ``n``: one table row serves every
  output column. Padding rows give bit 0, and entry 0 (the empty sum) is 0, so padding
  contributes nothing.
* **Planes** (stage ``lut_gemv_planes``, int16 ``[..., G, blocks, b_a, N]``): for each bit
  plane, the looked-up entries summed over the chunks of a block. A block holds at most
  ``32767 // (NBW * (2**b - 1))`` chunks, so these int16 sums cannot overflow.
* **Sums** (stage ``lut_gemv_sums``, int32 ``[..., G, N]``): the planes shift-accumulated,
  ``sum_{i < b_a - 1} P_i << i  -  P_{b_a - 1} << (b_a - 1)`` (the sign plane is subtracted),
  over the blocks of the group. This is SAIL's bit-serial shift-accumulate with the chunk sum
  moved inside it (``sum_c sum_i = sum_i sum_c``): one shift per plane and block instead of
  one per lookup.
* **Output** (stage ``lut_gemv_out``, only with ``sx`` and ``scale``): float32
  ``y[t, n] = sum_j (scale[grp(j), n] * sx[t, blk(j)]) * float32(S[t, j, n])`` in order from 0,
  the order of :func:`~sail_compiler.quant.reference.quantized_matmul`. Each term goes through
  ``llvm.arithmetic.fence`` so that LLVM cannot contract the multiply and add into an FMA (TVM's
  llvm target allows contraction); the result is bit-identical to the reference.

Schedule (:func:`schedule_lut_gemv`)
------------------------------------
Loops of the fused output (the int32 output has no ``out`` and accumulates ``S`` in place)::

    index:  parallel over (rows t, chunks c); b_a planes
    for task in parallel(N / (sub * lanes)):        sub column tiles of `lanes` columns
      for grp:
        for tile in range(sub):
          for blk:
            table:  for chunk, p (unrolled), n (vector)      int16 [chunks_per_block, 2**NBW,
                                                              lanes], <= 16 KiB: stays in L1
            for t:
              planes: for chunk, plane i (unrolled), n (vector):
                        P[i] += table[chunk, idx[t, chunk, i]]       (b_a registers)
              sums:   S[t] += sum_i coef_i * int32(P[i])             (i unrolled)
          out:  for t: y[t, tile] += fence((scale * sx[t]) * float32(S[t]))
      write back y[:, columns of the task]

* ``lanes`` is the number of int16 lanes of one SIMD register of the target (16 with AVX2):
  a table row is one register, a lookup one vector load-and-add.
* ``sub`` (up to 32, while leaving two tasks per core) tiles read the same rows of ``packed``
  one after the other. Successive rows of one tile are ``N`` bytes apart (a page for
  N = 4096), so with one tile per task nearly every read missed the TLB: 4096 x 4096 weights,
  one row, 4-bit 5.2 -> 2.9 ms, 8-bit 9.2 -> 4.8 ms.
* Tables are built once per column tile and block and read by every row of the batch.
* The plane accumulators do not depend on the batch size, so LLVM keeps them in registers for
  a static or a symbolic batch alike; ``S`` and ``y`` are small ``global`` buffers
  (``cache_write`` for ``y``) allocated once per task: the sums never reach memory.
* ``compute_at`` of the table at the block loop needs bounded reads: the looked-up index is
  clamped with ``min(max(idx, 0), 2**NBW - 1)`` (a no-op on valid indices). Without the clamp,
  ``compute_at`` fails in ``InverseAffineIterMap`` (the read index is data-dependent).
* ``S`` is accumulated in int32 with wrap-around: exact whenever the final sum fits in int32.

Choices measured at 4096 x 4096, 4-bit weights in groups of 128, 8-bit activations, one thread,
AVX2 (kernel alone; the machine is shared, times vary by ~20%):

* int16 tables and plane sums: 3.7 ms per row, 14 ms for 8 rows; int32 tables and sums
  6.0 / 23 ms; int16 tables with int32 sums 5.3 / 21 ms (an earlier loop order, one tile per
  task). int16 entries computed in int32 and narrowed cost pack/permute instructions per entry.
* Against one table per chunk with plane accumulators for all rows (the prototype's order):
  that order was up to 15% faster for one row of a static batch, no faster for a symbolic
  batch and slower for 8 rows; its accumulators depend on the batch size, so they live in
  memory when it is symbolic.
* NBW = 4: 2.9 ms for 1 row, 11.3 ms for 8, 20.7 ms for 16. NBW 2: 4.1 / 21 / 40;
  3: 3.3 / 14 / 26; 5: 4.5 / 11.8 / 20.5; 6: 8.2 / 15.5 / 24; 8: 18 / 25 / 34.
"""

from __future__ import annotations

from typing import NamedTuple

import tvm
from tvm import s_tir, te, tirx
from tvm.target import codegen

from ..quant.reference import ActBlocks
from .quant_matmul import scale_index, sx_index, unpack_code

__all__ = [
    "INDEX_BLOCK",
    "OUT_BLOCK",
    "PLANES_BLOCK",
    "SUMS_BLOCK",
    "TABLE_BLOCK",
    "LutLayout",
    "is_lut_gemv_func",
    "lut_gemv_te",
    "lut_layout",
    "schedule_lut_gemv",
    "vector_lanes",
]

#: Block names of the stages; :func:`is_lut_gemv_func` recognises the kernel by them.
INDEX_BLOCK = "lut_gemv_index"
TABLE_BLOCK = "lut_gemv_table"
PLANES_BLOCK = "lut_gemv_planes"
SUMS_BLOCK = "lut_gemv_sums"
OUT_BLOCK = "lut_gemv_out"

#: dtype of table entries, plane sums and indices (|entry| <= 8 * 255; indices < 2**8).
_TABLE_DTYPE = "int16"
_INT16_MAX = 2**15 - 1
#: Table bytes per block and column tile: half of a 32 KiB L1 data cache (an assumption that
#: holds on x86 and ARM server cores), sized for 16 int16 columns.
_TABLE_TILE_BYTES = 16 * 1024
_TABLE_ROW_BYTES = 16 * 2
#: Column tiles per parallel task, walked one after the other for each group (module
#: docstring: whole cache lines and pages of ``packed`` are used at once).
_SUPER_TILE = 32


class LutLayout(NamedTuple):
    """How one group's rows are cut into chunks (of NBW rows) and blocks (of chunks)."""

    #: ``ceil(g / NBW)``: chunks holding the group's rows.
    chunks_per_group: int
    #: Chunks whose tables are built together and whose int16 plane sums are shifted together.
    chunks_per_block: int
    #: ``ceil(chunks_per_group / chunks_per_block)``; the last block may hold padding chunks.
    blocks_per_group: int


def lut_layout(bits: int, group_size: int, nbw: int) -> LutLayout:
    """The chunk and block layout of one group.

    A block holds as many chunks as keep the int16 plane sums exact
    (``chunks * NBW * (2**b - 1) <= 32767``) and its int16 tables (16 columns wide) within
    16 KiB, and the blocks of a group are made equal in size.

    Parameters
    ----------
    bits
        Weight code width b, 1..8.
    group_size
        Rows g of one group.
    nbw
        Rows per chunk (weights per table), 1..8.

    Returns
    -------
    LutLayout
        The layout; ``blocks_per_group * chunks_per_block >= chunks_per_group``.
    """
    chunks = -(-group_size // nbw)
    exact = _INT16_MAX // (nbw * ((1 << bits) - 1))
    cached = _TABLE_TILE_BYTES // ((1 << nbw) * _TABLE_ROW_BYTES)
    widest = max(1, min(exact, cached, chunks))
    blocks = -(-chunks // widest)
    return LutLayout(chunks, -(-chunks // blocks), blocks)


def _i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


def lut_gemv_te(xq: te.Tensor, packed: te.Tensor, zero: te.Tensor, *, bits: int,
                group_size: int, k: int, act_bits: int, nbw: int, sx: te.Tensor | None = None,
                scale: te.Tensor | None = None, fence: bool = True,
                act_group: int | None = None) -> te.Tensor:
    """TE computation of ``sail.lut_gemv`` (module docstring: stages and their names).

    Parameters
    ----------
    xq
        int8 (``act_bits <= 8``) or int16 ``[..., K]`` quantized activations in
        ``[-(2**(b_a-1) - 1), 2**(b_a-1) - 1]``; any number of leading dims, static or
        symbolic. Not padded: columns ``k >= K`` of the padded groups count as 0.
    packed
        uint8 ``[ceil(K_pad * b / 8), N]``: codes ``q[K_pad, N]`` packed along K
        (:mod:`sail_compiler.quant.packing`), ``K_pad = n_groups * g``; padding rows equal
        their group's zero point.
    zero
        int32 ``[n_groups, N]`` zero points (``2**(b-1)`` for symmetric weights).
    bits
        Weight code width b, 1..8.
    group_size
        Rows g per group; any value >= 1 (``g % NBW`` and ``K % g`` arbitrary).
    k
        The reduction length K (``xq.shape[-1]``).
    act_bits
        Activation width b_a, 2..16: the number of bit planes.
    nbw
        Weights per table (NBW), 1..8: tables have ``2**NBW`` entries.
    sx, scale
        float32 ``[..., ceil(K / A)]`` activation scales (``[...]``: one per row) and float32
        ``[n_groups, N]`` weight scales. With both, the dequantization is fused and the result
        is float32.
    fence
        Wrap each float32 product in ``llvm.arithmetic.fence`` (no FMA contraction: the result
        is bit-identical to the reference). Only LLVM code generators know the intrinsic.
    act_group
        Columns A per activation scale (None: one per row); sets the sum blocks.

    Returns
    -------
    te.Tensor
        int32 ``[..., J, N]`` sums ``S`` per sum block (exact; the caller guarantees they fit in
        int32, see :func:`~sail_compiler.ops.quant_matmul.max_abs_group_sum`), or float32
        ``[..., N]`` ``y = sum_j (scale * sx) * float32(S)`` with ``sx`` and ``scale``.
    """
    if (sx is None) != (scale is None):
        raise ValueError("lut_gemv_te fuses the dequantization only with both sx and scale")
    act = ActBlocks(int(k), int(group_size), int(k) if act_group is None else int(act_group))
    g = act.sum_size  # the kernel's groups are the sum blocks
    n_groups = _i64(act.n_sums)
    n_groups_int = act.n_sums
    cols = zero.shape[1]
    weight_rows = int(zero.shape[0]) * act.group_size  # K_pad of packed

    def weight_group(grp: tirx.PrimExpr) -> tirx.PrimExpr:
        return grp if g == act.group_size else tirx.floordiv(grp * g, act.group_size)

    layout = lut_layout(bits, g, nbw)
    cpb, blocks = layout.chunks_per_block, layout.blocks_per_group
    chunks_per_group = cpb * blocks  # padded: the extra chunks hold only padding rows
    n_chunks = n_groups_int * chunks_per_group
    k_pad = n_groups_int * g
    lead = list(xq.shape[:-1])
    dtype = _TABLE_DTYPE
    # Rows of a padded chunk may lie beyond the group or beyond K: they count as xq = 0.
    row_check = chunks_per_group * nbw != g
    k_check = k_pad != k

    def index(*ix: tirx.Var) -> tirx.PrimExpr:
        *t, c, plane = ix
        grp, cc = c // chunks_per_group, c % chunks_per_group
        acc = tirx.const(0, "int32")
        for j in range(nbw):
            row = cc * nbw + j
            kk = grp * g + row
            x = xq[(*t, tirx.min(kk, k - 1))].astype("int32")
            bit = (x >> plane.astype("int32")) & 1  # bit i of the two's-complement code
            valid = [cond for cond, needed in ((row < g, row_check), (kk < k, k_check))
                     if needed]
            if valid:
                bit = tirx.Select(tirx.all(*valid), bit, tirx.const(0, "int32"))
            acc = acc + (bit << j)
        return acc.astype(dtype)

    idx = te.compute([*lead, _i64(n_chunks), _i64(act_bits)], index, name=INDEX_BLOCK)

    def table(c: tirx.Var, p: tirx.Var, n: tirx.Var) -> tirx.PrimExpr:
        grp, cc = c // chunks_per_group, c % chunks_per_group
        # Padding rows read some valid code: entries with their bit set are never looked up.
        acc = tirx.const(0, dtype)
        for j in range(nbw):
            kk = tirx.min(grp * g + cc * nbw + j, min(k_pad, weight_rows) - 1)
            w = unpack_code(packed, kk, n, bits, dtype) - zero[weight_group(grp), n].astype(dtype)
            take = ((p.astype("int32") >> j) & 1) == 1
            acc = acc + tirx.Select(take, w, tirx.const(0, dtype))
        return acc

    lut = te.compute([_i64(n_chunks), _i64(1 << nbw), cols], table, name=TABLE_BLOCK)
    rb = te.reduce_axis((_i64(0), _i64(cpb)), name="rb")

    def planes(*ix: tirx.Var) -> tirx.PrimExpr:
        *t, grp, blk, plane, n = ix
        c = (grp * blocks + blk) * cpb + rb
        # The clamp bounds the data-dependent read, which compute_at needs.
        p = tirx.min(tirx.max(idx[(*t, c, plane)].astype("int32"), 0), (1 << nbw) - 1)
        return te.sum(lut[c, p.astype("int64"), n], axis=rb)

    plane_sums = te.compute([*lead, n_groups, _i64(blocks), _i64(act_bits), cols], planes,
                            name=PLANES_BLOCK)
    rblk = te.reduce_axis((_i64(0), _i64(blocks)), name="rblk")
    ri = te.reduce_axis((_i64(0), _i64(act_bits)), name="ri")

    def shift_accumulate(*ix: tirx.Var) -> tirx.PrimExpr:
        *t, grp, n = ix
        weight = tirx.const(1, "int32") << ri.astype("int32")
        coef = tirx.Select(ri == act_bits - 1, -weight, weight)  # the sign plane subtracts
        return te.sum(plane_sums[(*t, grp, rblk, ri, n)].astype("int32") * coef,
                      axis=[rblk, ri])

    sums = te.compute([*lead, n_groups, cols], shift_accumulate, name=SUMS_BLOCK)
    if sx is None:
        return sums
    grp_axis = te.reduce_axis((_i64(0), n_groups), name="grp")

    def dequantize(*ix: tirx.Var) -> tirx.PrimExpr:
        *t, n = ix
        term = (scale_index(scale, grp_axis, n, act) * sx_index(sx, t, grp_axis, act)) \
            * sums[(*t, grp_axis, n)].astype("float32")
        if fence:
            term = tirx.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", term)
        return te.sum(term, axis=grp_axis)

    return te.compute([*lead, cols], dequantize, name=OUT_BLOCK)


def _vector_bits(target: tvm.target.Target) -> int:
    """Return the SIMD register width of ``target`` in bits.

    ``codegen.llvm_get_vector_width`` answers 512 for every x86 CPU in TVM 0.27 (znver3 and
    haswell included), so the width is derived from the CPU features instead.
    """
    try:
        if codegen.llvm_cpu_has_features(["avx512f"], target):
            return 512
        if codegen.llvm_cpu_has_features(["avx"], target):
            return 256
    except Exception:  # noqa: BLE001 - feature query unsupported for this target
        pass
    return 128


def vector_lanes(target: tvm.target.Target, dtype: str) -> int:
    """Return the number of ``dtype`` lanes in one SIMD register of ``target``."""
    bits = tvm.DataType(dtype).bits
    return max(2, _vector_bits(target) // max(bits, 8))


def _blocks_of(func: tirx.PrimFunc) -> set[str]:
    """Names of the LUT-GEMV stages present in ``func``."""
    try:
        sch = s_tir.Schedule(func)
    except Exception:  # noqa: BLE001 - not schedulable block TIR (e.g. already lowered)
        return set()
    found = set()
    for name in (INDEX_BLOCK, TABLE_BLOCK, PLANES_BLOCK, SUMS_BLOCK, OUT_BLOCK):
        try:
            sch.get_sblock(name)
        except Exception:  # noqa: BLE001 - get_sblock raises when there is no such block
            continue
        found.add(name)
    return found


def is_lut_gemv_func(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is an (unscheduled) :func:`lut_gemv_te` kernel, by its block names."""
    if not isinstance(func, tirx.PrimFunc):
        return False
    return {INDEX_BLOCK, TABLE_BLOCK, PLANES_BLOCK, SUMS_BLOCK} <= _blocks_of(func)


def _column_tile(cols: tirx.PrimExpr, lanes: int) -> int:
    """Columns per tile: ``lanes``, or the largest power of two below it that divides N."""
    if not isinstance(cols, tirx.IntImm):
        return 1
    tile = lanes
    while int(cols) % tile:
        tile //= 2
    return tile


def _super_tile(cols: tirx.PrimExpr, tile: int, cores: int) -> int:
    """Column tiles per parallel task: up to :data:`_SUPER_TILE`, dividing N, while leaving at
    least two tasks per core."""
    sub = _SUPER_TILE
    while sub > 1 and (not isinstance(cols, tirx.IntImm) or int(cols) % (sub * tile)
                       or int(cols) // (sub * tile) < 2 * cores):
        sub //= 2
    return sub


def _fuse_rows(sch: s_tir.Schedule, rows: list[s_tir.schedule.LoopRV],
               before: s_tir.schedule.LoopRV) -> s_tir.schedule.LoopRV:
    """The row loops fused into one (a unit loop above ``before`` when there are none)."""
    if not rows:
        return sch.add_unit_loop(before)
    return sch.fuse(*rows) if len(rows) > 1 else rows[0]


def schedule_lut_gemv(func: tirx.PrimFunc,
                      target: tvm.target.Target) -> s_tir.Schedule | None:
    """CPU schedule of a :func:`lut_gemv_te` kernel (module docstring: the loop nest).

    Parameters
    ----------
    func
        A PrimFunc made from :func:`lut_gemv_te` (``te.create_prim_func`` or
        ``BlockBuilder.call_te``), with any static or symbolic leading dims.
    target
        The ``llvm`` target; its SIMD width sets the column tile (16 int16 lanes with AVX2).

    Returns
    -------
    s_tir.Schedule or None
        The schedule, or None when ``func`` is not a LUT-GEMV kernel.
    """
    if not is_lut_gemv_func(func):
        return None
    sch = s_tir.Schedule(func)
    fused = OUT_BLOCK in _blocks_of(func)
    index, table = sch.get_sblock(INDEX_BLOCK), sch.get_sblock(TABLE_BLOCK)
    planes, sums = sch.get_sblock(PLANES_BLOCK), sch.get_sblock(SUMS_BLOCK)
    cols = sch.get(sums).writes[0].source.shape[-1]
    tile = _column_tile(cols, vector_lanes(target, _TABLE_DTYPE))
    sub = _super_tile(cols, tile, int(target.attrs.get("num-cores") or 1))
    if fused:
        out = sch.get_sblock(OUT_BLOCK)
        *rows, n, grp = sch.get_loops(out)
        t = _fuse_rows(sch, rows, n)
        n_o, n_sub, n_i = sch.split(n, [None, sub, tile])
        sch.reorder(n_o, grp, n_sub, t, n_i)
        sch.parallel(n_o)
        write_back = sch.cache_write(out, 0, "global")
        sch.reverse_compute_at(write_back, n_o, preserve_unit_loops=True)
        sch.compute_at(sums, n_sub, preserve_unit_loops=True)
        # sums: [n_o, grp, n_sub | rows, grp (unit), n, blk, i] -> [... | blk, t, i, n]
        *s_rows, _, s_n, s_blk, s_i = sch.get_loops(sums)[3:]
        if s_rows:
            s_t = sch.fuse(*s_rows) if len(s_rows) > 1 else s_rows[0]
            sch.reorder(s_blk, s_t, s_i, s_n)
        else:
            sch.reorder(s_blk, s_i, s_n)
            s_t = sch.add_unit_loop(s_i)
    else:
        *rows, grp, n, s_blk, s_i = sch.get_loops(sums)
        s_t = _fuse_rows(sch, rows, grp)
        n_o, n_sub, s_n = sch.split(n, [None, sub, tile])
        sch.reorder(n_o, grp, n_sub, s_blk, s_t, s_i, s_n)
        sch.parallel(n_o)
    sch.compute_at(planes, s_t, preserve_unit_loops=True)
    sch.compute_at(table, s_blk, preserve_unit_loops=True)
    # planes: [... | rows, grp, blk (units), i, n, chunk] -> chunk, i (unrolled), n (vector)
    p_i, p_n, p_chunk = sch.get_loops(planes)[-3:]
    sch.reorder(p_chunk, p_i, p_n)
    sch.unroll(p_i)
    # table: [... | chunk, p, n]: constant p folds each entry to a plain sum of weights
    t_p, t_n = sch.get_loops(table)[-2:]
    sch.unroll(t_p)
    sch.unroll(s_i)
    if tile > 1:
        # Before decompose_reduction, which copies the loop kinds to the init blocks (a loop
        # over an update block without its init can no longer be vectorized).
        for loop in (p_n, t_n, s_n, *([n_i] if fused else [])):
            sch.vectorize(loop)
    sch.decompose_reduction(planes, p_chunk)
    sch.decompose_reduction(sums, s_blk)
    if fused:
        sch.decompose_reduction(out, grp)
        if tile > 1:
            sch.vectorize(sch.get_loops(write_back)[-1])
    # The indices: parallel over (rows, chunks); the b_a planes stay an inner loop.
    loops = sch.get_loops(index)
    sch.parallel(sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0])
    return sch
