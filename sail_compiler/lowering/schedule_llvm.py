"""ScheduleLLVM: default (tuning-free) CPU schedules for every unscheduled PrimFunc.

Plain ``relax.build`` on CPU leaves every TIR function unscheduled: loops run serially and
scalar, so a 1x4096 @ 4096x4096 GEMV takes ~145 ms instead of a few milliseconds. The pass
applies rules to every PrimFunc, the first that succeeds wins:

* LUT-GEMV rule: the ``sail.lut_gemv`` kernel gets its own schedule
  (:func:`~sail_compiler.ops.lut_kernel.schedule_lut_gemv`);
* matmul rule: every reduction block is ``C += A * B`` with ``B`` contiguous along the
  output column ``n`` (packed panels of :class:`~.pack_matmul_weights.PackMatmulWeights`, weights
  ``[K, N]``, attention ``[b, h, d, s2]``). Row-like axes are fused into ``M``; a block whose
  ``M`` is provably a multiple of 4 gets a 4x16 register tile (8 AVX2 accumulators), any other a
  1x16 tile (so ``M = 1`` decoding does no padded work). Loops are ``[panel (parallel), row
  tile, k, row (unrolled), column (vectorized)]``; the accumulators live in a small
  ``cache_write`` buffer of scope ``global``, which TVM puts on the stack and LLVM promotes to
  registers (scope ``local`` goes through ``TVMBackendAllocWorkspace`` and the accumulators were
  stored to memory on every ``k``: 2x slower). Batched matmuls run the batch in parallel.
  Elementwise epilogues are reverse-inlined into the output copy when that is safe, else
  scheduled as elementwise loop nests.
* dlight's CPU ``Reduction`` rule (softmax, RMSNorm), used only when all blocks share their
  leading spatial axes (with unit dims normalized away it recomputed a row reduction once per
  element), then dlight's CPU ``GEMV`` rule.
* a row rule for blocks sharing leading spatial axes but not their last ones (the activation
  quantizer: per-block absmax, scales, codes): every block computed at one parallel row loop;
* a generic rule: the outer loops of each block fused into one parallel loop (when large
  enough), the innermost loop of injective blocks vectorized.

Every schedule must pass ``s_tir.analysis.verify_well_formed`` and a trial run of TVM's TIR
lowering (no codegen), else the next rule is tried; a PrimFunc that no rule schedules stays
unscheduled: slow but correct. Runs last in :func:`~.pipeline.lowering_passes`, after fusion.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import tvm
from tvm import s_tir, sym, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import SBlockInfo, normalize_prim_func

from ..errors import tvm_message
from ..ops.lut_kernel import schedule_lut_gemv, vector_lanes
from .pack_matmul_weights import TILE_M

__all__ = ["ScheduleLLVM"]

logger = logging.getLogger(__name__)

_get_sblock_realize = tvm.get_global_func("s_tir.schedule.GetSBlockRealize")

#: Element types the LLVM backend vectorizes directly (others are legalized after
#: vectorization; FP8 casts then failed with "if_then_else can only take scalar condition").
_VECTOR_DTYPES = frozenset(
    {"float16", "float32", "float64", "bool"}
    | {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}
)
#: Loops with a static extent below this are not worth a parallel launch.
_MIN_PARALLEL_EXTENT = 2
#: Elementwise loop nests with fewer elements than this stay serial.
_MIN_PARALLEL_ELEMENTS = 16384

_BINARY_OPS = (
    tirx.Add,
    tirx.Sub,
    tirx.Mul,
    tirx.FloorDiv,
    tirx.FloorMod,
    tirx.Div,
    tirx.Mod,
    tirx.Min,
    tirx.Max,
)

_ScheduleFn = Callable[[tirx.PrimFunc, tvm.target.Target], "s_tir.Schedule | None"]


def _extent(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> int | tirx.PrimExpr:
    """Return a loop extent as ``int`` when static, else the expression."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else ext


class _NoMatch(Exception):
    """Raised by the expression walkers on a node they do not understand."""


def _vars_in(expr: tirx.PrimExpr) -> set[tirx.Var]:
    """Return the variables of an index expression (affine arithmetic, div/mod, casts)."""
    if isinstance(expr, tirx.Var):
        return {expr}
    if isinstance(expr, (tirx.IntImm, tirx.FloatImm)):
        return set()
    if isinstance(expr, tirx.Cast):
        return _vars_in(expr.value)
    if isinstance(expr, _BINARY_OPS):
        return _vars_in(expr.a) | _vars_in(expr.b)
    raise _NoMatch(type(expr).__name__)


def _lane_safe(expr: object, lane: tirx.Var) -> bool:
    """Whether ``expr`` can be vectorized along ``lane`` by TVM 0.27's LLVM codegen.

    The codegen rejects ``if_then_else`` with a vector condition ("if_then_else can only take
    scalar condition", e.g. FP8 cast legalization), so such a condition must not depend on the
    lane variable or on loaded data. Unknown node kinds count as unsafe.
    """
    if isinstance(expr, (tirx.Var, tirx.IntImm, tirx.FloatImm, tvm.ir.TensorLoad)):
        return True
    if isinstance(expr, tvm.ir.Call):
        if getattr(expr.op, "name", "") == "prim.if_then_else":
            cond = expr.args[0]
            try:
                if lane in _vars_in(cond):
                    return False
            except _NoMatch:
                return False
        return all(_lane_safe(arg, lane) for arg in expr.args)
    if isinstance(expr, tirx.Select):
        return all(_lane_safe(e, lane) for e in (expr.condition, expr.true_value, expr.false_value))
    if isinstance(expr, tirx.Cast):
        return _lane_safe(expr.value, lane)
    if hasattr(expr, "a") and hasattr(expr, "b"):
        return _lane_safe(expr.a, lane) and _lane_safe(expr.b, lane)
    if hasattr(expr, "a"):
        return _lane_safe(expr.a, lane)
    return False


def _loads(expr: tirx.PrimExpr) -> list[tvm.ir.TensorLoad]:
    """Return the buffer loads of a product of (possibly cast) loads."""
    if isinstance(expr, tvm.ir.TensorLoad):
        return [expr]
    if isinstance(expr, tirx.Cast):
        return _loads(expr.value)
    if isinstance(expr, tirx.Mul):
        return _loads(expr.a) + _loads(expr.b)
    raise _NoMatch(type(expr).__name__)


class _MatmulPattern:
    """Roles of a matched ``C[..] += A[..] * B[..]`` block."""

    def __init__(
        self,
        outer: list[int],
        rows: list[int],
        col: int,
        red: int,
        packed_width: int | None,
    ) -> None:
        self.outer = outer  # iterator positions used by the output and B (batch, extra cols)
        self.rows = rows  # iterator positions used by the output and A only (M)
        self.col = col  # the innermost output position, contiguous in B (N)
        self.red = red  # the reduction position (K)
        self.packed_width = packed_width  # P when B is read as B[n // P, k, n % P]


def _match_matmul(block: s_tir.SBlock) -> _MatmulPattern | None:
    """Match a reduction block of the form ``C[s...] = C[s...] + A[...] * B[...]``."""
    try:
        return _match_matmul_unchecked(block)
    except _NoMatch:
        return None


def _match_matmul_unchecked(block: s_tir.SBlock) -> _MatmulPattern | None:
    """Body of :func:`_match_matmul`; raises ``_NoMatch`` on unknown expressions."""
    store = block.body
    if not isinstance(store, tirx.BufferStore) or block.init is None:
        return None
    init = block.init
    if not isinstance(init, tirx.BufferStore) or not isinstance(
        init.value, (tirx.FloatImm, tirx.IntImm)
    ):
        return None
    if float(init.value.value) != 0.0:
        return None
    value = store.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = value.a, value.b
    if not isinstance(acc, tvm.ir.TensorLoad):
        acc, prod = prod, acc
    if not isinstance(acc, tvm.ir.TensorLoad) or not acc.source.same_as(store.buffer):
        return None
    operands = _loads(prod)
    if len(operands) != 2 or any(op.source.same_as(store.buffer) for op in operands):
        return None

    iter_vars = [iv.var for iv in block.iter_vars]
    kinds = [iv.iter_type for iv in block.iter_vars]
    spatial = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.DataPar]
    reduce = [i for i, kind in enumerate(kinds) if kind == tirx.IterVar.CommReduce]
    if len(reduce) != 1 or len(spatial) + 1 != len(kinds):
        return None
    # Unit dims show up as constant indices after normalization.
    out_idx = [idx for idx in store.indices if not isinstance(idx, tirx.IntImm)]
    if len(out_idx) != len(spatial) or any(
        not idx.same_as(iter_vars[pos]) for idx, pos in zip(out_idx, spatial, strict=True)
    ):
        return None
    col = spatial[-1]
    col_var = iter_vars[col]

    def uses(load: tvm.ir.TensorLoad) -> set[tirx.Var]:
        found: set[tirx.Var] = set()
        for idx in load.indices:
            found |= _vars_in(idx)
        return found

    # B is the operand whose last index is the output column.
    a_load, b_load = operands
    if col_var not in uses(b_load):
        a_load, b_load = b_load, a_load
    if col_var not in uses(b_load) or col_var in uses(a_load):
        return None
    last = b_load.indices[-1]
    packed_width = None
    if isinstance(last, tirx.FloorMod) and last.a.same_as(col_var):
        if not isinstance(last.b, tirx.IntImm):
            return None
        packed_width = int(last.b)
        for idx in b_load.indices[:-1]:
            if col_var in _vars_in(idx) and not (
                isinstance(idx, tirx.FloorDiv)
                and idx.a.same_as(col_var)
                and isinstance(idx.b, tirx.IntImm)
                and int(idx.b) == packed_width
            ):
                return None
    elif not last.same_as(col_var):
        return None
    elif any(col_var in _vars_in(idx) for idx in b_load.indices[:-1]):
        return None

    red_var = iter_vars[reduce[0]]
    a_uses, b_uses = uses(a_load), uses(b_load)
    if red_var not in a_uses or red_var not in b_uses:
        return None
    outer: list[int] = []
    rows: list[int] = []
    for pos in spatial[:-1]:
        var = iter_vars[pos]
        if var in a_uses and var not in b_uses:
            rows.append(pos)
        else:
            outer.append(pos)
    return _MatmulPattern(outer, rows, col, reduce[0], packed_width)


def _tile_matmul_part(
    sch: s_tir.Schedule,
    block: s_tir.schedule.SBlockRV,
    tile_m: int,
    tile_n: int,
    vectorize: bool,
    parallel: bool,
) -> None:
    """Register-tile one matmul block whose loops are ``[outer?, m, n, k]``.

    The accumulators of a ``tile_m x tile_n`` tile live in a small ``global``-scope cache (on
    the stack, so LLVM keeps it in registers); loops become ``[n_o, m_o, k, m_i (unrolled),
    n_i (vectorized)]``. A one-row tile covers two column groups instead (``m_i`` is then the
    unrolled group loop) when ``N`` allows.
    """
    loops = sch.get_loops(block)
    m_loop, n_loop, k_loop = loops[-3:]
    n_ext = _extent(sch, n_loop)
    if tile_m == 1 and vectorize and _prove_multiple(n_ext, 2 * tile_n):
        # One row: two column groups per tile, so 4 independent AVX2 FMA chains, not 2.
        n_o, n_g, n_i = sch.split(n_loop, [None, 2, tile_n])
    else:
        (n_o, n_i), n_g = sch.split(n_loop, [None, tile_n]), None
    if tile_m > 1:
        m_o, m_i = sch.split(m_loop, [None, tile_m])
        sch.reorder(n_o, m_o, k_loop, m_i, n_i)
    else:
        m_o, m_i = m_loop, n_g
        if n_g is None:
            sch.reorder(n_o, m_o, k_loop, n_i)
        else:
            sch.reorder(n_o, m_o, k_loop, n_g, n_i)
    if parallel:
        sch.parallel(n_o)
    write_back = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(write_back, m_o, preserve_unit_loops=True)
    if m_i is not None:
        sch.unroll(m_i)
    if vectorize:
        sch.vectorize(n_i)
    sch.decompose_reduction(block, k_loop)
    if vectorize:
        sch.vectorize(sch.get_loops(write_back)[-1])


def _try_reverse_inline(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Reverse-inline ``block`` into its producer if that producer has no other consumer.

    TVM 0.27's ``reverse_compute_inline`` does not check this itself: with ``x * sigmoid(x)``
    it inlined the sigmoid and dropped ``x`` while the multiply still read it (ill-formed IR).
    """
    try:
        producers = sch.get_producers(block)
        if len(producers) != 1:
            return False
        consumers = sch.get_consumers(producers[0])
        if len(consumers) != 1 or not sch.get(consumers[0]).same_as(sch.get(block)):
            return False
        sch.reverse_compute_inline(block)
        return True
    except Exception:  # noqa: BLE001 - stays a separate loop nest
        return False


def _prove_multiple(extent: int | tirx.PrimExpr, factor: int) -> bool:
    """Whether ``extent`` is provably a multiple of ``factor``."""
    if isinstance(extent, int):
        return extent % factor == 0
    analyzer = sym.Analyzer()
    return bool(analyzer.can_prove(tirx.floormod(extent, factor) == 0))


def _schedule_one_matmul(
    sch: s_tir.Schedule,
    info: SBlockInfo,
    pattern: _MatmulPattern,
    lanes: int,
) -> None:
    """Tile one matched matmul block (see :func:`_schedule_matmul`)."""
    block = info.block_rv
    tile_n = pattern.packed_width or 2 * lanes
    loops = sch.get_loops(block)
    if len(loops) != len(info.iters):
        raise _NoMatch("block is not in normal form")
    order = [*pattern.outer, *pattern.rows, pattern.col, pattern.red]
    sch.reorder(*[loops[i] for i in order])
    loops = sch.get_loops(block)
    n_outer, n_rows = len(pattern.outer), len(pattern.rows)
    row_loops = loops[n_outer : n_outer + n_rows]
    # The row loop to tile ends up third from the end: [outer, other rows, m, n, k].
    tile_m = 1
    if n_rows == 0:
        sch.add_unit_loop(loops[n_outer])
    elif _prove_multiple(_extent(sch, row_loops[-1]), TILE_M):
        # Tile the last row axis alone: a tile of a fused [g, s] row axis would straddle
        # rows of different g and the write-back region would become a bounding box.
        tile_m = TILE_M
    elif n_rows > 1:
        sch.fuse(*row_loops)
    parallel_outer = False
    if n_outer:
        outer_loop = sch.fuse(*loops[:n_outer]) if n_outer > 1 else loops[0]
        ext = _extent(sch, outer_loop)
        parallel_outer = not isinstance(ext, int) or ext >= _MIN_PARALLEL_EXTENT
        if parallel_outer:
            sch.parallel(outer_loop)
    n_ext = _extent(sch, sch.get_loops(block)[-2])
    vectorize = _prove_multiple(n_ext, tile_n)
    if not vectorize and isinstance(n_ext, int) and n_ext < tile_n:
        tile_n = max(1, n_ext)
    _tile_matmul_part(sch, block, tile_m, tile_n, vectorize, not parallel_outer)


def _try_pad(sch: s_tir.Schedule, info: SBlockInfo, pattern: _MatmulPattern, lanes: int) -> bool:
    """Pad an activation x activation matmul (e.g. attention) to whole register tiles.

    ``pad_einsum`` pads the last row axis to a multiple of ``TILE_M`` and the column axis to
    a multiple of two vectors when their extents (symbolic ``seq``, ``past + seq``) are not
    provably aligned, copying the operands into zero-padded buffers; the tiles then need no
    predicate and the columns vectorize. Weight matmuls are handled by packing instead.
    """
    block = sch.get(info.block_rv)
    extents = [iv.dom.extent for iv in block.iter_vars]
    padding = [1] * len(extents)
    tile_n = 2 * lanes
    if not _prove_multiple(_as_int(extents[pattern.col]), tile_n):
        padding[pattern.col] = tile_n
    if pattern.rows and not _prove_multiple(_as_int(extents[pattern.rows[-1]]), TILE_M):
        padding[pattern.rows[-1]] = TILE_M
    if all(p == 1 for p in padding):
        return False
    try:
        sch.pad_einsum(info.block_rv, padding)
        return True
    except Exception:  # noqa: BLE001 - not an einsum; tiles keep their predicates
        return False


def _as_int(expr: tirx.PrimExpr) -> int | tirx.PrimExpr:
    """``int`` for a constant expression, the expression itself otherwise."""
    return int(expr) if isinstance(expr, tirx.IntImm) else expr


def _schedule_matmul(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """Matmul rule: register-tiled GEMM blocks plus generic scheduling of the other blocks.

    Every reduction block must be a matmul with the output column contiguous in ``B``. A block
    whose fused row extent is provably a multiple of ``TILE_M`` gets a ``TILE_M x 16`` tile,
    any other a ``1 x 16`` tile (no predicates inside the tile either way). Other blocks:
    injective producers are inlined where possible, epilogues reverse-inlined, the rest get
    the generic elementwise schedule.
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    reductions = [info for info in infos if not info.is_injective()]
    if not reductions:
        return None
    first = min(i for i, b in enumerate(infos) if not b.is_injective())
    for producer in infos[:first]:
        try:
            sch.compute_inline(producer.block_rv)
        except Exception:  # noqa: BLE001 - not inlinable; scheduled as elementwise below
            pass
    patterns = []
    for info in reductions:
        pattern = _match_matmul(sch.get(info.block_rv))
        if pattern is None:
            return None
        if pattern.packed_width is not None and pattern.packed_width % 2:
            return None
        patterns.append(pattern)
    out_dtype = sch.get(reductions[0].block_rv).body.buffer.dtype
    lanes = vector_lanes(target, out_dtype)
    padded = [
        _try_pad(sch, info, pattern, lanes)
        for info, pattern in zip(reductions, patterns, strict=True)
        if pattern.packed_width is None
    ]
    if any(padded):
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        reductions = [info for info in infos if not info.is_injective()]
        first = min(i for i, b in enumerate(infos) if not b.is_injective())
        patterns = [_match_matmul(sch.get(info.block_rv)) for info in reductions]
        if any(p is None for p in patterns):
            return None
    # Epilogues: inline chains of elementwise consumers into their producer.
    tail = [b for b in infos[first:] if b.is_injective()]
    for consumer in tail[1:]:
        _try_reverse_inline(sch, consumer.block_rv)
    for info, pattern in zip(reductions, patterns, strict=True):
        _schedule_one_matmul(sch, info, pattern, lanes)
    for other in infos:
        if not other.is_injective():
            continue
        try:
            _schedule_injective_block(sch, other.block_rv, lanes)
        except Exception:  # noqa: BLE001 - block was inlined or cannot be scheduled
            continue
    return sch


def _schedule_injective_block(
    sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, lanes: int
) -> bool:
    """Parallelize the outer loops and vectorize the innermost loop of one spatial block.

    Returns
    -------
    bool
        Whether anything was changed.
    """
    loops = sch.get_loops(block)
    if not loops:
        return False
    block_stmt = sch.get(block)
    if any(iv.iter_type != tirx.IterVar.DataPar for iv in block_stmt.iter_vars):
        return False
    if any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops):
        return False
    inner_ext = _extent(sch, loops[-1])
    total: int | None = 1
    for loop in loops:
        ext = _extent(sch, loop)
        total = total * ext if isinstance(ext, int) and total is not None else None
    changed = _vectorize_innermost(sch, block, lanes)
    if total is not None and total < _MIN_PARALLEL_ELEMENTS:
        return changed
    loops = sch.get_loops(block)
    if len(loops) > 1:
        # The innermost loop stays out of the fused loop: the fused index is split back into
        # coordinates with divisions, once per row instead of once per element.
        outer = loops[:-1]
        sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
    elif not isinstance(inner_ext, int):
        outer, _ = sch.split(loops[0], [None, 4096])
        sch.parallel(outer)
    else:
        sch.parallel(loops[0])
    return True


def _vectorize_innermost(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV,
                         lanes: int) -> bool:
    """Vectorize ``block``'s innermost loop when it is lane-safe and static: split by
    ``lanes`` if it is a multiple of them, whole if it has 2..lanes iterations. Returns
    whether it did."""
    inner = sch.get_loops(block)[-1]
    inner_ext = _extent(sch, inner)
    if not (isinstance(inner_ext, int) and _inner_lane_safe(sch, block)):
        return False
    if inner_ext > lanes and inner_ext % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
        return True
    if 2 <= inner_ext <= lanes:
        sch.vectorize(inner)
        return True
    return False


def _inner_lane_safe(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> bool:
    """Whether the innermost loop of ``block`` can be vectorized (see :func:`_lane_safe`)."""
    try:
        stmt = sch.get(block)
        loop_var = sch.get(sch.get_loops(block)[-1]).loop_var
        realize = _get_sblock_realize(sch, block)
        lanes = [
            iv.var
            for iv, value in zip(stmt.iter_vars, realize.iter_values, strict=True)
            if loop_var in _vars_in(value)
        ]
        body = stmt.body
        if not isinstance(body, tirx.BufferStore):
            return False
        dtypes = {str(r.source.dtype) for r in [*stmt.reads, *stmt.writes]}
        if not dtypes <= _VECTOR_DTYPES:
            return False  # bf16 / fp8 / fp4 are legalized after vectorization
        return all(_lane_safe(body.value, lane) for lane in lanes)
    except Exception:  # noqa: BLE001 - unknown structure: do not vectorize
        return False


def _schedule_reduction_block(sch: s_tir.Schedule, info: SBlockInfo) -> bool:
    """Parallelize the leading spatial loops of a generic reduction block.

    Returns
    -------
    bool
        Whether anything was changed.
    """
    loops = sch.get_loops(info.block_rv)
    kinds = info.dom_kind()
    if len(loops) != len(kinds):
        return False
    lead = len(kinds) - len(kinds.lstrip("S"))
    if lead == 0:
        return False
    if any(sch.get(loop).kind != tirx.ForKind.SERIAL for loop in loops[:lead]):
        return False
    outer = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    ext = _extent(sch, outer)
    if isinstance(ext, int) and ext < _MIN_PARALLEL_EXTENT:
        return False
    sch.parallel(outer)
    return True


def _block_size(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV) -> tirx.PrimExpr:
    """The number of points in ``block``'s iteration domain (product of its iter var extents)."""
    size: tirx.PrimExpr = tirx.IntImm("int64", 1)
    for iv in sch.get(block).iter_vars:
        size = size * iv.dom.extent
    return size


def _inline_elementwise_chains(sch: s_tir.Schedule) -> bool:
    """Inline every spatial block into its consumers when that recomputes nothing.

    FuseTIR writes a fused elementwise chain (e.g. the tanh-GELU: ``x^3``, scale, add,
    ``tanh``, ...) as one block per op with an intermediate buffer between each: one pass over
    the activations per op. A producer is inlined only when every consumer's domain has as
    many points as its own, so a per-row value (a norm's ``rsqrt``) is not recomputed for
    every element of the row. Returns whether anything was inlined.
    """
    infos = normalize_prim_func(sch)
    if not infos:
        return False
    analyzer = sym.Analyzer()
    inlined = False
    for info in infos:
        block = info.block_rv
        if not info.is_injective():
            continue
        consumers = sch.get_consumers(block)
        if not consumers:
            continue
        size = _block_size(sch, block)
        if not all(analyzer.can_prove_equal(_block_size(sch, c), size) for c in consumers):
            continue
        try:
            sch.compute_inline(block)
            inlined = True
        except Exception:  # noqa: BLE001 - an output, or not a plain store: stays a block
            continue
    return inlined


def _schedule_generic(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """Fallback rule: elementwise chains inlined, parallel outer loops, vectorized inner loops,
    no tiling."""
    sch = s_tir.Schedule(func)
    changed = _inline_elementwise_chains(sch)
    infos = normalize_prim_func(sch)
    if not infos:
        return None
    lanes = vector_lanes(target, "float32")
    for info in infos:
        try:
            if info.is_injective():
                changed |= _schedule_injective_block(sch, info.block_rv, lanes)
            else:
                changed |= _schedule_reduction_block(sch, info)
        except Exception:  # noqa: BLE001 - leave this block serial
            continue
    return sch if changed else None


def _well_formed(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` passes TVM's well-formedness check."""
    try:
        return bool(s_tir.analysis.verify_well_formed(func, assert_mode=False))
    except Exception:  # noqa: BLE001 - treat as ill-formed
        return False


def _lowers(func: tirx.PrimFunc, target: tvm.target.Target) -> bool:
    """Whether ``func`` survives TVM's default TIR lowering for ``target`` (no codegen).

    Catches schedules that are valid but that lowering rejects, e.g. a vectorized loop whose
    ``if_then_else`` condition depends on the vector lane ("if_then_else can only take scalar
    condition", seen with FP8 casts).
    """
    try:
        current = tvm.transform.PassContext.current()
        mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        # A context without instruments: IR dumps must not see these trial passes.
        with tvm.transform.PassContext(opt_level=current.opt_level, config=dict(current.config)):
            mod = tirx.transform.BindTarget(target.with_host(target))(mod)
            pipeline, _, _ = tirx.get_default_tir_pipeline(target)
            pipeline(mod)
        return True
    except Exception as err:  # noqa: BLE001 - any failure means: do not use this schedule
        logger.debug("scheduled TIR failed to lower: %s", tvm_message(err))
        return False


def _dlight_rule(rule: dlight.ScheduleRule) -> _ScheduleFn:
    """Wrap a dlight rule as a ``(func, target) -> Schedule | None`` function."""

    def apply(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
        result = rule.apply(func, target, False)
        if isinstance(result, list):
            return result[0] if len(result) == 1 else None
        return result

    return apply


def _common_leading_spatial(infos: list[SBlockInfo]) -> int:
    """How many leading spatial axes every block has, with the same extents in every block."""
    kinds = [info.dom_kind() for info in infos]
    lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
    analyzer = sym.Analyzer()
    reference = infos[0].dom()
    for count in range(lead):
        a = reference[count]
        for info in infos[1:]:
            b = info.dom()[count]
            same = a == b if isinstance(a, int) and isinstance(b, int) else \
                analyzer.can_prove_equal(a, b)
            if not same:
                return count
    return lead


def _shared_leading_spatial(func: tirx.PrimFunc) -> bool:
    """Whether all blocks of ``func`` share their leading spatial axes (extent by extent).

    dlight's CPU ``Reduction`` rule computes every block at the leading spatial loop of the
    last block. When unit dims are normalized away, that loop can be the hidden axis (e.g.
    ``[1, 1, 512]`` RMSNorm: the reduction lands inside the 512-loop and is recomputed 512
    times, correct but quadratic). The rule is only used when this check holds.
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos:
        return False
    kinds = [info.dom_kind() for info in infos]
    lead = min(len(k) - len(k.lstrip("S")) for k in kinds)
    if lead == 0 or _common_leading_spatial(infos) < lead:
        return False
    # The reductions must reduce over the remaining axes, not over the shared ones.
    return all("R" not in k[:lead] for k in kinds)


def _schedule_rowwise(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """Row rule: blocks that share leading spatial axes (rows) but not their last ones.

    E.g. the activation quantizer: a per-block absmax (a reduction over ``[rows, blocks]``), the
    scales (``[rows, blocks]``) and the codes (``[rows, K]``). The generic rule gives each block
    its own parallel loop over its whole domain (three passes, three launches); here the shared
    row axes are one parallel loop (the first block's) into which every later block is moved,
    in order, with the innermost loop of spatial blocks vectorized: one pass, and a kernel whose
    body is one parallel loop (which the c target can split over its thread pool).
    """
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if not infos or len(infos) < 2:
        return None
    lead = _common_leading_spatial(infos)
    if lead == 0:
        return None
    if all(len(info.dom()) == lead for info in infos):
        return None  # the same domain everywhere: the generic rule's elementwise case
    if all(info.is_injective() for info in infos):
        # Only kernels with a row reduction (the quantizer's absmax): on purely elementwise
        # ones (a rotary embedding's slices, negation and concatenation, whose first block is
        # a transpose) the moved blocks produced NaN logits in an llvm build (test_genai).
        return None
    loops = sch.get_loops(infos[0].block_rv)
    rows = sch.fuse(*loops[:lead]) if lead > 1 else loops[0]
    ext = _extent(sch, rows)
    if isinstance(ext, int) and ext < _MIN_PARALLEL_EXTENT:
        return None
    # consumers follow the first block into its row loop (outputs may not be computed at)
    for info in infos[1:]:
        sch.reverse_compute_at(info.block_rv, rows, preserve_unit_loops=True)
    sch.parallel(rows)
    lanes = vector_lanes(target, "float32")
    for info in infos:
        if info.is_injective():
            _vectorize_innermost(sch, info.block_rv, lanes)
    return sch


def _dlight_reduction(func: tirx.PrimFunc, target: tvm.target.Target) -> s_tir.Schedule | None:
    """dlight's CPU ``Reduction`` rule (softmax, norms), guarded by the check above."""
    if not _shared_leading_spatial(func):
        return None
    return _dlight_rule(dlight.cpu.Reduction())(func, target)


def _default_rules() -> list[tuple[str, _ScheduleFn]]:
    """The rules tried in order on every PrimFunc."""
    return [
        ("lut_gemv", schedule_lut_gemv),
        ("matmul", _schedule_matmul),
        ("dlight.cpu.Reduction", _dlight_reduction),
        ("dlight.cpu.GEMV", _dlight_rule(dlight.cpu.GEMV())),
        ("rowwise", _schedule_rowwise),
        ("generic", _schedule_generic),
    ]


@tvm.transform.module_pass(opt_level=0, name="ScheduleLLVM")
class ScheduleLLVM:
    """Apply the default CPU schedule rules to every unscheduled PrimFunc of a module.

    Parameters
    ----------
    target : tvm.target.Target
        The ``llvm`` target to schedule for.
    rules : sequence of (name, rule), optional
        Rules tried in order; the first returning a schedule wins. Defaults to the matmul,
        dlight CPU and generic rules of this module.

    Notes
    -----
    A rule that raises is skipped; a PrimFunc no rule schedules stays as it is (correct,
    slow). The names of the rules used are recorded in ``self.report``.
    """

    def __init__(
        self,
        target: tvm.target.Target,
        rules: Sequence[tuple[str, _ScheduleFn]] | None = None,
    ) -> None:
        self.target = target
        self.rules = list(rules) if rules is not None else _default_rules()
        self.report: dict[str, str] = {}

    def transform_module(  # noqa: D102
        self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
    ) -> tvm.ir.IRModule:
        updates: dict[tvm.ir.GlobalVar, tirx.PrimFunc] = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                if int(func.attrs["tirx.is_scheduled"]):
                    continue
            scheduled, used = None, "none"
            with self.target:
                for name, rule in self.rules:
                    try:
                        scheduled = rule(func, self.target)
                    except Exception as err:  # noqa: BLE001 - try the next rule
                        logger.debug("rule %s failed on %s: %s", name, gvar.name_hint, err)
                        scheduled = None
                    if scheduled is None:
                        continue
                    candidate = scheduled.mod["main"]
                    if _well_formed(candidate) and _lowers(candidate, self.target):
                        used = name
                        break
                    logger.debug("rule %s: unusable TIR for %s", name, gvar.name_hint)
                    scheduled = None
            self.report[gvar.name_hint] = used
            logger.debug("ScheduleLLVM: %s <- %s", gvar.name_hint, used)
            if scheduled is not None:
                updates[gvar] = scheduled.mod["main"].with_attr("tirx.is_scheduled", True)
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
