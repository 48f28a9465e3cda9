"""``FoldWeightTransposes``: fold the transpose of a named initializer into a named constant.

The frontend names every initializer's constant after it (``sail.init:<name>``, see
:func:`~sail_compiler.quant.plan.weight_ref`). ``Gemm(transB=1)`` imports as
``R.matmul(x, R.permute_dims(B))``; ``FoldConstant`` would fold the transpose into a new constant
that carries no name, so the ``quantize`` stage could not tell which layer it belongs to. This
pass folds it first: ``R.permute_dims(B)`` of a 2-D constant named ``sail.init:<name>`` (axes
None or ``[1, 0]``) becomes the constant ``B^T`` (C-contiguous, the same values ``FoldConstant``
computes) named ``sail.init.T:<name>``. ``FoldConstant`` then substitutes it into the matmul
like any folded constant, keeping the node and its name.

Leaves alone: transposes of unnamed constants (a constant the graph computed), of constants of
other ranks, and every other call. Runs in the ``quantize`` stage before ``FoldConstant``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops.quant_matmul import name_weight_ref, weight_ref_of
from ..quant.plan import INITIALIZER_PREFIX, weight_ref
from ._common import constant_array, rewrite_relax_functions

_PERMUTE = tvm.ir.Op.get("relax.permute_dims")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not call.op.same_as(_PERMUTE) or len(call.args) != 1:
            return call
        (const,) = call.args
        if not isinstance(const, tvm.ir.GenericConst) or const.ty.ndim != 2:
            return call
        axes = call.attrs.axes
        if axes is not None and [int(a) for a in axes] != [1, 0]:
            return call
        ref = weight_ref_of(const)
        if ref is None or not ref.startswith(INITIALIZER_PREFIX):
            return call
        values = np.ascontiguousarray(constant_array(const).T)
        folded = relax.const(tvm.runtime.tensor(values))
        return name_weight_ref(folded, weight_ref(ref[len(INITIALIZER_PREFIX):],
                                                  transposed=True))


@tvm.transform.module_pass(opt_level=0, name="FoldWeightTransposes")
class FoldWeightTransposes:
    """Fold ``R.permute_dims`` of a named 2-D initializer into a named constant (module
    docstring)."""

    def transform_module(self, mod: tvm.IRModule,
                         _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_relax_functions(_Rewriter(mod), mod)
