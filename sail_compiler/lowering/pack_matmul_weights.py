"""PackMatmulWeights: constant matmul weights repacked at compile time into column panels.

Every ``matmul(x, W)`` whose ``W`` is a 2-D float32 constant ``[K, N]`` (``N`` a multiple of 16)
becomes a TE kernel reading ``W`` repacked at compile time (NumPy) into panels
``[N / 16, K, 16]``. One panel of 16 output columns is then a contiguous stream; walking the
``[K, N]`` layout panel by panel strides ``4 N`` bytes per ``k`` (a new page per access for
N = 4096) and was 2-3x slower on a 4096x4096 GEMV. The kernel splits the rows (all leading axes,
symbolic or not, fused into ``M``) into the first ``M - M % 4`` rows and the last ``M % 4`` rows,
two reductions gathered by a select, so each part can be tiled without a per-row predicate (TVM
0.27's ``loop_partition`` rejects symbolic extents, and a predicated tile kept the accumulators
in memory). The kernel is marked ``op_pattern = kOutEWiseFusable`` so that ``FuseOps`` still
fuses its epilogues.

Runs after ``FoldConstant`` (so that ``Gemm(transB=1)`` weights are plain ``[K, N]``
constants) and before legalization; :class:`~.schedule_llvm.ScheduleLLVM`'s matmul rule tiles
the kernels it writes.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx

__all__ = ["PANEL", "TILE_M", "PackMatmulWeights"]

#: Columns per weight panel and per register tile (two AVX2 fp32 vectors).
PANEL = 16
#: Rows per register tile of the GEMM part.
TILE_M = 4

#: ``relay::OpPatternKind::kOutEWiseFusable``: lets FuseOps fuse elementwise consumers.
_OUT_EWISE_FUSABLE = 4


def _packed_matmul_te(x: te.Tensor, packed: te.Tensor, tile_m: int = TILE_M) -> te.Tensor:
    """TE kernel ``y[..., n] = sum_k x[..., k] * packed[n // P, k, n % P]``.

    The rows of ``x`` (all leading axes, fused into ``M``) are split into two reductions: the
    first ``M - M % tile_m`` rows, whose extent is provably a multiple of ``tile_m``, and the
    remaining ``M % tile_m`` rows. The matmul rule gives the first a ``tile_m``-row register
    tile and the second a one-row tile, so no tile carries a per-row predicate and ``M = 1``
    (decoding) does no padded work. A final select gathers both into ``y``.

    Parameters
    ----------
    x : te.Tensor
        Activations ``[..., K]``.
    packed : te.Tensor
        Weights ``[N / P, K, P]`` with ``P = packed.shape[2]``.
    tile_m : int
        Row tile of the first part.

    Returns
    -------
    te.Tensor
        ``[..., N]``, same dtype as ``x``.
    """
    panels, depth, width = packed.shape
    lead = list(x.shape[:-1])  # Relax shapes are int64
    cols = tirx.const(int(panels) * int(width), "int64")
    rows = lead[0]
    for dim in lead[1:]:
        rows = rows * dim
    main_rows = tirx.floordiv(rows, tile_m) * tile_m

    def row_index(row: tirx.PrimExpr) -> list[tirx.PrimExpr]:
        index = []
        for pos, dim in enumerate(lead):
            stride = tirx.const(1, "int64")
            for inner in lead[pos + 1 :]:
                stride = stride * inner
            index.append(tirx.floormod(tirx.floordiv(row, stride), dim) if pos else row // stride)
        return index

    def product(row: tirx.PrimExpr, n: tirx.PrimExpr, k: tirx.IterVar) -> tirx.PrimExpr:
        return x[(*row_index(row), k)] * packed[n // width, k, n % width]

    if isinstance(rows, tirx.IntImm) and (int(rows) % tile_m == 0 or int(rows) < tile_m):
        # Static row count that needs a single part: one reduction straight into the output.
        k_all = te.reduce_axis((tirx.const(0, "int64"), depth), name="k")

        def whole(*idx: tirx.Var) -> tirx.PrimExpr:
            n = idx[-1]
            value = x[(*idx[:-1], k_all)] * packed[n // width, k_all, n % width]
            return te.sum(value, axis=k_all)

        return te.compute((*lead, cols), whole, name="matmul")

    k_main = te.reduce_axis((tirx.const(0, "int64"), depth), name="k")
    main = te.compute(
        (main_rows, cols),
        lambda m, n: te.sum(product(m, n, k_main), axis=k_main),
        name="matmul_main",
    )
    k_rest = te.reduce_axis((tirx.const(0, "int64"), depth), name="k")
    rest = te.compute(
        (rows - main_rows, cols),
        lambda r, n: te.sum(product(main_rows + r, n, k_rest), axis=k_rest),
        name="matmul_rest",
    )

    def gather(*idx: tirx.Var) -> tirx.PrimExpr:
        row = idx[0]
        for pos in range(1, len(lead)):
            row = row * lead[pos] + idx[pos]
        n = idx[-1]
        return tirx.if_then_else(row < main_rows, main[row, n], rest[row - main_rows, n])

    return te.compute((*lead, cols), gather, name="matmul")


@relax.expr_functor.mutator
class _WeightPacker(relax.PyExprMutator):
    """Rewrite ``matmul(x, W_const[K, N])`` into a packed-weight TE kernel."""

    def __init__(self, mod: tvm.ir.IRModule, panel: int) -> None:
        super().__init__(mod)
        self.panel = panel
        self._matmul = tvm.ir.Op.get("relax.matmul")

    def visit_call_(self, call: relax.Call) -> relax.Expr:  # noqa: D102
        call = self.visit_expr_post_order(call)
        if not isinstance(call, relax.Call) or call.op != self._matmul or len(call.args) != 2:
            return call
        x, w = call.args
        if not isinstance(w, tvm.ir.GenericConst):
            return call
        x_ty, w_ty, out_ty = x.ty, w.ty, call.ty
        if not all(isinstance(t, relax.TensorType) for t in (x_ty, w_ty, out_ty)):
            return call
        if w_ty.dtype != "float32" or x_ty.dtype != "float32" or out_ty.dtype != "float32":
            return call
        if w_ty.ndim != 2 or x_ty.ndim < 2 or x_ty.shape is None:
            return call
        weights = w.value.numpy()
        depth, cols = weights.shape
        if cols % self.panel != 0 or cols < self.panel:
            return call
        x_depth = x_ty.shape[-1]
        if not isinstance(x_depth, tirx.IntImm) or int(x_depth) != depth:
            return call
        packed = np.ascontiguousarray(
            weights.reshape(depth, cols // self.panel, self.panel).transpose(1, 0, 2)
        )
        return self.builder_.call_te(
            _packed_matmul_te,
            x,
            relax.const(packed),
            primfunc_name_hint="matmul_packed",
            primfunc_attrs={"op_pattern": _OUT_EWISE_FUSABLE},
        )


@tvm.transform.module_pass(opt_level=0, name="PackMatmulWeights")
class PackMatmulWeights:
    """Repack constant ``[K, N]`` matmul weights into contiguous ``[N/16, K, 16]`` panels.

    Parameters
    ----------
    panel : int
        Panel width (output columns per panel); must match the matmul rule's tile width.
    """

    def __init__(self, panel: int = PANEL) -> None:
        self.panel = panel

    def transform_module(  # noqa: D102
        self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
    ) -> tvm.ir.IRModule:
        packer = _WeightPacker(mod, self.panel)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                packer.builder_.update_func(gvar, packer.visit_expr(func))
        return packer.builder_.get()
